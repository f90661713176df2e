"""Job records: what was asked, where it went, every attempt and how each one ended.

A job is one accepted notification (or acknowledge/resolve). It fans out to one delivery
per channel; each channel has a state:

    queued -> (deferred | retrying)* -> delivered | dead

Records live in Redis for ``JOB_TTL_SECONDS`` and answer ``gds-notify status JOB_ID``.
The ``delivered`` state is also what stops a job that Redis redelivers (after a worker
died) from being sent a second time.

Every delivery not yet final is also in ``keys.OPEN_DELIVERIES``, scored by the moment the
recovery sweep next looks at it: when it counts as stalled if nothing happens to it; for a
page, :data:`PICKUP_SECONDS` after its message fell due at a worker (it was queued, or its
retry's countdown ran out); and for a page in a worker's claim, just after the claim
lapses. Each claim and state change pushes that moment on. A page's message that a
worker received with a countdown is marked as held by that worker until its attempt's
claim, so the sweep can tell one a dead worker held. The record
keeps each delivery's payload and when its message is due (``due:<channel>``; the
creation time until a retry sets it), so worker/engine/recovery.py can queue its message
again when the broker lost it.

A delivery is worked on under a claim (:meth:`JobStore.claim`), so two copies of its
message never deliver at the same moment; everything the step then writes goes through
:meth:`JobStore.record`, one script and one round trip.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import redis

from config.settings import Settings
from worker.addresses import parse_recipients
from worker.channels import Channel
from worker.engine import keys, scripts, stats
from worker.engine.lock import Lock, Locks
from worker.engine.messages import delivery_id, delivery_message
from worker.engine.rate_limit import SharedRateLimiter, Slot
from worker.engine.redis_client import NotReplicatedError, replicated
from worker.exceptions import InvalidFieldError

logger = logging.getLogger(__name__)

QUEUED = "queued"
DEFERRED = "deferred"
RETRYING = "retrying"
DELIVERED = "delivered"
DEAD = "dead"
FINAL_STATES = (DELIVERED, DEAD)
#: Most jobs ``gds-notify jobs`` can list (their records expire after JOB_TTL_SECONDS).
RECENT_KEPT = 10_000
#: How long after its message falls due (it was queued, or its retry's countdown ran out)
#: a delivery that no worker has taken is looked for in the broker
#: (worker/engine/recovery.py), by channel: a page whose message the broker lost goes out
#: again then, not a whole stall period later. A page waits for a worker for milliseconds;
#: email backlogs are long and normal, and reading them costs more than a late email does,
#: so email is looked at after the stall period, as everything else.
PICKUP_SECONDS = {Channel.PAGERDUTY: 10.0}
#: Channels whose deliveries the recovery sweep looks at as soon as a claim on one lapses
#: (a worker that died in an attempt leaves its mark) rather than a stall period after the
#: claim. A page sent twice is harmless, since PagerDuty files the second under the same
#: dedup key; an email attempt can outlast its claim on a live worker (aiosmtplib's
#: timeout is per reply), and a copy then would send it twice, so email keeps the stall
#: period.
LOOK_AT_CLAIM_LAPSE = frozenset({Channel.PAGERDUTY})
#: How long after a claim's end the sweep looks at the delivery: a second for the clocks of
#: the worker (which reckons the end) and of Redis (which lets the claim lapse) to differ.
AFTER_CLAIM_SECONDS = 1.0


class JobIdTakenError(ValueError):
    """A job id already names a different job: a producer sent two notifications under
    one message id, and the second would otherwise vanish as a redelivery of the first."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id


@dataclass
class Claim:
    """Where a delivery stands as a worker picks it up, and the lock if this worker got it.

    ``lock`` is None when the delivery is final (nothing to do), another worker holds it
    (:attr:`busy`), or the event queued before it for the same incident is still on its
    way (``waiting_for`` is that event's state, ``waiting_until`` when it is next due).
    ``slot`` is the rate-limit slot asked for with the claim (a :class:`Slot`, or the
    seconds to wait), when one was.
    """

    job_id: str
    channel: str
    state: str | None
    attempts: int
    lock: Lock | None
    waiting_for: str | None = None
    slot: Slot | float | None = None
    waiting_until: float | None = None

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def busy(self) -> bool:
        return self.lock is None and not self.final and self.waiting_for is None


def forget_open(client: redis.Redis, job_id: str, channel: str) -> None:
    """Drop a delivery whose record is final or gone from the open indexes (one that ended
    without its record saying so: the record expired, or Redis lost part of it)."""
    pipe = client.pipeline(transaction=False)
    pipe.zrem(keys.OPEN_DELIVERIES, f"{job_id}:{channel}")
    pipe.zrem(keys.open_since(channel), job_id)
    pipe.execute()


#: The deliveries whose lateness is measured: notifications (a page's trigger, an email),
#: not an acknowledge or resolve (which wait for their trigger) or the watchdog's canary.
LATE_ACTIONS = ("trigger", "send")
#: How many of a channel's oldest open entries one read checks against their records, and
#: how many reads one look makes at most before it settles for what it found.
OLDEST_BATCH = 50
OLDEST_READS = 10


def open_jobs(client: redis.Redis, channel: str, wanted: int) -> list[tuple[str, float]]:
    """Up to ``wanted`` of the notifications whose delivery on ``channel`` is not yet final,
    oldest first: (job id, when it was accepted, on Redis's clock). Entries whose record
    has ended or expired (a removal missed, say by a worker of an earlier version) are
    dropped as they are met, so none can stand for a late one."""
    index = keys.open_since(channel)
    found: list[tuple[str, float]] = []
    for _ in range(OLDEST_READS + wanted // OLDEST_BATCH):
        batch = cast(
            "list[tuple[str, float]]",
            client.zrange(index, len(found), len(found) + OLDEST_BATCH - 1, withscores=True),
        )
        if not batch:
            break
        pipe = client.pipeline(transaction=False)
        for job_id, _ in batch:
            pipe.hget(keys.job(job_id), f"state:{channel}")
        ended = []
        for entry, state in zip(batch, pipe.execute(), strict=True):
            if state is None or state in FINAL_STATES:
                ended.append(entry[0])
            else:
                found.append(entry)
        if ended:
            # Tidying only: a Redis refusing writes is still read.
            with contextlib.suppress(redis.ResponseError):
                client.zrem(index, *ended)
        if len(found) >= wanted:
            break
    return found[:wanted]


def oldest_undelivered(client: redis.Redis, now: float) -> dict[str, float]:
    """Per channel, how long ago the oldest notification whose delivery is not yet final
    (queued, deferred, retrying, in an attempt, or lost) was accepted; 0 when none."""
    ages: dict[str, float] = {}
    for channel in Channel:
        oldest = open_jobs(client, channel, 1)
        ages[channel.value] = max(0.0, now - oldest[0][1]) if oldest else 0.0
    return ages


@dataclass(frozen=True)
class Progress:
    """Where an open delivery stands, as the recovery sweep reads it: its state (None when
    the record has expired), when its message fell (or falls) due at a worker (it was
    queued, or its retry's countdown ran out), the seconds left on the claim a worker holds
    now (0 when none does), when the last attempt began whose outcome was never
    recorded (None when every attempt's was), and the worker that received its message
    with a countdown and has not begun it (``(hostname, boot)``, None when none did)."""

    state: str | None
    due: float
    claim_left: float
    taken_at: float | None = None
    held_by: tuple[str, str] | None = None

    @property
    def claimed(self) -> bool:
        return self.claim_left > 0

    @property
    def awaiting(self) -> bool:
        """Open, and in no worker's claim: its message is on its queue or in a worker's
        hands, waiting its turn or its countdown (or the broker lost it), or its last
        attempt was abandoned (:attr:`abandoned`)."""
        return self.state is not None and self.state not in FINAL_STATES and not self.claimed

    @property
    def abandoned(self) -> bool:
        """Open, an attempt was begun and its claim lapsed with no outcome recorded: the
        worker died in the middle of it (or lost Redis before it could say how it went)."""
        return self.awaiting and self.taken_at is not None


class JobStore:
    """Reads and writes job records; the engine holds one per process."""

    def __init__(self, client: redis.Redis, settings: Settings, locks: Locks) -> None:
        self.redis = client
        self.ttl = settings.job_ttl_seconds
        self.idempotency_ttl = settings.idempotency_ttl_seconds
        self.stall = settings.job_stall_seconds
        self.min_replicas = settings.redis_min_replicas
        self.wait_timeout = settings.redis_wait_timeout
        self.locks = locks
        self._create = scripts.register(client, __file__, "jobs_create")
        self._claim = scripts.register(client, __file__, "jobs_claim")
        self._record = scripts.register(client, __file__, "jobs_record")
        self._reschedule = scripts.register(client, __file__, "jobs_reschedule")
        self._hold = scripts.register(client, __file__, "jobs_hold")

    def create(
        self,
        job_id: str,
        *,
        channels: list[Channel],
        action: str,
        source: str,
        payloads: dict[Channel, dict[str, Any]],
        team: str | None = None,
        notification: dict[str, Any] | None = None,
        dedup_key: str | None = None,
        replay_of: str | None = None,
        idempotency: tuple[str, Literal["claim", "reassign"]] | None = None,
        incident: str | None = None,
        listed: bool = True,
        ttl: int | None = None,
    ) -> str | None:
        """Accept a job in one atomic step: claim its idempotency id (``(id, "claim")``;
        ``"reassign"`` points an id at this job, for a replay), write its record, index
        each delivery in ``payloads`` as open and push its message onto its queue. A job
        whose record exists already (a redelivered ``notify``) is left as it is.
        ``incident`` is the dedup key of the PagerDuty incident this job sends an event
        for: it goes out after the event queued before it for that incident. ``listed=False``
        keeps the job out of the recent jobs and the notification counts (the watchdog's
        canaries); ``ttl`` shortens how long its record is kept.

        Returns None when the job is accepted (or was, by a copy of its message), or the id
        of the job that claimed the idempotency id first (nothing of this one is written
        then). Raises :class:`JobIdTakenError` when ``job_id`` is another job's."""
        now = time.time()
        fields: dict[str, str] = {
            "id": job_id,
            "created_at": repr(now),
            "updated_at": repr(now),
            "action": action,
            "source": source,
            "channels": json.dumps([c.value for c in channels]),
            "duplicates": "0",
        }
        if team:
            fields["team"] = team
        if notification is not None:
            fields["notification"] = json.dumps(notification)
        if dedup_key:
            fields["dedup_key"] = dedup_key
        if replay_of:
            fields["replay_of"] = replay_of
        for channel in channels:
            fields[f"state:{channel}"] = QUEUED
            fields[f"attempts:{channel}"] = "0"
        for channel, payload in payloads.items():
            fields[f"payload:{channel}"] = json.dumps(payload)
        members, deadlines, queues, messages, since = [], [], [], [], []
        for channel, payload in payloads.items():
            queue, message = delivery_message(channel, delivery_id(job_id, channel), payload)
            if payload.get("action") in LATE_ACTIONS:
                since.append(keys.open_since(channel))
            members.append(f"{job_id}:{channel}")
            deadlines.append(repr(self.first_look(channel, now)))
            queues.append(queue)
            messages.append(message)
        idempotency_id, mode = idempotency or ("", "")
        pipe = self.redis.pipeline(transaction=False)
        self._create(
            client=pipe,
            keys=[
                keys.job(job_id),
                keys.OPEN_DELIVERIES,
                keys.idempotency(idempotency_id),
                keys.incident_order(team, incident or ""),
                keys.job_duplicate(job_id),
                keys.RECENT_JOBS,
                keys.STATS,
                *queues,
                *since,
            ],
            args=[
                job_id,
                ttl or self.ttl,
                mode,
                self.idempotency_ttl,
                self.ttl if incident else "",
                repr(now),
                RECENT_KEPT if listed else 0,
                stats.count("notifications", source, "accepted")[0] if listed else "",
                stats.count("notifications", source, "duplicate")[0] if listed else "",
                len(members),
                *members,
                *deadlines,
                *messages,
                *[item for pair in fields.items() for item in pair],
            ],
        )
        try:
            [answer] = self._durably(pipe, listed)
        except NotReplicatedError as exc:
            # What the producer can look up, as it was not told: this job, or for a copy of
            # an idempotency id (nothing written) the first job it names.
            copy_of = exc.answers[0] if exc.answers else None
            exc.job_id = str(copy_of[1]) if copy_of and int(copy_of[0]) == 2 else job_id
            raise
        if int(answer[0]) == 0:
            self._check_same(job_id, fields)
        return str(answer[1]) if int(answer[0]) == 2 else None

    def _check_same(self, job_id: str, fields: dict[str, str]) -> None:
        """A record under ``job_id`` existed: fine for a redelivered message (the same
        job), else :class:`JobIdTakenError`."""
        names = ("notification", "team")  # what the producer sent (channels follow rules)
        kept = self.redis.hmget(keys.job(job_id), names)
        if any(old != fields.get(n) for n, old in zip(names, kept, strict=True)):
            raise JobIdTakenError(job_id)

    def after_claim(self, channel: Channel | str) -> float:
        """How long after a claim would lapse the sweep looks at its delivery."""
        return AFTER_CLAIM_SECONDS if Channel(channel) in LOOK_AT_CLAIM_LAPSE else self.stall

    def first_look(self, channel: Channel | str, due: float, *, abandoned: bool = False) -> float:
        """When the recovery sweep first looks at a delivery whose message falls due at a
        worker at ``due``: after :data:`PICKUP_SECONDS` for a page, else a stall period.
        For one whose last attempt a worker died in (``abandoned``), after the pickup time
        only (none for email): only the sweep brings that attempt's message back."""
        pickup = PICKUP_SECONDS.get(Channel(channel))
        if abandoned:
            return due + (pickup or 0.0)
        return due + min(self.stall, pickup if pickup is not None else self.stall)

    def _durably(self, pipe: Any, wait: bool = True) -> list[Any]:
        """Run ``pipe``; with ``REDIS_MIN_REPLICAS``, on the same connection, WAIT for that
        many replicas to hold its writes (:class:`NotReplicatedError` when they do not in
        time). One round trip either way."""
        if not wait or self.min_replicas == 0:
            return list(pipe.execute())
        pipe.execute_command("WAIT", self.min_replicas, int(self.wait_timeout * 1000))
        return replicated(pipe.execute(), self.min_replicas, self.wait_timeout)

    def republish(self, job_id: str, channel: Channel, payload: dict[str, Any]) -> None:
        """Push a delivery's message onto its queue again (the broker lost it)."""
        queue, message = delivery_message(channel, delivery_id(job_id, channel), payload)
        self.redis.lpush(queue, message)

    @contextlib.contextmanager
    def claim(
        self,
        job_id: str,
        channel: str,
        ttl: float,
        rate: tuple[SharedRateLimiter, str] | None = None,
    ) -> Iterator[Claim]:
        """Start a delivery: its state and attempts so far, and the right to deliver it for
        ``ttl`` seconds unless it is final or another worker has it. Released on the way out
        (or earlier, by the :meth:`record` that passes it). ``rate`` (a limiter and the key
        it counts) asks for a slot in the same round trip; a slot the delivery did not get
        to use (it was not claimed) is given back. One round trip to take.

        A claimed delivery is marked as taken until the record of its attempt; the recovery
        sweep next looks at it a stall period after the claim would lapse, or for a page
        just after (:data:`LOOK_AT_CLAIM_LAPSE`), and publishes it again if the mark is
        still there then (the worker died in the attempt)."""
        key = keys.delivery_claim(job_id, channel)
        token = Locks.new_token()
        pipe = self.redis.pipeline(transaction=False)
        request = rate[0].ask(rate[1], pipe) if rate else None
        now = time.time()
        look = ttl + self.after_claim(channel)
        self._claim(
            client=pipe,
            keys=[keys.job(job_id), key, keys.OPEN_DELIVERIES],
            args=[
                channel,
                token,
                max(1, int(ttl * 1000)),
                repr(now + look),
                f"{job_id}:{channel}",
                keys.job("") if channel == Channel.PAGERDUTY else "",
                repr(now),
            ],
        )
        *asked, (state, attempts, taken, before, *due) = pipe.execute()
        slot = rate[0].answer(request, asked[0]) if rate and request else None
        lock = self.locks.adopt(key, token) if int(taken) else None
        if lock is None and isinstance(slot, Slot):
            slot.give_back()
        try:
            yield Claim(
                job_id,
                channel,
                str(state) or None,
                int(attempts),
                lock,
                str(before) or None,
                slot if lock is not None else None,
                float(due[0]) if due and due[0] else None,
            )
        finally:
            if lock is not None:
                lock.release()

    def hold(self, job_id: str, channel: str, hostname: str, boot: str) -> bool:
        """Mark an open delivery as held by the worker ``hostname`` (its process started as
        ``boot``), which received its message with a countdown: until the claim of the
        attempt it then begins, the recovery sweep knows whose hands the message is in,
        and publishes it again if that worker dies with it. Only a page is marked, as only
        a page's message is looked for before the stall period (:data:`PICKUP_SECONDS`).
        True when marked (not on a final or expired record)."""
        if Channel(channel) not in PICKUP_SECONDS:
            return False
        marked = self._hold(keys=[keys.job(job_id)], args=[channel, f"{boot} {hostname}"])
        return bool(int(marked))

    def claim_remaining(self, job_id: str, channel: str) -> float:
        """Seconds left on another worker's claim (0 when there is none)."""
        return self.locks.remaining(keys.delivery_claim(job_id, channel))

    def record(
        self,
        job_id: str,
        channel: str,
        outcome: str,
        *,
        state: str | None = None,
        counted: bool = False,
        quiet_for: float = 0.0,
        claim: Lock | None = None,
        latency_ms: float | None = None,
        error: dict[str, Any] | None = None,
        retry_in: float | None = None,
        result: dict[str, Any] | None = None,
        counters: Sequence[stats.Increment] = (),
        arrived: Slot | None = None,
        due_in: float | None = None,
    ) -> int:
        """Append an entry to the attempt history and, with ``state``, move the channel to
        it: a final state closes the delivery; any other makes its message due again after
        ``quiet_for`` (how long it will rightly wait, a retry's countdown) and moves the
        sweep's look to :meth:`first_look` from then. ``due_in`` does the same without a
        state, for a delivery not claimed (it waits its turn: the state is not this
        worker's to write). ``counted`` numbers it as an attempt;
        ``claim`` is released with it; ``counters`` are bumped with it
        (worker/engine/stats.py); ``arrived``, the rate-limit slot the attempt used, is
        re-stamped with it. One round trip. Returns the attempt's number (0 when not
        counted)."""
        now = time.time()
        entry: dict[str, Any] = {"at": now, "channel": channel, "outcome": outcome}
        if latency_ms is not None:
            entry["latency_ms"] = round(latency_ms, 1)
        if error is not None:
            entry["error_class"] = error.get("type")
            entry["error"] = error.get("message")
        if retry_in is not None:
            entry["retry_in"] = round(retry_in, 3)
        fields: list[str] = []
        deadline = "-"
        if state is not None:
            fields += [f"state:{channel}", state, "updated_at", repr(now)]
            if error is not None:
                fields += [f"error:{channel}", json.dumps(error)]
            if result is not None:
                fields += [f"result:{channel}", json.dumps(result)]
            if state in FINAL_STATES:
                deadline = ""
            else:
                due = now + quiet_for
                fields += [f"due:{channel}", repr(due)]
                deadline = repr(self.first_look(channel, due))
        elif due_in is not None:
            # Moves the look only if the delivery is still open (ZADD XX): one a worker
            # finished meanwhile stays closed.
            due = now + due_in
            fields += [f"due:{channel}", repr(due)]
            deadline = repr(self.first_look(channel, due))
        pipe = self.redis.pipeline(transaction=False)
        if arrived is not None:
            arrived.arrived(pipe)
        self._record(
            client=pipe,
            keys=[
                keys.job(job_id),
                keys.job_attempts(job_id),
                keys.OPEN_DELIVERIES,
                keys.delivery_claim(job_id, channel),
                keys.STATS,
                keys.open_since(channel),
            ],
            args=[
                channel,
                self.ttl,
                "1" if counted else "0",
                json.dumps(entry)[1:],
                f"{job_id}:{channel}",
                deadline,
                claim.token if claim is not None and not claim.released else "",
                *stats.flat(counters),
                *fields,
            ],
        )
        final = state in FINAL_STATES
        try:
            *_, attempt = self._durably(pipe, wait=final)
        except NotReplicatedError as exc:
            # Delivered (or dead) already: nothing to undo. Said, because a failover in
            # this window could deliver it again.
            logger.warning("job %s %s %s: %s", job_id, channel, state, exc)
            attempt = exc.answers[-1]
        if claim is not None:
            claim.released = True
        return int(attempt)

    def reschedule(self, job_id: str, channel: str, seen: float, to: float) -> bool:
        """Move the recovery sweep's next look at a delivery from ``seen`` (the moment the
        sweep read) to ``to``, unless a worker moved it meanwhile; True when moved."""
        moved = self._reschedule(
            keys=[keys.OPEN_DELIVERIES], args=[f"{job_id}:{channel}", repr(seen), repr(to)]
        )
        return bool(int(moved))

    def state_and_payload(
        self, job_id: str, channel: str
    ) -> tuple[str | None, dict[str, Any] | None]:
        """The channel's state and the delivery message it was published with."""
        state, raw = self.redis.hmget(keys.job(job_id), [f"state:{channel}", f"payload:{channel}"])
        payload = json.loads(raw) if raw is not None else None
        return (str(state) if state is not None else None), payload

    def progress(self, deliveries: Sequence[tuple[str, str]]) -> list[Progress]:
        """Where each ``(job id, channel)`` delivery stands, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id, channel in deliveries:
            pipe.hmget(
                keys.job(job_id),
                [
                    f"state:{channel}",
                    "created_at",
                    f"due:{channel}",
                    f"taken:{channel}",
                    f"held:{channel}",
                ],
            )
            pipe.pttl(keys.delivery_claim(job_id, channel))
        answers = iter(pipe.execute())
        found = []
        for (state, created_at, due, taken, held), claim_ms in zip(answers, answers, strict=True):
            boot, _, hostname = str(held).partition(" ")
            found.append(
                Progress(
                    str(state) if state is not None else None,
                    float(due or created_at or 0),
                    max(0, int(claim_ms)) / 1000,  # -2: no claim
                    float(str(taken).rpartition(" ")[2]) if taken is not None else None,
                    (hostname, boot) if held is not None else None,
                )
            )
        return found

    def add_duplicate(self, job_id: str) -> None:
        """Count, on its record, a copy of ``job_id`` that was dropped (same idempotency
        id). (The pool's count of duplicates is kept by :meth:`create`.)"""
        self.redis.hincrby(keys.job(job_id), "duplicates", 1)

    def note_replayed(self, job_id: str, channel: str, replayed_as: str) -> None:
        """Note, on the record of a job dead on ``channel``, the job its dead letter was
        replayed as (``status`` shows it). Nothing when the record has expired."""
        with self.redis.pipeline() as pipe:
            try:
                pipe.watch(keys.job(job_id))  # type: ignore[no-untyped-call]
                if pipe.exists(keys.job(job_id)):
                    pipe.multi()  # type: ignore[no-untyped-call,unused-ignore]
                    pipe.hset(keys.job(job_id), f"replayed_as:{channel}", json.dumps(replayed_as))
                    pipe.execute()
            except redis.WatchError:
                pass  # it changed meanwhile (expired, or a late record): the note can go

    def lookup(self, job_id: str) -> dict[str, Any] | None:
        """The job ``job_id``; for a copy dropped at intake (same idempotency id), the job
        it was a copy of, with ``"duplicate": job_id``. None when unknown or expired."""
        record = self.get(job_id)
        if record is not None:
            return record
        first = self.redis.get(keys.job_duplicate(job_id))
        record = self.get(str(first)) if first is not None else None
        return None if record is None else record | {"duplicate": job_id}

    def recent(self, limit: int, status: str | None = None) -> list[dict[str, Any]]:
        """The newest jobs first (only those whose overall ``status`` is that, when given),
        each record without its attempts."""
        scanned = limit if status is None else RECENT_KEPT
        ids = [str(i) for i in self.redis.zrevrange(keys.RECENT_JOBS, 0, max(0, scanned - 1))]
        pipe = self.redis.pipeline()
        for job_id in ids:
            pipe.hgetall(keys.job(job_id))
        found = [_record(raw, []) for raw in pipe.execute() if raw]
        if len(found) < len(ids):  # records that expired: their index entries go too
            alive = {r["id"] for r in found}
            self.redis.zrem(keys.RECENT_JOBS, *[i for i in ids if i not in alive])
        return [r for r in found if status in (None, r["status"])][:limit]

    def late(self, channel: str, limit: int) -> list[dict[str, Any]]:
        """The notifications whose delivery on ``channel`` is not yet final, oldest first
        (what ``gds_notify_oldest_undelivered_seconds`` measures), without their attempts."""
        ids = [job_id for job_id, _ in open_jobs(self.redis, channel, limit)]
        pipe = self.redis.pipeline()
        for job_id in ids:
            pipe.hgetall(keys.job(job_id))
        return [_record(raw, []) for raw in pipe.execute() if raw]

    def channels(self, job_id: str) -> tuple[Channel, ...]:
        """The channels the job was queued for; none when it is unknown or expired."""
        raw = self.redis.hget(keys.job(job_id), "channels")
        return tuple(Channel(c) for c in json.loads(raw)) if raw else ()

    def get(self, job_id: str) -> dict[str, Any] | None:
        """The job's record and attempt history, or None when unknown or expired."""
        if ":" in job_id:  # no job's id: its key would be another job's attempts, or such
            return None
        pipe = self.redis.pipeline()
        pipe.hgetall(keys.job(job_id))
        pipe.lrange(keys.job_attempts(job_id), 0, -1)
        raw, attempts = pipe.execute()
        if not raw:
            return None
        return _record(raw, attempts)


def _record(raw: dict[str, str], attempts: list[str]) -> dict[str, Any]:
    """A job as ``gds-notify status --json`` shows it."""
    channels = json.loads(raw["channels"])
    record: dict[str, Any] = {
        "id": raw["id"],
        "action": raw.get("action"),
        "source": raw.get("source"),
        "team": raw.get("team"),
        "created_at": float(raw["created_at"]),
        "updated_at": float(raw["updated_at"]),
        "duplicates": int(raw.get("duplicates", 0)),
        "replay_of": raw.get("replay_of"),
        "dedup_key": raw.get("dedup_key"),
        "notification": json.loads(raw["notification"]) if "notification" in raw else None,
        "channels": {ch: _channel(raw, ch) for ch in channels},
        "attempts": [json.loads(a) for a in attempts],
    }
    record["status"] = overall_status(record)
    return record


def _channel(raw: dict[str, str], channel: str) -> dict[str, Any]:
    def field(name: str) -> Any:
        value = raw.get(f"{name}:{channel}")
        return json.loads(value) if value is not None else None

    state = raw.get(f"state:{channel}")
    out: dict[str, Any] = {
        "state": state,
        "attempts": int(raw.get(f"attempts:{channel}", 0)),
        "result": field("result"),
        "error": field("error"),
    }
    if raw.get(f"replayed_as:{channel}") is not None:
        out["replayed_as"] = field("replayed_as")
    payload = field("payload")
    if channel == "email" and isinstance(payload, dict):
        out["recipients"] = _recipients(payload, state, out["result"])
    return out


def _recipients(
    payload: dict[str, Any], state: str | None, result: dict[str, Any] | None
) -> dict[str, str | None]:
    """Each address an email went (or goes) to, and where it stands: the channel's state,
    except for addresses the server refused while it accepted the others."""
    notification = payload.get("notification") or {}
    written = payload.get("email_to") or notification.get("recipient") or ""
    try:
        addresses = [a.addr_spec for a in parse_recipients("recipient", written)]
    except InvalidFieldError:
        addresses = [written]
    result = result or {}
    refused = result.get("refused") or {}
    # What became of a refusal (refused_recipients.py), by its reply's class: 4xx, 5xx.
    then = {}
    if "resent_as" in result:
        then["4"] = f" (sent again as job {result['resent_as']})"
    if "refused_dead_letter" in result:
        then["5"] = f" (dead letter {result['refused_dead_letter']})"
    return {
        a: f"refused: {refused[a]}{then.get(refused[a][:1], '')}" if a in refused else state
        for a in addresses
    }


def overall_status(record: dict[str, Any]) -> str:
    states = [c["state"] for c in record["channels"].values()]
    if all(s == DELIVERED for s in states):
        return DELIVERED
    if any(s == DEAD for s in states):
        return "dead-lettered" if all(s in FINAL_STATES for s in states) else "partly dead"
    return "pending"
