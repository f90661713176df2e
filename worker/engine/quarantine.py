"""Keeping what the broker hands us but no task can run: a bounded copy in the dead
letters, with the reason, so nothing vanishes and the consumer carries on.

Used at three depths of the Celery layer: the broker transport (worker/broker_transport.py)
for raw queue items that are not messages at all, the consumer (worker/consumer.py) for
messages no task can run (a body that cannot be decoded, no such task, a shape Celery
rejects or cannot take), and the task request (worker/task_request.py) for a ``notify``
that expired after a worker took it.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from typing import Any

import redis

from worker.engine.dead_letters import DeadLetters

logger = logging.getLogger(__name__)

#: How much of a poison message is kept (it may be huge, or hostile).
KEEP_CHARS = 65_536

#: A task id kept as a letter's id: what a person can copy from Flower and type.
TYPEABLE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,199}")

#: Dead letters of this channel hold messages, not jobs: they cannot be replayed.
BROKER_CHANNEL = "broker"


def excerpt(value: Any) -> str:
    """The start of ``value`` as text, at most ``KEEP_CHARS`` characters."""
    if isinstance(value, bytes):
        return value[:KEEP_CHARS].decode("utf-8", errors="replace")
    text = value if isinstance(value, str) else repr(value)
    return text[:KEEP_CHARS]


def message_copy(message: Any) -> dict[str, Any]:
    """What is kept of a kombu message: headers, content type, routing, the body's start."""
    headers = getattr(message, "headers", None) or {}
    return {
        "headers": {k: repr(v)[:512] for k, v in dict(headers).items()},
        "content_type": getattr(message, "content_type", None),
        "delivery_info": repr(getattr(message, "delivery_info", None))[:512],
        "body": excerpt(getattr(message, "body", b"")),
    }


def carried_id(headers: Any) -> Any:
    """The task id in a message's headers (a kombu message's, or a raw envelope's), if any."""
    return headers.get("id") if isinstance(headers, dict) else None


def quarantine(
    dead_letters: DeadLetters, reason: str, payload: Any, message_id: Any = None
) -> bool:
    """Dead-letter an unrunnable message; never raises (the consumer must survive it).
    True when it is kept (now, or before: the same message again); False when it could
    not be written (Redis failing): the caller puts the message back rather than
    acknowledging it, so it is dead-lettered when it is taken again, never lost.

    The letter is kept under the task id the message carries, the one Flower shows with
    its failure, so ``dlq show`` and ``status`` find it by that id; under a fresh
    ``poison-`` id when the message has none a person could type, or when any letter
    holds that id already (a job's, or another message's: a producer reusing ids
    replaces nothing)."""
    try:
        ids = [message_id] if _typeable(message_id) else []
        if ids and _kept_already(dead_letters, message_id, payload):
            # The same message again: its worker died between keeping it and acknowledging
            # it, and the broker handed it back.
            logger.warning("poison message %s seen again: kept once", message_id)
            return True
        for entry_id in [*ids, f"poison-{uuid.uuid4().hex}"]:
            kept = dead_letters.add(
                entry_id=entry_id,
                job_id=None,
                channel=BROKER_CHANNEL,
                reason=reason[:1000],
                payload=payload,
                only_new=True,
            )
            if kept is not None:
                break
    except redis.RedisError:
        logger.exception("could not dead-letter a poison message (%s)", reason)
        return False
    except Exception:
        # Not Redis but the letter itself: it would fail the same way each time the message
        # came back, and putting it back would go round for ever. Its text is kept instead.
        logger.exception("could not dead-letter a poison message as it is (%s)", reason)
        return _kept_as_text(dead_letters, reason, payload)
    logger.warning("poison message dead-lettered: %s", reason[:1000])
    return True


def _kept_as_text(dead_letters: DeadLetters, reason: str, payload: Any) -> bool:
    """The letter of a message whose own letter could not be written, holding the start of
    its text; False only when Redis failed (the caller puts the message back)."""
    try:
        dead_letters.add(
            entry_id=f"poison-{uuid.uuid4().hex}",
            job_id=None,
            channel=BROKER_CHANNEL,
            reason=reason[:1000],
            payload={"unkeepable": excerpt(payload)},
            only_new=True,
        )
    except redis.RedisError:
        logger.exception("could not dead-letter a poison message (%s)", reason)
        return False
    except Exception:
        logger.exception("could not keep even the text of a poison message: dropped (%s)", reason)
    return True


def _kept_already(dead_letters: DeadLetters, entry_id: str, payload: Any) -> bool:
    held = dead_letters.get(entry_id)
    if held is None or held.get("channel") != BROKER_CHANNEL:
        return False
    return bool(held.get("payload") == json.loads(json.dumps(payload, default=str)))


def _typeable(message_id: Any) -> bool:
    return isinstance(message_id, str) and bool(TYPEABLE_ID.fullmatch(message_id))
