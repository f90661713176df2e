"""Dead letters that cannot be written (Redis failing at that moment): what they were
letters of is never lost. A real worker and a real Redis; the failure is injected at the
one write, the dead-letter store's."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import redis

from sandbox import SandboxServer
from tests.conftest import wait_for
from tests.test_drills import _altered, _envelope
from worker.engine.runtime import engine


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
