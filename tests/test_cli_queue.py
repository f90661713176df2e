"""``gds-notify status``, ``schema`` and ``dlq`` against a real Redis and worker."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import tasks
from cli.main import main
from sandbox import SandboxServer
from tests.conftest import (
    BAD_KEY,
    OUTAGE,
    ROUTING_KEY,
    SandboxClient,
    dead_pages,
    in_thread_worker,
    wait_for,
)
from tests.processes import ROOT
from worker.celery_app import app
from worker.engine import keys
from worker.engine.runtime import engine
from worker.providers.base import Notification


def run(*args: str, input: str | None = None) -> Any:
    return CliRunner().invoke(main, list(args), input=input)


def test_schema_is_the_intake_payload_json_schema() -> None:
    result = run("schema")
    assert result.exit_code == 0
    schema = json.loads(result.output)
    assert set(schema["required"]) == {"recipient", "subject"}
    for field in ("priority", "idempotency_id", "metadata", "team", "channel", "body_html"):
        assert field in schema["properties"]


def test_status_prints_the_history(celery_worker: Any, service_env: SandboxServer) -> None:
    api = SandboxClient(service_env)
    api.faults({"status": 503})
    job = tasks.enqueue(
        Notification(
            recipient="db-2", subject="Disk full", priority="critical", idempotency_id="st-1"
        ),
        team="dba",
    )
    wait_for(lambda: engine().jobs.get(job)["status"] == "delivered")  # type: ignore[index]
    result = run("status", job)
    assert result.exit_code == 0, result.output
    out = result.output
    assert f"job        {job}  [delivered]" in out
    assert "pagerduty  delivered after 2 attempt(s)" in out
    assert "NotificationDeliveryError: PagerDuty answered HTTP 503" in out
    assert "#2  delivered" in out
    assert ROUTING_KEY not in out
    as_json = json.loads(run("status", job, "--json").output)
    assert as_json["channels"]["pagerduty"]["result"]["dedup_key"] == "st-1"
    missing = run("status", "nope")
    assert missing.exit_code == 1
    assert "no job 'nope'" in missing.output
    api.close()


def test_dlq_list_show_replay_purge(celery_worker: Any, service_env: SandboxServer) -> None:
    api = SandboxClient(service_env)
    assert run("dlq", "list").output.strip() == "no dead letters"
    api.smtp_faults({"status": 550}, {"status": 550})
    jobs = [tasks.enqueue(Notification(recipient="a@example.com", subject=f"s{i}")) for i in (1, 2)]
    wait_for(lambda: engine().dead_letters.count() == 2)
    listing = run("dlq", "list")
    assert listing.exit_code == 0
    assert "2 of 2 shown" in listing.output
    assert "permanent error" in listing.output
    engine().dead_letters.add(entry_id="odd", job_id=None, channel="intake", reason="r", payload=1)
    emails = run("dlq", "list", "--channel", "email")
    assert "2 of 2 shown" in emails.output
    assert "odd" not in emails.output
    assert "1 of 1 shown" in run("dlq", "list", "--channel", "intake").output
    assert run("dlq", "list", "--channel", "pagerduty").output.strip() == (
        "no dead letters on pagerduty"
    )
    assert run("dlq", "list", "--channel", "sms").exit_code == 2
    engine().dead_letters.remove("odd")
    entry_id = f"{jobs[0]}-email"
    shown = json.loads(run("dlq", "show", entry_id).output)
    assert shown["last_error"]["args"][1] == 550
    assert run("dlq", "show", "nope").exit_code == 1

    replayed = run("dlq", "replay", entry_id)
    assert replayed.exit_code == 0, replayed.output
    new_job = replayed.output.strip().split()[-1]
    wait_for(lambda: engine().jobs.get(new_job)["status"] == "delivered")  # type: ignore[index]
    assert engine().dead_letters.count() == 1
    assert run("dlq", "replay").exit_code == 2
    assert run("dlq", "replay", "nope").exit_code == 1

    declined = run("dlq", "purge", input="n\n")
    assert declined.exit_code == 1  # declined: nothing deleted
    assert "Delete 1 dead letter for good? (--yes: without asking)" in declined.output
    assert engine().dead_letters.count() == 1
    purged = run("dlq", "purge", "--yes")
    assert purged.output.strip() == "purged 1 dead letter"
    assert engine().dead_letters.count() == 0

    # A delivery message of the wrong shape (from a producer of its own): dead-lettered by
    # the worker; its replay says why it cannot be sent again, in one line, and keeps it.
    app.send_task("deliver.pagerduty", args=[{"job_id": "made-up"}], queue="pagerduty")
    wait_for(lambda: engine().dead_letters.count() == 1)
    [letter] = engine().dead_letters.list()
    refused = run("dlq", "replay", letter["id"])
    assert refused.exit_code != 0
    [line] = refused.output.strip().splitlines()
    assert "payload.notification: not a job that can be sent again" in line, line
    assert engine().dead_letters.count() == 1
    api.close()


def test_unreachable_redis_is_one_line_and_exit_1(monkeypatch: Any, tmp_path: Any) -> None:
    from tests.conftest import forget_runtime

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("REDIS_URL", "redis://:s3cretpw@127.0.0.1:1/0")
    forget_runtime()
    try:
        result = run("dlq", "list")
    finally:
        forget_runtime()
    assert result.exit_code == 1
    assert "cannot reach Redis at redis://…@127.0.0.1:1/0" in result.output  # a password, unshown
    assert "s3cretpw" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_dlq_replay_goes_oldest_first_whatever_the_order_named(
    celery_worker: Any, service_env: SandboxServer
) -> None:
    """`dlq list` prints the newest first, so piping its ids to `dlq replay` named a
    resolve before its trigger: PagerDuty dropped the resolve, and the trigger then
    opened an incident nobody resolved. ids and --all together replayed everything."""
    api = SandboxClient(service_env)
    api.faults({"status": 400}, {"status": 400})
    page = Notification(
        recipient="db-9", subject="Disk full", priority="critical", idempotency_id="order-1"
    )
    tasks.enqueue(page)
    wait_for(lambda: engine().dead_letters.count() == 1)
    tasks.resolve("order-1")
    wait_for(lambda: engine().dead_letters.count() == 2)
    newest_first = [letter["id"] for letter in json.loads(run("dlq", "list", "--json").output)]

    both = run("dlq", "replay", newest_first[0], "--all")
    assert both.exit_code == 2
    assert "not both" in both.output
    assert engine().dead_letters.count() == 2

    replayed = run("dlq", "replay", *newest_first, "nope")
    assert replayed.exit_code == 1  # one name unknown: the others replayed all the same
    assert [line.split()[0] for line in replayed.stdout.splitlines()] == newest_first[::-1]
    assert "nope: not replayed: no dead letter 'nope'" in replayed.stderr
    assert "1 of 3 not replayed" in replayed.stderr
    wait_for(lambda: [i["status"] for i in api.incidents()] == ["resolved"])
    assert engine().dead_letters.count() == 0
    api.close()


def test_two_replays_at_once_send_each_dead_letter_once(service_env: SandboxServer) -> None:
    """Two operators (or one, twice) replaying the same letters at the same moment: each
    read every letter before either removed one, and every job went out twice."""
    letters = engine().dead_letters
    names = [f"twice-{i}-email" for i in range(20)]
    for i, name in enumerate(names):
        letters.add(
            entry_id=name,
            job_id=f"twice-{i}",
            channel="email",
            reason="550",
            payload={"notification": {"recipient": "a@example.com", "subject": f"s{i}"}},
        )
    start = threading.Barrier(4)

    def replay_all() -> list[str]:
        start.wait()
        done = []
        for name in names:
            # LookupError: being replayed by another run, or replayed by it already.
            with contextlib.suppress(LookupError):
                done.append(tasks.replay(name))
        return done

    with ThreadPoolExecutor(4) as pool:
        runs = [pool.submit(replay_all) for _ in range(4)]
        jobs = [job for each in runs for job in each.result()]
    assert len(jobs) == len(set(jobs)) == len(names)
    assert letters.count() == 0
    records = [engine().jobs.get(job) or {} for job in jobs]
    assert sorted(str(r.get("replay_of")) for r in records) == sorted(
        f"twice-{i}" for i in range(20)
    )


#: A replay whose process is killed once it has queued the letter's job, before the letter
#: is removed (SIGKILL: no ``finally`` runs, its hold is left to lapse).
KILLED_AFTER_QUEUEING = """
import os, signal, sys
import tasks
from worker.engine.dead_letters import DeadLetters

def killed(self, entry_id):
    os.kill(os.getpid(), signal.SIGKILL)

DeadLetters.remove = killed
tasks.replay(sys.argv[1])
"""

#: One letter of each kind a replay queues differently.
CRASHED_LETTERS: dict[str, dict[str, Any]] = {
    "email": {
        "channel": "email",
        "job_id": "crashed",
        "payload": {"notification": {"recipient": "a@example.com", "subject": "Disk full"}},
    },
    "page": {
        "channel": "pagerduty",
        "job_id": "crashed",
        "payload": {
            "action": "trigger",
            "notification": {"recipient": "db", "subject": "Disk full"},
        },
    },
    "acknowledge": {
        "channel": "pagerduty",
        "job_id": "crashed",
        "payload": {"action": "acknowledge", "dedup_key": "crashed-incident"},
    },
    "intake": {
        "channel": "intake",
        "job_id": None,
        "payload": {"args": [{"recipient": "a@example.com", "subject": "Disk full"}]},
    },
}


@pytest.mark.parametrize("kind", sorted(CRASHED_LETTERS))
def test_a_replay_killed_before_removing_its_letter_sends_once_when_replayed_again(
    kind: str, service_env: SandboxServer
) -> None:
    """The replay queued the job and was killed before it removed the letter; the operator,
    seeing the letter still there, replays it again: the job must go out once."""
    api = SandboxClient(service_env)
    letters = engine().dead_letters
    name = f"crashed-{kind}"
    letters.add(entry_id=name, reason="r", **CRASHED_LETTERS[kind])
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_AFTER_QUEUEING, name],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert letters.get(name) is not None  # its job queued, the letter still there
    engine().redis.delete(keys.dead_letter_replay(name))  # its hold lapsed meanwhile
    again = tasks.replay(name)
    assert letters.get(name) is None
    with in_thread_worker():
        wait_for(lambda: (engine().jobs.get(again) or {}).get("status") == "delivered")
        wait_for(lambda: engine().redis.zcard(keys.OPEN_DELIVERIES) == 0)
    sent = api.messages() if kind in ("email", "intake") else api.events()
    assert len(sent) == 1, sent
    api.close()


def test_a_letter_replayed_already_as_something_else_says_so_when_replayed_again(
    service_env: SandboxServer,
) -> None:
    """A replay killed before it removed the letter queued what the letter meant then; if
    it means something else now (an Alertmanager group's state moved on), replaying it
    again cannot queue it under the same job: the operator is told why, not "a message id
    sent twice"."""
    letters = engine().dead_letters
    letters.add(entry_id="moved-on", reason="r", **CRASHED_LETTERS["email"])
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_AFTER_QUEUEING, "moved-on"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    engine().redis.delete(keys.dead_letter_replay("moved-on"))
    letter = letters.get("moved-on")
    assert letter is not None
    letter["payload"]["notification"]["subject"] = "Disk full, and more"
    engine().redis.hset(keys.DEAD_LETTERS, "moved-on", json.dumps(letter))
    again = run("dlq", "replay", "moved-on")
    assert again.exit_code != 0
    assert "replayed already (by a replay that stopped before it removed the letter)" in (
        again.output
    )
    assert "sent twice" not in again.output
    assert letters.get("moved-on") is not None
    # A letter refused for a field named id is not one replayed already: told what it is.
    letters.add(
        entry_id="with-an-id",
        job_id=None,
        channel="intake",
        reason="r",
        payload={"args": [{"recipient": "a@example.com", "subject": "s", "id": "x"}]},
    )
    refused = run("dlq", "replay", "with-an-id")
    assert refused.exit_code != 0
    assert "replayed already" not in refused.output
    assert "id: Extra inputs are not permitted" in refused.output


def test_dlq_remove_deletes_only_the_letters_named(service_env: SandboxServer) -> None:
    """A letter not to be sent was to be purged, and purge deletes every letter."""
    letters = engine().dead_letters
    for entry_id, job_id in (("poison-1", None), ("j2-email", "j2"), ("keep-me", None)):
        letters.add(entry_id=entry_id, job_id=job_id, channel="intake", reason="r", payload={})
    removed = run("dlq", "remove", "poison-1", "j2", "nope")
    assert removed.exit_code == 1
    assert removed.stdout.splitlines() == ["removed poison-1", "removed j2-email"]
    assert "nope: no dead letter 'nope'" in removed.stderr
    assert "1 of 3 not removed" in removed.stderr
    assert [letter["id"] for letter in letters.list()] == ["keep-me"]
    assert run("dlq", "remove").exit_code == 2
    # A replay holding it now would send its job all the same: not removed.
    hold = engine().locks.acquire(keys.dead_letter_replay("keep-me"), 30)
    assert hold is not None
    held = run("dlq", "remove", "keep-me")
    assert held.exit_code == 1
    assert "keep-me: not removed: dead letter 'keep-me' is being replayed elsewhere now" in (
        held.stderr
    )
    assert letters.count() == 1
    assert hold.release()


def test_an_empty_listing_of_a_redis_the_service_never_used_says_so(
    service_env: SandboxServer,
) -> None:
    """A stale REDIS_URL, or another database number: `dlq list` and `jobs` read "nothing
    to do" at 3 a.m. from a Redis that never held the service."""
    for command in (["dlq", "list"], ["jobs"], ["dlq", "list", "--json"]):
        foreign = run(*command)
        assert foreign.exit_code == 0
        assert "holds nothing of this service" in foreign.stderr
        assert "holds nothing" not in foreign.stdout  # --json stays JSON
    tasks.enqueue(Notification(recipient="a@example.com", subject="s"))
    ours = run("dlq", "list")
    assert ours.stdout.strip() == "no dead letters"
    assert ours.stderr == ""


def test_after_an_outage_exactly_its_dead_pages_are_chosen_shown_and_replayed(
    service_env: SandboxServer,
) -> None:
    """PagerDuty was down for an hour: replay exactly the pages it killed, having looked
    first, and nothing older, nor the email refused for good meanwhile."""
    letters = engine().dead_letters
    notification = {"recipient": "db", "subject": "Disk full", "priority": "critical"}
    page = {"action": "trigger", "notification": notification}
    for name, channel, reason in (
        ("old-pagerduty", "pagerduty", "PagerDuty answered HTTP 503 (retries exhausted)"),
        ("a-pagerduty", "pagerduty", "PagerDuty answered HTTP 503 (retries exhausted)"),
        ("b-pagerduty", "pagerduty", "PagerDuty answered HTTP 503 (retries exhausted)"),
        ("c-email", "email", "permanent error: 550 no such mailbox"),
        ("poison-1", "broker", "unreadable broker message: not JSON"),
    ):
        job_id = name.rsplit("-", 1)[0]
        letters.add(entry_id=name, job_id=job_id, channel=channel, reason=reason, payload=page)
    # The old one died three hours ago.
    old = json.loads(engine().redis.hget(keys.DEAD_LETTERS, "old-pagerduty"))  # type: ignore[arg-type]
    old["dead_at"] -= 3 * 3600
    engine().redis.hset(keys.DEAD_LETTERS, "old-pagerduty", json.dumps(old))
    for index in (keys.DEAD_LETTER_INDEX, keys.dead_letter_channel("pagerduty")):
        engine().redis.zadd(index, {"old-pagerduty": old["dead_at"]})

    recent = run("dlq", "list", "--channel", "pagerduty", "--since", "2h")
    assert "2 of 2 shown" in recent.stdout
    assert "old-pagerduty" not in recent.stdout
    by_reason = json.loads(run("dlq", "list", "--reason", "http 503", "--json").stdout)
    assert sorted(e["id"] for e in by_reason) == ["a-pagerduty", "b-pagerduty", "old-pagerduty"]
    assert run("dlq", "list", "--since", "yesterday-ish").exit_code == 2

    chosen = ["replay", "--all", "--channel", "pagerduty", "--since", "2h"]
    looked = run("dlq", *chosen, "--dry-run")
    assert looked.exit_code == 0, looked.output
    assert [line.split()[2] for line in looked.stdout.splitlines()[:-1]] == [
        "a-pagerduty",
        "b-pagerduty",
    ]
    assert looked.stdout.splitlines()[-1] == "2 dead letters would be replayed"
    assert letters.count() == 5  # a dry run replays nothing
    everything = run("dlq", "replay", "--all", "--since", "2h", "--dry-run").stdout.splitlines()
    assert "cannot replay poison-1" in "\n".join(everything)  # a message, not a job
    assert everything[-1] == "3 dead letters would be replayed"
    assert run("dlq", "replay", "a-pagerduty", "--since", "2h").exit_code == 2

    replayed = run("dlq", *chosen)
    assert replayed.exit_code == 0, replayed.output
    assert [line.split()[0] for line in replayed.stdout.splitlines()] == [
        "a-pagerduty",
        "b-pagerduty",
    ]
    assert sorted(e["id"] for e in letters.list()) == ["c-email", "old-pagerduty", "poison-1"]


def test_dead_letter_ids_piped_from_dlq_list_are_replayed_and_removed(
    service_env: SandboxServer,
) -> None:
    """`dlq list --ids` prints ids alone, and `dlq replay -` and `dlq remove -` read them,
    so any filter a shell has fits between the two."""
    letters = engine().dead_letters
    dead_pages(
        ("a-pagerduty", OUTAGE),
        ("b-pagerduty", OUTAGE),
        ("c-pagerduty", BAD_KEY),
        ("d-pagerduty", BAD_KEY),
    )
    gds = str(Path(sys.executable).with_name("gds-notify"))

    def shell(command: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-o", "pipefail", "-c", command.replace("gds-notify", gds)],
            input=stdin.decode("latin-1"),
            capture_output=True,
            text=True,
            timeout=60,
        )

    ids = shell("gds-notify dlq list --ids")
    assert ids.returncode == 0, ids.stderr
    assert sorted(ids.stdout.split()) == [
        "a-pagerduty",
        "b-pagerduty",
        "c-pagerduty",
        "d-pagerduty",
    ]
    replayed = shell("gds-notify dlq list --ids --reason 'http 503' | gds-notify dlq replay -")
    assert replayed.returncode == 0, replayed.stderr
    assert [line.split()[0] for line in replayed.stdout.splitlines()] == [
        "a-pagerduty",
        "b-pagerduty",
    ]
    removed = shell("gds-notify dlq list --ids | grep -v d- | gds-notify dlq remove -")
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.splitlines() == ["removed c-pagerduty"]
    assert [e["id"] for e in letters.list()] == ["d-pagerduty"]
    nothing = shell("gds-notify dlq replay -")
    assert nothing.returncode == 0
    assert "no dead letters named on stdin" in nothing.stderr
    not_text = subprocess.run([gds, "dlq", "replay", "-"], input=b"d-\xff\n", capture_output=True)
    assert not_text.returncode == 2
    assert b"stdin: not UTF-8 text" in not_text.stderr
    assert [e["id"] for e in letters.list()] == ["d-pagerduty"]


def test_a_dead_letter_over_a_mebibyte_replays_and_is_delivered(
    service_env: SandboxServer,
) -> None:
    """A job's letter holds its whole delivery payload, larger than 1 MiB when its body is
    at the limit: it replays like any other."""
    api = SandboxClient(service_env)
    body = "x" * 1_048_576  # the most a body may hold
    engine().dead_letters.add(
        entry_id="big-email",
        job_id="big",
        channel="email",
        reason="550",
        payload={"notification": {"recipient": "a@example.com", "subject": "big", "body": body}},
    )
    assert len(engine().redis.hget(keys.DEAD_LETTERS, "big-email") or b"") > 1_048_576
    replayed = run("dlq", "replay", "big-email")
    assert replayed.exit_code == 0, replayed.output
    with in_thread_worker():
        [message] = wait_for(api.messages, timeout=30)
    assert message["subject"] == "big"
    assert engine().dead_letters.count() == 0
    api.close()


def test_a_refused_notify_of_a_large_body_is_kept_whole_and_replays_once_its_route_is_mended(
    service_env: SandboxServer, monkeypatch: Any
) -> None:
    """A notification refused for its route (a component's name as an email recipient),
    its body 200,000 characters (well within the 1 MiB a body may hold): once a rule
    gives it recipients, its replay sends it whole."""
    from config.settings import get_settings

    api = SandboxClient(service_env)
    body = "y" * 200_000
    with in_thread_worker():
        sent = app.send_task("notify", args=[{"recipient": "db-1", "subject": "big", "body": body}])
        [letter] = wait_for(engine().dead_letters.list)
        assert letter["id"] == sent.id
        monkeypatch.setenv(
            "ROUTING_RULES",
            '[{"priority": "normal", "channels": ["email"], "email_to": "ops@example.com"}]',
        )
        get_settings.cache_clear()
        replayed = run("dlq", "replay", sent.id)
        assert replayed.exit_code == 0, replayed.output
        [message] = wait_for(api.messages, timeout=30)
    assert message["subject"] == "big"
    assert engine().dead_letters.count() == 0
    api.close()


def test_whole_means_as_json_for_every_refused_or_expired_notify() -> None:
    """One measure, the size of the JSON a body carries: Python's repr (separators) and
    ASCII-escaped JSON (six characters for each non-ASCII one) cut payloads well within
    1 MiB, which then could not be replayed."""
    from worker.engine.dead_letters import KEEP_WHOLE_CHARS, bounded, cut_short
    from worker.task_request import keep_expired

    listed = {"args": [{"metadata": {"n": [0] * 400_000}}]}  # repr 1.2 MB, JSON 0.8 MB
    assert len(repr(listed)) > KEEP_WHOLE_CHARS
    assert bounded(listed) is listed
    snow = {"subject": "s", "body": "雪" * 300_000}  # escaped 1.8 MB, as sent 0.3 MB
    assert bounded({"args": [snow]})["args"] == [snow]
    assert cut_short(bounded({"args": ["z" * 2_000_000]})) is not None
    # An expired notify is measured the same way (False: not kept as a notification).
    assert keep_expired("t-1", [{"body": "z" * 2_000_000}], {}, "expired") is False


def test_a_refused_notify_too_large_to_keep_whole_says_so_when_replayed(
    service_env: SandboxServer,
) -> None:
    """Past the most a job may hold, only the start of a refused payload is kept (it may be
    hostile): `dlq show` has it, and its replay says why it cannot send it."""
    with in_thread_worker():
        sent = app.send_task(
            "notify", args=[{"recipient": "a@example.com", "subject": "s", "body": "z" * 3_000_000}]
        )
        [letter] = wait_for(engine().dead_letters.list)
    assert "body: must be at most 1048576 characters" in letter["reason"]
    shown = run("dlq", "show", sent.id)
    assert shown.exit_code == 0
    assert '"truncated"' in shown.output
    replayed = run("dlq", "replay", sent.id)
    assert replayed.exit_code == 1
    assert "only the first" in replayed.output, replayed.output
    assert "cannot be replayed" in replayed.output
    assert engine().dead_letters.count() == 1
