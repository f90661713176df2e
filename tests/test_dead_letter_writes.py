"""Dead letters that cannot be written (Redis failing at that moment): what they were
letters of is never lost. A real worker and a real Redis; the failure is injected at the
one write, the dead-letter store's (or caused for real: letters changing under each of its
transactions)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import pytest
import redis

import tasks
from sandbox import SandboxServer
from tests.api_server import ApiServer
from tests.conftest import SandboxClient, wait_for
from tests.test_alertmanager import alert, webhook
from tests.test_drills import _altered, _envelope
from worker.celery_app import app
from worker.engine import keys
from worker.engine.dead_letters import WRITE_ATTEMPTS, DeadLetterNotKeptError, DeadLetters
from worker.engine.runtime import engine
from worker.providers.base import Notification


def failing_first_write(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make the dead-letter store's first write under each id raise
    ``redis.ConnectionError``, as Redis dropping the connection at that moment would;
    returns the reasons of the writes that failed."""
    letters = engine().dead_letters
    real: Callable[..., Any] = letters.add
    failed: list[str] = []
    seen: set[str] = set()

    def add(**letter: Any) -> Any:
        if letter["entry_id"] not in seen:
            seen.add(letter["entry_id"])
            failed.append(letter["reason"])
            raise redis.ConnectionError("injected: connection lost while writing")
        return real(**letter)

    monkeypatch.setattr(letters, "add", add)
    return failed


#: A message for each way the consumer finds one no task can run.
POISON = {
    "an unknown task": ("celery", _envelope("no.such.task", [{}])),
    "a body that is not UTF-8 JSON": ("celery", _envelope("notify", [], body=b"\xff\xfe{")),
    "a content type not accepted": (
        "celery",
        json.dumps(
            {
                **json.loads(_envelope("notify", [])),
                "content-type": "application/x-python-serialize",
            }
        ),
    ),
    "a task name that is not a string": ("celery", _altered(["notify"], [{}])),
}


def test_a_poison_message_whose_letter_fails_for_itself_is_kept_as_text_not_put_back(
    service_env: SandboxServer, celery_worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A letter that fails for what it holds, not for Redis, would fail again each time the
    message came back: put back, it would go round for ever. Its text is kept instead."""
    letters = engine().dead_letters
    real: Callable[..., Any] = letters.add
    refused: list[str] = []

    def add(**letter: Any) -> Any:
        if "unkeepable" not in letter["payload"]:
            refused.append(letter["entry_id"])
            raise ValueError("injected: this payload cannot be written")
        return real(**letter)

    monkeypatch.setattr(letters, "add", add)
    queue, message = POISON["an unknown task"]
    engine().redis.lpush(queue, message)
    [letter] = wait_for(lambda: engine().dead_letters.list(), timeout=20)
    wait_for(lambda: engine().redis.hlen("unacked") == 0 and engine().redis.llen(queue) == 0)
    assert len(refused) == 1  # taken once: not put back
    assert letter["id"].startswith("poison-")
    assert letter["reason"] == "unknown task 'no.such.task': no worker task has this name"
    assert "no.such.task" in letter["payload"]["unkeepable"]


@pytest.mark.parametrize("kind", sorted(POISON))
def test_a_poison_message_whose_dead_letter_cannot_be_written_is_put_back_and_kept_later(
    kind: str, service_env: SandboxServer, celery_worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Acknowledged although its letter was not written, it would be gone: no letter, no
    message. Put back, it is dead-lettered when a worker takes it again."""
    failed = failing_first_write(monkeypatch)
    queue, message = POISON[kind]
    engine().redis.lpush(queue, message)
    [letter] = wait_for(lambda: engine().dead_letters.list(), timeout=20)
    assert len(failed) == 1  # the first write failed, the message came back for a second
    assert letter["reason"] == failed[0]
    assert letter["id"] == json.loads(message)["headers"]["id"]
    wait_for(lambda: engine().redis.hlen("unacked") == 0 and engine().redis.llen(queue) == 0)
    assert engine().dead_letters.count() == 1


class Contended:
    """A Redis client whose transactions on the dead letters lose their race, for real,
    ``rounds`` times: right after each WATCH, another connection changes the letters' hash
    (a field written and removed), so Redis aborts the EXEC, as under writers racing."""

    def __init__(self, client: redis.Redis, rounds: int) -> None:
        self.client = client
        self.rounds = rounds
        self.lost = 0

    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        pipe: Any = self.client.pipeline(*args, **kwargs)
        watch = pipe.watch

        def watched(*names: Any) -> Any:
            answer = watch(*names)
            if self.rounds > 0:
                self.rounds -= 1
                self.lost += 1
                with self.client.pipeline() as rival:
                    rival.hset(keys.DEAD_LETTERS, "rival", "1")
                    rival.hdel(keys.DEAD_LETTERS, "rival")
                    rival.execute()
            return answer

        pipe.watch = watched
        return pipe

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


def contended(monkeypatch: pytest.MonkeyPatch) -> Contended:
    """The engine's dead letters, losing every race of their next write (and only that)."""
    client = Contended(engine().redis, WRITE_ATTEMPTS)
    monkeypatch.setattr(engine(), "dead_letters", DeadLetters(client))  # type: ignore[arg-type]
    return client


def test_dead_letter_not_kept_is_raised_after_every_attempt_lost_and_keeps_nothing(
    service_env: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = contended(monkeypatch)
    with pytest.raises(DeadLetterNotKeptError, match=f"each of {WRITE_ATTEMPTS} attempts"):
        engine().dead_letters.add(
            entry_id="x", job_id=None, channel="intake", reason="r", payload={}
        )
    assert client.lost == WRITE_ATTEMPTS
    assert engine().dead_letters.count() == 0
    assert engine().redis.hlen(keys.DEAD_LETTERS) == 0
    # The next write, uncontended, keeps it.
    assert engine().dead_letters.add(
        entry_id="x", job_id=None, channel="intake", reason="r", payload={}
    )
    assert engine().dead_letters.count() == 1


def test_a_dead_page_whose_letter_is_not_kept_is_put_back_and_dead_lettered_when_taken_again(
    service_env: SandboxServer,
    celery_worker: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """PagerDuty refuses the page for good (400), and its dead letter cannot be kept: the
    task counts it as Redis failing, not the job's, and puts its message back; taken again
    (the page refused again), the job ends dead-lettered, its letter kept."""
    api = SandboxClient(service_env)
    api.settings(strict_keys=["SOMEOTHERKEY00000000000000000000"])
    client = contended(monkeypatch)
    caplog.set_level(logging.WARNING, "worker.task_base")
    job = tasks.enqueue(Notification(recipient="db-2", subject="Disk full", priority="critical"))
    wait_for(lambda: (engine().jobs.get(job) or {}).get("status") == "dead-lettered", timeout=40)
    assert client.lost == WRITE_ATTEMPTS
    put_back = [r.getMessage() for r in caplog.records if "message put back" in r.getMessage()]
    assert len(put_back) == 1, put_back
    assert f"each of {WRITE_ATTEMPTS} attempts" in put_back[0]
    [letter] = engine().dead_letters.list()
    assert letter["job_id"] == job
    assert "Invalid routing key" in letter["reason"]
    assert len(api.events()) == 2  # refused once more when taken again
    api.close()


def test_a_notify_whose_letter_is_not_kept_is_put_back_and_dead_lettered_when_taken_again(
    service_env: SandboxServer, celery_worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = contended(monkeypatch)
    sent = app.send_task("notify", args=[{"recipient": 5, "subject": "s"}])
    [letter] = wait_for(lambda: engine().dead_letters.list(), timeout=30)
    assert client.lost == WRITE_ATTEMPTS
    assert letter["id"] == sent.id
    assert "recipient" in letter["reason"]
    wait_for(lambda: engine().redis.hlen("unacked") == 0 and engine().redis.llen("celery") == 0)


def test_an_alert_whose_letter_is_not_kept_is_answered_503_for_alertmanager_to_send_again(
    api_server: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Alertmanager retries a 5xx, never a 4xx or a 202: an alert that could not become a
    notification, whose letter was not kept, must not be answered as taken."""
    monkeypatch.setenv("ROUTING_RULES", '[{"alert_name": "Queue*", "channels": ["email"]}]')
    from config.settings import get_settings

    get_settings.cache_clear()
    hook = webhook(alert(fingerprint="beef000000000009", alertname="QueueSlow"))
    client = contended(monkeypatch)
    with api_server.client() as http:
        refused = http.post("/v1/alertmanager", json=hook)
        assert refused.status_code == 503, refused.text
        assert refused.headers["Retry-After"]
        assert client.lost == WRITE_ATTEMPTS
        assert engine().dead_letters.count() == 0
        again = http.post("/v1/alertmanager", json=hook)
    assert again.status_code == 202, again.text
    [kept] = again.json()["alerts"]
    assert engine().dead_letters.get(kept["dead_letter"]) is not None
