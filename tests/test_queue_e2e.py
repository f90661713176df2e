"""The queue end to end: a real Redis, a real Celery worker, the sandbox over HTTP and SMTP."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import pytest

import tasks
from sandbox import SandboxServer
from tests.conftest import SandboxClient, in_thread_worker, wait_for
from worker.engine.runtime import engine
from worker.providers.base import Notification


@pytest.fixture
def api(service_env: SandboxServer) -> Any:
    client = SandboxClient(service_env)
    yield client
    client.close()


def note(**fields: Any) -> Notification:
    values: dict[str, Any] = {
        "recipient": "oncall@example.com",
        "subject": "Replica lag on db-2",
        "body": "Lag is 45 s",
    }
    values.update(fields)
    return Notification.model_validate(values)


def status(job_id: str) -> dict[str, Any]:
    record = engine().jobs.get(job_id)
    assert record is not None
    return record


def test_critical_pages_and_normal_mails(celery_worker: Any, api: SandboxClient) -> None:
    page = tasks.enqueue(note(priority="critical", recipient="db-2", idempotency_id="p-1"))
    mail = tasks.enqueue(note(priority="normal", idempotency_id="m-1"))
    wait_for(
        lambda: status(page)["status"] == "delivered" and status(mail)["status"] == "delivered"
    )
    [incident] = api.incidents()
    assert incident["dedup_key"] == "p-1"
    assert incident["summary"] == "Replica lag on db-2"
    [message] = api.messages()
    assert message["rcpt_tos"] == ["oncall@example.com"]
    assert status(page)["channels"]["pagerduty"]["attempts"] == 1


def test_five_copies_of_one_idempotency_id_page_once_and_mail_once(
    celery_worker: Any, api: SandboxClient
) -> None:
    pages = [
        tasks.enqueue(note(priority="critical", recipient="db-2", idempotency_id="dup-page"))
        for _ in range(5)
    ]
    mails = [tasks.enqueue(note(idempotency_id="dup-mail")) for _ in range(5)]
    assert len(set(pages)) == 1
    assert len(set(mails)) == 1
    wait_for(lambda: status(pages[0])["status"] == "delivered")
    wait_for(lambda: status(mails[0])["status"] == "delivered")
    assert status(pages[0])["duplicates"] == 4
    assert len(api.incidents()) == 1
    assert api.incidents()[0]["alert_count"] == 1
    assert len(api.messages()) == 1


def test_429_with_retry_after_is_honoured(celery_worker: Any, api: SandboxClient) -> None:
    api.faults({"status": 429, "retry_after": "2"})
    job = tasks.enqueue(note(priority="critical", recipient="db-2", idempotency_id="ra-1"))
    wait_for(lambda: status(job)["status"] == "delivered", timeout=20)
    first, second = api.events()
    assert first["status"] == 429
    assert second["status"] == 202
    assert second["at"] - first["at"] >= 2.0
    history = status(job)["attempts"]
    assert history[0]["error_class"] == "NotificationRateLimitError"
    assert history[0]["retry_in"] >= 2.0


def test_server_errors_twice_then_success_delivers_once(
    celery_worker: Any, api: SandboxClient
) -> None:
    api.faults({"status": 503}, {"status": 500})
    job = tasks.enqueue(note(priority="critical", recipient="db-2", idempotency_id="5xx-1"))
    wait_for(lambda: status(job)["status"] == "delivered")
    assert [e["status"] for e in api.events()] == [503, 500, 202]
    # Each attempt says when the alert was raised, not when that attempt went out.
    stamps = {e["body"]["payload"]["timestamp"] for e in api.events()}
    assert len(stamps) == 1
    accepted = datetime.fromisoformat(stamps.pop()).timestamp()
    assert abs(accepted - status(job)["created_at"]) < 1.0
    [incident] = api.incidents()
    assert incident["alert_count"] == 1
    record = status(job)
    assert record["channels"]["pagerduty"]["attempts"] == 3
    assert [a["outcome"] for a in record["attempts"]] == ["failed", "failed", "delivered"]


def test_rejected_event_is_dead_lettered_at_once_with_pagerduty_errors(
    celery_worker: Any, api: SandboxClient
) -> None:
    from worker.engine.runtime import engine

    api.settings(strict_keys=["SOMEOTHERKEY00000000000000000000"])
    job = tasks.enqueue(note(priority="critical", recipient="db-2", idempotency_id="400-1"))
    wait_for(lambda: status(job)["status"] == "dead-lettered")
    [entry] = engine().dead_letters.list()
    assert entry["job_id"] == job
    assert entry["attempts"] == 1
    assert entry["last_error"]["type"] == "NotificationDeliveryError"
    assert entry["last_error"]["args"][2] == ["Invalid routing key"]
    assert "permanent error" in entry["reason"]
    assert "rejected event: Invalid routing key" in entry["reason"]
    assert len(api.events()) == 1


def test_smtp_550_is_dead_lettered_and_421_retried(celery_worker: Any, api: SandboxClient) -> None:
    from worker.engine.runtime import engine

    api.smtp_faults({"status": 550}, {"status": 421})
    rejected = tasks.enqueue(note(idempotency_id="smtp-550"))
    wait_for(lambda: status(rejected)["status"] == "dead-lettered")
    retried = tasks.enqueue(note(idempotency_id="smtp-421"))
    wait_for(lambda: status(retried)["status"] == "delivered")
    [entry] = engine().dead_letters.list()
    assert entry["last_error"]["args"][1] == 550
    assert [m["message_id"] for m in api.messages()] == [
        status(retried)["channels"]["email"]["result"]["message_id"]
    ]
    assert status(retried)["channels"]["email"]["attempts"] == 2


def test_an_email_without_an_idempotency_id_gets_its_jobs_message_id_kept_across_retries(
    celery_worker: Any, api: SandboxClient
) -> None:
    """The same alert text sent again is a new message to its receiver: a Message-ID taken
    from the content made Gmail and Exchange drop the second as a duplicate. A retry of
    one job (its answer lost after the server kept it) keeps the job's Message-ID."""
    api.smtp_faults({"drop": True, "accept": True})
    first = tasks.enqueue(note())
    wait_for(lambda: status(first)["status"] == "delivered")
    second = tasks.enqueue(note())
    wait_for(lambda: status(second)["status"] == "delivered")
    sent = api.messages()
    assert len(sent) == 3  # the first job's twice: kept, its answer lost, sent again
    by_job: dict[str, set[str]] = {}
    for message in sent:
        job_id = dict(message["headers"])["X-GDS-Job-Id"]
        by_job.setdefault(job_id, set()).add(message["message_id"])
    assert set(by_job) == {first, second}
    assert [len(ids) for ids in by_job.values()] == [1, 1]  # one Message-ID per job
    assert by_job[first] != by_job[second]
    assert status(first)["channels"]["email"]["attempts"] == 2


def test_an_email_replayed_from_its_dead_letter_carries_its_first_jobs_message_id(
    celery_worker: Any, api: SandboxClient
) -> None:
    """The server kept the message but its answer was lost, then the retry was refused:
    dead-lettered. Replayed, it is the same message to its receiver (who may hold it
    already), by Message-ID, however many replays on."""
    from worker.engine.runtime import engine

    api.smtp_faults({"drop": True, "accept": True}, {"status": 550})
    first = tasks.enqueue(note())
    wait_for(lambda: status(first)["status"] == "dead-lettered")
    [kept] = api.messages()
    api.smtp_faults({"status": 550})
    [letter] = engine().dead_letters.list()
    time.sleep(1.1)  # the Date header counts whole seconds: a second between the two
    again = tasks.replay(letter["id"])
    wait_for(lambda: status(again)["status"] == "dead-lettered")
    [second_letter] = engine().dead_letters.list()
    third = tasks.replay(second_letter["id"])
    wait_for(lambda: status(third)["status"] == "delivered")
    messages = api.messages()  # the copy kept at first, and the replay's
    assert len(messages) == 2
    assert {m["message_id"] for m in messages} == {kept["message_id"]}
    assert [dict(m["headers"])["X-GDS-Job-Id"] for m in messages] == [first, first]
    assert status(third)["replay_of"] == again
    # Each dated when its own job was accepted: a replay days later is not dated days ago
    # (mail clients sort by Date; spam filters score dates in the past).
    dates = [parsedate_to_datetime(dict(m["headers"])["Date"]).timestamp() for m in messages]
    assert abs(dates[0] - status(first)["created_at"]) < 1.0
    assert abs(dates[1] - status(third)["created_at"]) < 1.0
    assert dates[1] - dates[0] >= 1.0


def test_exhausted_retries_dead_letter(celery_worker: Any, api: SandboxClient) -> None:
    from worker.engine.runtime import engine

    api.faults(*[{"status": 502}] * 5)
    job = tasks.enqueue(note(priority="critical", recipient="db-2", idempotency_id="ex-1"))
    wait_for(lambda: status(job)["status"] == "dead-lettered")
    [entry] = engine().dead_letters.list()
    assert entry["attempts"] == 5
    assert entry["reason"].startswith("gave up after 5 attempts")
    assert len(api.events()) == 5


@pytest.mark.parametrize(
    ("args", "kwargs", "reason"),
    [
        ([{"recipient": "", "subject": "x"}], {}, "recipient: must not be blank"),
        ([{"recipient": "a@example.com"}], {}, "subject: Field required"),
        ([{"recipient": "a@example.com", "subject": "s", "priority": "loud"}], {}, "priority:"),
        ([{"recipient": "a@example.com", "subject": "s", "colour": "red"}], {}, "colour:"),
        ([{"recipient": "not-an-email", "subject": "s"}], {}, "recipient: 'not-an-email'"),
        (["just a string"], {}, "payload: must be a JSON object, not str"),
        ([], {}, "exactly one argument"),
        ([{"recipient": "a@example.com", "subject": "s"}, 2], {}, "exactly one argument"),
        ([], {"recipient": "a@example.com"}, "exactly one argument"),
    ],
)
def test_malformed_send_task_payloads_are_dead_lettered_naming_the_problem(
    celery_worker: Any,
    api: SandboxClient,
    args: list[Any],
    kwargs: dict[str, Any],
    reason: str,
) -> None:
    from worker import app
    from worker.engine.runtime import engine

    result = app.send_task("notify", args=args, kwargs=kwargs)
    entry = wait_for(lambda: engine().dead_letters.get(result.id))
    assert entry["channel"] == "intake"
    assert reason in entry["reason"]
    # ...and the worker keeps serving.
    ok = tasks.enqueue(note(idempotency_id=f"after-{result.id}"))
    wait_for(lambda: status(ok)["status"] == "delivered")


def test_send_task_with_celery_defaults_reaches_the_intake(
    celery_worker: Any, api: SandboxClient
) -> None:
    from worker import app

    result = app.send_task(
        "notify",
        args=[{"recipient": "db-2", "subject": "Disk full", "priority": "CRITICAL", "team": "dba"}],
    )
    wait_for(lambda: engine().jobs.get(result.id) and status(result.id)["status"] == "delivered")
    [incident] = api.incidents()
    from tests.conftest import TEAM_KEY

    assert incident["routing_key"].endswith(TEAM_KEY[-4:])


def test_links_and_chains_a_producer_attaches_are_not_run(
    celery_worker: Any, api: SandboxClient, caplog: pytest.LogCaptureFixture
) -> None:
    """What a Celery client can attach to `notify` would run as this worker's tasks after
    intake: a `deliver.*` on the job id, a task nobody has. None runs; the page goes out."""
    from celery import signature

    from worker import app

    page = {"recipient": "db-2", "subject": "Disk full", "priority": "critical"}
    with caplog.at_level("WARNING", logger="worker.task_base"):
        linked = app.send_task(
            "notify",
            args=[page | {"idempotency_id": "linked"}],
            link=signature("deliver.pagerduty", app=app),
            link_error=signature("no.such.task", app=app),
            chain=[dict(signature("deliver.email", app=app))],
        )
        wait_for(
            lambda: engine().jobs.get(linked.id) and status(linked.id)["status"] == "delivered"
        )
        # What the links would have started, had they run, is dead-lettered within moments.
        after = app.send_task("notify", args=[page | {"idempotency_id": "after"}])
        wait_for(lambda: engine().jobs.get(after.id) and status(after.id)["status"] == "delivered")
    assert engine().dead_letters.list() == []
    assert len(api.incidents()) == 2
    assert "ignored what its producer attached (callbacks, errbacks, chain)" in caplog.text


def test_a_notify_that_expires_while_it_waits_in_the_worker_is_dead_lettered(
    service_env: SandboxServer, api: SandboxClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Taken in time, then held behind a rate limit on `notify` (an operator's task
    annotation, or `celery control rate_limit`) until it expired: Celery would acknowledge
    it and drop it with one log line."""
    from worker import app

    # Set before the worker starts, which makes its buckets from it (a broadcast could
    # reach a worker not yet listening).
    app.loader.import_default_modules()  # the tasks, as a worker starting imports them
    monkeypatch.setattr(app.tasks["notify"], "rate_limit", "1/s")
    page = {"recipient": "db-2", "subject": "Disk full", "priority": "critical"}
    with in_thread_worker():
        first = app.send_task("notify", args=[page | {"idempotency_id": "first"}])
        # The bucket's one token goes to the first; this one waits a second for the next.
        held = app.send_task("notify", args=[page | {"idempotency_id": "held"}], expires=0.5)
        entry = wait_for(lambda: engine().dead_letters.get(held.id))
        wait_for(lambda: engine().jobs.get(first.id) and status(first.id)["status"] == "delivered")
        assert entry["channel"] == "intake"
        assert entry["reason"].startswith("expired ('headers.expires' ")
        assert "before a worker ran it" in entry["reason"]
        assert entry["payload"] == {"args": [page | {"idempotency_id": "held"}]}  # kept whole
        assert engine().jobs.get(held.id) is None  # it never ran
        assert [i["summary"] for i in api.incidents()] == ["Disk full"]
        assert [e["id"] for e in engine().dead_letters.list()] == [held.id]
        # An operator who decides it should still go replays it.
        again = tasks.replay(held.id)
        wait_for(lambda: status(again)["status"] == "delivered")
        # The first's message handed back after it expired (its ack was lost): its job
        # exists, so nothing is kept that a replay would send twice.
        app.send_task(
            "notify",
            args=[page | {"idempotency_id": "first"}],
            task_id=first.id,
            expires=datetime.now(UTC) - timedelta(seconds=5),
        )
        after = app.send_task("notify", args=[page | {"idempotency_id": "after"}])
        wait_for(lambda: engine().jobs.get(after.id) and status(after.id)["status"] == "delivered")
    assert engine().dead_letters.get(first.id) is None
    assert len(api.incidents()) == 3


def test_an_expired_notify_that_cannot_be_kept_is_put_back_until_it_can_be(
    service_env: SandboxServer,
    api: SandboxClient,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis refuses the dead letter (here the letters' hash is another type, a real
    WRONGTYPE error): the expired notify is neither acknowledged nor dropped, but put back,
    in the worker that held it and in the consumer that takes it again, until its letter
    can be written."""
    from worker import app
    from worker.engine import keys

    app.loader.import_default_modules()
    monkeypatch.setattr(app.tasks["notify"], "rate_limit", "1/s")
    page = {"recipient": "db-2", "subject": "Disk full", "priority": "critical"}
    engine().redis.set(keys.DEAD_LETTERS, "not a hash")
    try:
        with caplog.at_level("WARNING"), in_thread_worker():
            first = app.send_task("notify", args=[page | {"idempotency_id": "first"}])
            held = app.send_task("notify", args=[page | {"idempotency_id": "held"}], expires=0.5)
            wait_for(lambda: f"notify {held.id} expired and could not be kept" in caplog.text)
            wait_for(lambda: "an expired notify could not be kept: put back" in caplog.text)
            engine().redis.delete(keys.DEAD_LETTERS)  # Redis takes writes again
            entry = wait_for(lambda: engine().dead_letters.get(held.id))
            wait_for(
                lambda: engine().jobs.get(first.id) and status(first.id)["status"] == "delivered"
            )
    finally:
        engine().redis.delete(keys.DEAD_LETTERS)
    assert entry["channel"] == "intake"
    assert entry["payload"] == {"args": [page | {"idempotency_id": "held"}]}
    assert engine().jobs.get(held.id) is None
    assert [i["summary"] for i in api.incidents()] == ["Disk full"]
    assert not engine().redis.llen("celery")  # nothing left behind on the queue


def test_a_second_notification_under_a_message_id_already_taken_is_dead_lettered(
    celery_worker: Any, api: SandboxClient
) -> None:
    from worker import app

    email = {"recipient": "dba@example.com", "subject": "Nightly report"}
    page = {"recipient": "db-2", "subject": "Disk full", "priority": "critical"}
    page["idempotency_id"] = "never-claimed"
    app.send_task("notify", args=[email], task_id="taken-id")
    wait_for(lambda: engine().jobs.get("taken-id") and status("taken-id")["status"] == "delivered")
    app.send_task("notify", args=[email], task_id="taken-id")  # a copy: the same job
    app.send_task("notify", args=[page], task_id="taken-id")  # another: it was lost unseen
    entry = wait_for(lambda: engine().dead_letters.get("taken-id"))
    assert "accepted already with a different notification" in entry["reason"]
    assert entry["payload"] == {"args": [page]}
    assert [e["id"] for e in engine().dead_letters.list()] == ["taken-id"]  # the copy is fine
    assert list(status("taken-id")["channels"]) == ["email"]
    assert api.incidents() == []
    # The refused message claimed no idempotency id: the next one that names it goes out.
    assert tasks.enqueue(note(idempotency_id="never-claimed")) != "taken-id"


def test_a_page_handed_to_the_email_task_is_recorded_as_the_page_it_is(
    service_env: SandboxServer, api: SandboxClient
) -> None:
    """The channel comes from the job alone, never from the task or queue it arrived on."""
    from worker import app
    from worker.channels import Channel
    from worker.engine.intake import accept, new_job_id
    from worker.job_request import parse_request

    request = parse_request({"recipient": "db-2", "subject": "wrong door", "priority": "critical"})
    job_id = accept(engine(), request, new_job_id(), "test").job_id
    engine().redis.delete("pagerduty")  # the page's own message: this copy takes the wrong door
    _, payload = engine().jobs.state_and_payload(job_id, Channel.PAGERDUTY)
    assert payload is not None
    assert payload["channel"] == Channel.PAGERDUTY
    app.send_task("deliver.email", args=[payload], queue="email", routing_key="email")
    with in_thread_worker():
        wait_for(lambda: status(job_id)["status"] == "delivered")
    record = status(job_id)
    assert list(record["channels"]) == ["pagerduty"]
    assert {a["channel"] for a in record["attempts"]} == {"pagerduty"}
    assert [i["summary"] for i in api.incidents()] == ["wrong door"]
    assert api.messages() == []


def test_replay_from_dead_letters_delivers(celery_worker: Any, api: SandboxClient) -> None:
    from worker.engine.runtime import engine

    api.settings(strict_keys=["SOMEOTHERKEY00000000000000000000"])
    job = tasks.enqueue(note(priority="critical", recipient="db-2", idempotency_id="rp-1"))
    wait_for(lambda: status(job)["status"] == "dead-lettered")
    api.settings(strict_keys=None)  # the operator fixed the routing key
    [entry] = engine().dead_letters.list()
    new_job = tasks.replay(entry["id"])
    assert new_job != job
    wait_for(lambda: status(new_job)["status"] == "delivered")
    assert status(new_job)["replay_of"] == job
    assert engine().dead_letters.list() == []
    [incident] = api.incidents()
    # The responder sees a late page for what it is: raised when first accepted, and a
    # replay of the job whose history `gds-notify status` shows.
    event = incident["payload"]["payload"]
    assert event["custom_details"]["replay_of"] == job
    first = datetime.fromtimestamp(entry["first_seen"], UTC).isoformat(timespec="milliseconds")
    assert event["timestamp"] == first
    assert datetime.fromisoformat(event["timestamp"]).timestamp() < status(new_job)["created_at"]
    # The idempotency id now names the replayed job.
    assert tasks.enqueue(note(priority="critical", recipient="db-2", idempotency_id="rp-1")) == (
        new_job
    )


def test_replay_of_an_invalid_intake_payload_after_fixing_nothing_stays_dead(
    celery_worker: Any, api: SandboxClient
) -> None:
    from worker import app
    from worker.engine.runtime import engine

    result = app.send_task("notify", args=[{"recipient": "", "subject": "x"}])
    wait_for(lambda: engine().dead_letters.get(result.id))
    with pytest.raises(tasks.InvalidJobError, match="recipient"):
        tasks.replay(result.id)
    assert engine().dead_letters.get(result.id) is not None


def test_acknowledge_and_resolve_go_through_the_queue(
    celery_worker: Any, api: SandboxClient
) -> None:
    from tests.conftest import TEAM_KEY

    page = tasks.enqueue(
        note(priority="critical", recipient="db-2", idempotency_id="lc-1"), team="dba"
    )
    wait_for(lambda: status(page)["status"] == "delivered")
    ack = tasks.acknowledge("lc-1", team="dba")
    wait_for(lambda: status(ack)["status"] == "delivered")
    assert api.incidents()[0]["status"] == "acknowledged"
    res = tasks.resolve("lc-1", team="dba")
    wait_for(lambda: status(res)["status"] == "delivered")
    [incident] = api.incidents()
    assert incident["status"] == "resolved"
    assert incident["routing_key"].endswith(TEAM_KEY[-4:])


def test_lifecycle_jobs_retry_like_triggers(celery_worker: Any, api: SandboxClient) -> None:
    api.faults({"status": 500})
    job = tasks.resolve("whatever-key")
    wait_for(lambda: status(job)["status"] == "delivered")
    assert [e["status"] for e in api.events()] == [500, 202]


def test_secrets_never_travel_in_task_arguments(service_env: SandboxServer) -> None:
    from config.settings import get_settings
    from tests.conftest import ROUTING_KEY, TEAM_KEY
    from worker.engine.redis_client import connect

    tasks.enqueue(note(priority="critical", recipient="db-2"), team="dba")
    tasks.enqueue(note(priority="emergency", recipient="db-2"))
    tasks.enqueue(note())
    tasks.acknowledge("k", team="dba")
    client = connect(get_settings(), decode_responses=False)
    raw = b"".join(
        item if isinstance(item, bytes) else item.encode()
        for queue in (b"pagerduty", b"email", b"celery")
        for item in client.lrange(queue, 0, -1)
    )
    assert raw.count(b"deliver.") >= 4
    for secret in (ROUTING_KEY, TEAM_KEY):
        assert secret.encode() not in raw
    dump = b"".join(
        str(client.hgetall(k)).encode()
        for k in client.scan_iter(b"gds:job:*")
        if client.type(k) == b"hash"
    )
    assert ROUTING_KEY.encode() not in dump


@pytest.fixture
def with_rules(service_env: SandboxServer, monkeypatch: pytest.MonkeyPatch) -> SandboxServer:
    import json

    from config.settings import get_settings
    from tests.conftest import reconfigure

    rules = [
        {
            "priority": ["emergency"],
            "channels": ["pagerduty", "email"],
            "email_to": "oncall@example.com",
        },
        {"team": ["dba"], "alert_name": "Replica*", "channels": ["pagerduty"]},
    ]
    monkeypatch.setenv("ROUTING_RULES", json.dumps(rules))
    get_settings.cache_clear()
    reconfigure()
    return service_env


def test_routing_rules_send_emergency_to_both_and_route_by_team_and_alert(
    with_rules: SandboxServer, celery_worker: Any
) -> None:
    api = SandboxClient(with_rules)
    both = tasks.enqueue(note(priority="emergency", recipient="db-2", idempotency_id="both"))
    replica = tasks.enqueue(
        note(priority="low", alert_name="ReplicaLag", idempotency_id="rep"), team="dba"
    )
    wait_for(
        lambda: status(both)["status"] == "delivered" and status(replica)["status"] == "delivered"
    )
    assert set(status(both)["channels"]) == {"pagerduty", "email"}
    assert sorted(i["dedup_key"] for i in api.incidents()) == ["both", "rep"]
    [mail] = api.messages()
    assert mail["rcpt_tos"] == ["oncall@example.com"]
    assert mail["subject"] == "Replica lag on db-2"
    api.close()


def test_enqueue_refuses_bad_input_naming_the_field(service_env: SandboxServer) -> None:
    with pytest.raises(tasks.InvalidJobError, match="recipient: must not be blank") as caught:
        tasks.enqueue({"recipient": " ", "subject": "x"})
    assert caught.value.errors == [{"field": "recipient", "message": "must not be blank"}]
    with pytest.raises(tasks.InvalidJobError, match="priority"):
        tasks.enqueue({"recipient": "a@example.com", "subject": "x", "priority": "urgent"})
    with pytest.raises(tasks.InvalidJobError, match=r"recipient: 'nobody' is not"):
        tasks.enqueue({"recipient": "nobody", "subject": "x"})  # routed to email
    with pytest.raises(tasks.InvalidJobError, match="team: must be a non-blank single line"):
        tasks.enqueue(note(), team="dba\nX-Evil: 1")
    with pytest.raises(tasks.InvalidJobError, match="channel"):
        tasks.enqueue(note(), channel="sms")
    with pytest.raises(tasks.InvalidJobError, match="dedup_key"):
        tasks.acknowledge(" ")
    # ...and nothing was queued.
    from worker.engine.runtime import engine

    assert list(engine().redis.scan_iter("gds:job:*")) == []


def test_idempotency_ttl_is_settable_and_job_history_expires(
    service_env: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    from config.settings import get_settings
    from worker.engine import keys

    monkeypatch.setenv("IDEMPOTENCY_TTL_SECONDS", "1")
    get_settings.cache_clear()
    first = tasks.enqueue(note(idempotency_id="ttl-1"))
    assert tasks.enqueue(note(idempotency_id="ttl-1")) == first
    time.sleep(1.2)
    assert tasks.enqueue(note(idempotency_id="ttl-1")) != first
    ttl = engine().jobs.redis.ttl(keys.job(first))
    assert 0 < ttl <= get_settings().job_ttl_seconds


def test_dead_lettered_lifecycle_job_can_be_replayed(
    celery_worker: Any, api: SandboxClient
) -> None:
    from worker.engine.runtime import engine

    api.faults({"status": 400, "body": '{"status": "invalid event", "errors": ["nope"]}'})
    job = tasks.acknowledge("lc-dead")
    wait_for(lambda: status(job)["status"] == "dead-lettered")
    [entry] = engine().dead_letters.list()
    assert entry["payload"]["action"] == "acknowledge"
    again = tasks.replay(entry["id"])
    wait_for(lambda: status(again)["status"] == "delivered")
    assert [e["status"] for e in api.events()] == [400, 202]


def test_a_bare_celery_client_with_defaults_reaches_the_intake(
    celery_worker: Any, api: SandboxClient
) -> None:
    from celery import Celery

    from config.celery_config import broker
    from config.settings import get_settings

    # Nothing of ours: Celery's defaults, with the broker URL (and for Sentinel the master's
    # name) any Celery client needs.
    url, options = broker(get_settings())
    client = Celery(broker=url, broker_transport_options=options)
    result = client.send_task(
        "notify",
        args=[
            {
                "recipient": "db-prod-01",
                "subject": "Disk full on db-prod-01",
                "priority": "critical",
                "idempotency_id": "disk-db-prod-01",
                "team": "dba",
            }
        ],
    )
    wait_for(lambda: engine().jobs.get(result.id) and status(result.id)["status"] == "delivered")
    assert api.incidents()[0]["dedup_key"] == "disk-db-prod-01"
    client.close()
