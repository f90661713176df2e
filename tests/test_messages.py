"""The delivery messages the engine writes itself (worker/engine/messages.py) are the
messages Celery's own client writes, and accepting a job queues them with its record in
one atomic step."""

from __future__ import annotations

import base64
import json
from typing import Any

from config.queues import PAGERDUTY_QUEUE
from worker.channels import Channel
from worker.engine.messages import delivery_message
from worker.engine.runtime import engine

PAYLOAD = {"job_id": "j1", "channel": "pagerduty", "action": "trigger", "enqueued_at": 1.5}


def _decoded(envelope: dict[str, Any]) -> Any:
    return json.loads(base64.b64decode(envelope["body"]))


def test_a_delivery_message_is_the_one_celery_would_write(service_env: Any) -> None:
    from worker import app

    app.send_task(
        "deliver.pagerduty",
        args=[PAYLOAD],
        queue=PAGERDUTY_QUEUE,
        routing_key=PAGERDUTY_QUEUE,
        task_id="j1-pagerduty",
    )
    celerys = json.loads(str(engine().redis.rpop(PAGERDUTY_QUEUE)))
    queue, text = delivery_message(Channel.PAGERDUTY, "j1-pagerduty", PAYLOAD)
    ours = json.loads(text)
    assert queue == PAGERDUTY_QUEUE
    assert ours.keys() == celerys.keys()
    assert _decoded(ours) == _decoded(celerys)
    for part in ("content-type", "content-encoding"):
        assert ours[part] == celerys[part]
    # Everything but who sent it (origin) is what Celery writes.
    assert ours["headers"].keys() == celerys["headers"].keys()
    for name, value in celerys["headers"].items():
        if name != "origin":
            assert ours["headers"][name] == value, name
    # Fresh per message, as Celery makes them: the reply queue and the delivery tag.
    assert ours["properties"].keys() == celerys["properties"].keys()
    for name, value in celerys["properties"].items():
        if name not in ("reply_to", "delivery_tag"):
            assert ours["properties"][name] == value, name


def _create(job_id: str, idempotency: str | None) -> str | None:
    return engine().jobs.create(
        job_id,
        channels=[Channel.PAGERDUTY],
        action="trigger",
        source="test",
        payloads={Channel.PAGERDUTY: PAYLOAD | {"job_id": job_id}},
        idempotency=(idempotency, "claim") if idempotency else None,
    )


def test_accepting_writes_the_record_and_the_message_or_nothing(service_env: Any) -> None:
    r = engine().redis
    assert _create("first", "alert-1") is None
    assert r.llen(PAGERDUTY_QUEUE) == 1
    assert r.zcard("gds:jobs:open") == 1
    # A duplicate idempotency id: nothing of the second job is written or queued.
    assert _create("second", "alert-1") == "first"
    assert not r.exists("gds:job:second")
    assert r.llen(PAGERDUTY_QUEUE) == 1
    assert r.zcard("gds:jobs:open") == 1
    # The same job accepted again (a redelivered `notify`): its record stays as it was,
    # and no second message is queued.
    created = r.hget("gds:job:first", "created_at")
    assert _create("first", "alert-1") is None
    assert _create("first", None) is None
    assert r.hget("gds:job:first", "created_at") == created
    assert r.llen(PAGERDUTY_QUEUE) == 1
    envelope = json.loads(str(r.rpop(PAGERDUTY_QUEUE)))
    assert envelope["headers"]["id"] == "first-pagerduty"
    assert _decoded(envelope)[0] == [PAYLOAD | {"job_id": "first"}]
