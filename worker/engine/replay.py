"""Replaying dead letters: the job goes through intake again, as a new job."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import redis

from worker.channels import Channel
from worker.engine import alert_resolution, keys
from worker.engine.alert_groups import as_incident
from worker.engine.dead_letters import KEEP_START_CHARS, KEEP_WHOLE_CHARS, cut_short
from worker.engine.intake import JobIdReusedError, accept, derived_job_id, lifecycle, resend
from worker.engine.quarantine import BROKER_CHANNEL
from worker.engine.runtime import Engine
from worker.job_request import InvalidJobError, JobRequest, parse_request

logger = logging.getLogger(__name__)

#: What a dead letter that is not a job says when asked to replay.
CANNOT = (
    "not a job that can be sent again (read it with `dlq show`, fix its producer, then "
    "`dlq remove` it)"
)


#: How long one replay holds its letter: ample for intake, and short enough that a letter
#: whose replayer died in between (its job queued or not) can be replayed again soon.
HOLD_SECONDS = 60.0


class ReplayInProgressError(LookupError):
    """Another process is replaying this dead letter at this moment."""


def replay(engine: Engine, entry_id: str) -> str:
    """Send a dead-lettered job through intake again; returns the new job id (for a
    resolved alert, the first of the resolve and its email).

    The dead letter is removed once the new job is queued. The new job's id is derived
    from the letter (its id and when it died), so a replay whose process died after it
    queued the job and before it removed the letter, replayed again, finds that job and
    queues nothing more (while the job's record is kept, JOB_TTL_SECONDS). A job that is
    still invalid raises :class:`InvalidJobError` and stays dead-lettered; an unknown id
    (or one replayed meanwhile), KeyError; one another process is replaying now,
    ReplayInProgressError.
    Two operators replaying the same letters at once send each job once: the letter is held
    from reading it until it is removed.
    """
    with _holding(engine, entry_id):
        entry = engine.dead_letters.get(entry_id)
        if entry is None:
            raise KeyError(f"no dead letter {entry_id!r} (replayed or purged meanwhile?)")
        try:
            job_id = _requeue(engine, entry)
        except JobIdReusedError:
            # Its job id is derived from the letter: a job under it is this letter's
            # replay, queued by a replay that stopped before it removed the letter, though
            # what it would send now differs (an Alertmanager group's state moved on).
            problem = (
                "replayed already (by a replay that stopped before it removed the letter), "
                "as what it held then: `dlq remove` it"
            )
            raise InvalidJobError([{"field": "id", "message": problem}]) from None
        engine.dead_letters.remove(entry_id)
    if entry.get("job_id") and entry.get("channel") in tuple(Channel):
        try:  # the job is queued: a note that cannot be written must not say otherwise
            engine.jobs.note_replayed(entry["job_id"], entry["channel"], job_id)
        except redis.RedisError as exc:
            logger.warning(
                "dead letter %s replayed as job %s, not noted: %s", entry_id, job_id, exc
            )
    return job_id


def remove(engine: Engine, entry_id: str) -> bool:
    """Delete one dead letter; False when there is none of that id. Raises
    :class:`ReplayInProgressError` while a replay holds it (removing it then would not stop
    that replay's job)."""
    with _holding(engine, entry_id):
        return engine.dead_letters.remove(entry_id)


@contextlib.contextmanager
def _holding(engine: Engine, entry_id: str) -> Iterator[None]:
    """The letter's replay hold for the block; ReplayInProgressError when another has it."""
    hold = engine.locks.acquire(keys.dead_letter_replay(entry_id), HOLD_SECONDS)
    if hold is None:
        raise ReplayInProgressError(f"dead letter {entry_id!r} is being replayed elsewhere now")
    try:
        yield
    finally:
        # It lapses by itself in HOLD_SECONDS: a release Redis did not take changes nothing.
        try:
            hold.release()
        except redis.RedisError as exc:
            logger.warning("a dead letter's replay hold not released (it lapses): %s", exc)


def _requeue(engine: Engine, entry: dict[str, Any]) -> str:
    payload = entry["payload"]
    # The same letter always gives the same job: replaying it again after a replay that
    # died before it removed the letter finds that job's record instead of sending twice.
    # A letter written again under this id (it died again) is another letter: another job.
    job_id = derived_job_id("replay", str(entry["id"]), repr(entry.get("dead_at")))
    # When it was first accepted (a letter older than the field: when it first died).
    first_seen = _epoch(entry.get("first_seen")) or _epoch(entry.get("dead_at"))
    if entry["channel"] == BROKER_CHANNEL:
        raise InvalidJobError(
            [
                {
                    "field": "payload",
                    "message": "a message no task could read, not a job; read it with "
                    "`dlq show`, fix its producer, then `dlq remove` it",
                }
            ]
        )
    size = cut_short(payload)
    if size is not None:
        kept = (
            f"only the first {KEEP_START_CHARS:,} of its {size:,} characters were kept (a "
            f"refused payload is kept whole up to {KEEP_WHOLE_CHARS:,}): it cannot be "
            "replayed; `dlq show` has what was kept: send it again from its producer, then "
            "`dlq remove` it"
        )
        raise InvalidJobError([{"field": "payload", "message": kept}])
    if entry["channel"] == "intake":
        args = payload.get("args") if isinstance(payload, dict) else None
        if not isinstance(args, list) or len(args) != 1:
            raise InvalidJobError(
                [{"field": "payload", "message": "not a single job object; cannot replay"}]
            )
        request = parse_request(args[0])
        if isinstance(payload.get("group"), dict):
            return _group_firing(engine, request, payload["group"], first_seen, job_id)
        if isinstance(payload.get("resolves"), str):
            # A resolved alert: what its resolving means (a resolve, a [RESOLVED] email),
            # never the trigger its fields would make.
            done = alert_resolution.resolve(
                engine, request, payload["resolves"], "replay", job_id=job_id
            )
            return done[0].job_id
        return accept(
            engine,
            request,
            job_id,
            "replay",
            replay_of=entry["id"],
            first_accepted_at=first_seen,
        ).job_id
    if not isinstance(payload, dict):
        raise InvalidJobError([{"field": "payload", "message": f"{CANNOT}: not a JSON object"}])
    action = payload.get("action")
    if action in ("acknowledge", "resolve"):
        if not isinstance(payload.get("dedup_key"), str):
            raise InvalidJobError(
                [{"field": "payload.dedup_key", "message": f"{CANNOT}: an {action} needs one"}]
            )
        team = payload.get("team")
        return lifecycle(engine, action, payload["dedup_key"], team, "replay", job_id)
    if not isinstance(payload.get("notification"), dict):
        raise InvalidJobError(
            [{"field": "payload.notification", "message": f"{CANNOT}: it holds none to send"}]
        )
    fields = dict(payload["notification"])
    fields["team"] = payload.get("team")
    fields["channel"] = Channel(entry["channel"]).value  # only the channel that failed
    if payload.get("resend") is True and isinstance(payload.get("email_to"), str):
        # Recipients a server refused: to them alone, past the routing rules.
        request = parse_request(fields)
        to = payload["email_to"]
        return resend(engine, request, to, job_id, "replay", entry["job_id"], first_seen).job_id
    # An email sent again carries its first job's Message-ID (the answer to it may have been
    # lost after the server took it); intake keeps it for the email alone.
    return accept(
        engine,
        parse_request(fields),
        job_id,
        "replay",
        replay_of=entry["job_id"],
        message_of=payload.get("message_of") or entry["job_id"],
        first_accepted_at=first_seen,
    ).job_id


def _group_firing(
    engine: Engine,
    request: JobRequest,
    group: dict[str, Any],
    first_seen: float | None,
    job_id: str,
) -> str:
    """An Alertmanager group's firing, replayed: only while the group still fires with the
    same alerts, as the job its webhooks name (a repeat Alertmanager sent meanwhile and
    this are one), with its incident's team and priority, and noted where it went, so the
    group's resolve goes there too. Afterwards it would open an incident no webhook
    resolves."""
    group_id = str(group.get("id"))
    now = engine.alert_groups.current(group_id)
    if now is None or now.state != group.get("state"):
        problem = (
            "the group has moved on since (its alerts changed, or it resolved): "
            "Alertmanager's next notification carries what is current; `dlq remove` this letter"
        )
        raise InvalidJobError([{"field": "payload.group", "message": problem}])
    # No replay_of: that would take the firing's id over from a repeat Alertmanager sent
    # meanwhile (as a job's replay takes over the dead job's), and page twice.
    done = accept(engine, as_incident(request, now), job_id, "replay", first_accepted_at=first_seen)
    engine.alert_groups.went(group_id, engine.jobs, done.job_id)
    return done.job_id


def _epoch(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    return float(value)
