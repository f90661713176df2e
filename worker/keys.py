"""Every Redis key this service writes, named in one place. Nothing secret is ever part of
a key: routing keys appear only as a short hash."""

from __future__ import annotations

import hashlib

PREFIX = "gds:"


def digest(secret_or_id: str, length: int = 24) -> str:
    return hashlib.sha256(secret_or_id.encode("utf-8")).hexdigest()[:length]


def job(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}"


def job_attempts(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}:attempts"


def idempotency(idempotency_id: str) -> str:
    return f"{PREFIX}idem:{digest(idempotency_id, 40)}"


DEAD_LETTERS = f"{PREFIX}dlq"  # hash: entry id -> JSON record
DEAD_LETTER_INDEX = f"{PREFIX}dlq:index"  # sorted set: entry id by time of death
DUPLICATES = f"{PREFIX}stats:duplicates"  # counter


def pagerduty_pause(key_id: str) -> str:
    return f"{PREFIX}pd:pause:{key_id}"


RATE_LIMIT_NAMESPACE = f"{PREFIX}pd:rate"
