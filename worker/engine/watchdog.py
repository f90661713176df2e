"""The watchdog: a canary sent through the whole pipeline at every ``WATCHDOG_INTERVAL``
(beat, then intake, a queue, a worker, a delivery step, as a page goes), which on arrival
calls ``WATCHDOG_URL``, an external dead man's switch. When Redis, the workers or beat
stop, the calls stop, and the external monitor pages through its own path.

A canary that arrives while the service sees itself failing (dead letters grew since the
previous canary) calls ``WATCHDOG_FAIL_URL`` instead, with the reason as its body.

Canaries go out on the ``pagerduty`` queue, the path pages take, but never reach
PagerDuty, take no rate-limit slot, are not listed by ``gds-notify jobs`` and count in no
notification metric (only ``gds_notify_watchdog_pings_total``).
"""

from __future__ import annotations

import logging
import time
import uuid

from worker.channels import Channel
from worker.engine import keys, stats
from worker.engine.jobs import oldest_undelivered
from worker.engine.runtime import Engine

logger = logging.getLogger(__name__)

#: How long a canary's job record is kept: enough to look into one that did not arrive.
RECORD_TTL_SECONDS = 3600


def send_canary(engine: Engine) -> str | None:
    """Queue a canary; its job id (None when no ``WATCHDOG_URL`` is set)."""
    if engine.settings.watchdog_url is None:
        return None
    job_id = "canary-" + uuid.uuid4().hex
    payload = {
        "job_id": job_id,
        "channel": Channel.PAGERDUTY.value,
        "action": "canary",
        "enqueued_at": time.time(),
    }
    engine.jobs.create(
        job_id,
        channels=[Channel.PAGERDUTY],
        action="canary",
        source="watchdog",
        payloads={Channel.PAGERDUTY: payload},
        listed=False,
        ttl=RECORD_TTL_SECONDS,
    )
    return job_id


def verdict(engine: Engine, sent_at: float | None = None) -> str | None:
    """Why the service sees itself failing now, or None. Any of: dead letters written since
    the previous canary (counted as written: a replay or purge meanwhile hides none); a
    page still undelivered ``WATCHDOG_LATE_PAGE_SECONDS`` after it was accepted (PagerDuty
    failing or throttling, retries piling up: what GdsNotifyPagesLate says, heard here
    through the external monitor's own path); this canary itself on its way for longer than
    ``WATCHDOG_INTERVAL`` since ``sent_at`` (a backlog on the page queue: it keeps
    arriving, one per interval, only late)."""
    written = [stats.count("dead_lettered", c)[0] for c in keys.DEAD_LETTER_CHANNELS]
    pipe = engine.redis.pipeline()
    pipe.hmget(keys.STATS, written)
    pipe.get(keys.WATCHDOG_DEAD_SEEN)
    counts, before = pipe.execute()
    now = int(sum(float(c) for c in counts if c is not None))
    engine.redis.set(keys.WATCHDOG_DEAD_SEEN, now)
    grew = now - int(before) if before is not None else 0
    reasons = []
    if grew > 0:
        letters = f"{grew} new dead letter{'' if grew == 1 else 's'}"
        reasons.append(f"{letters} since the previous canary")
    late = oldest_undelivered(engine.redis, engine.workers.now())[Channel.PAGERDUTY.value]
    if late > engine.settings.watchdog_late_page_seconds:
        reasons.append(f"a page accepted {late:.0f} s ago is not delivered yet")
    if sent_at is not None:
        # The host clocks of beat and this worker: a skew of seconds is far inside this.
        took = time.time() - sent_at
        if took > engine.settings.watchdog_interval:
            reasons.append(f"this canary took {took:.0f} s to come through (pages wait as long)")
    return "; ".join(reasons) or None


def arrived(engine: Engine, sent_at: float | None = None) -> tuple[str, str | None]:
    """A canary (sent at ``sent_at``) came through: call the watchdog. Returns the result
    (``ok`` or ``fail``) and the reason for a fail. Raises the pinger's error when the
    watchdog cannot be reached (counted as ``error``)."""
    settings = engine.settings
    # It came through: what gds_notify_watchdog_age_seconds measures, whether or not the
    # monitor can be told (a call that fails counts as an `error` ping).
    stats.stamp(engine.redis, keys.WATCHDOG_LAST)
    reason = verdict(engine, sent_at)
    if reason is not None and settings.watchdog_fail_url is None:
        logger.warning("watchdog: %s (no WATCHDOG_FAIL_URL to say so)", reason)
    failing = reason is not None and settings.watchdog_fail_url is not None
    url = settings.watchdog_fail_url if failing else settings.watchdog_url
    if url is None:  # WATCHDOG_URL was unset after this canary left
        return "off", reason
    try:
        engine.providers.watchdog().ping(url, body=reason if failing and reason else "")
    except Exception:
        stats.add(engine.redis, [stats.count("watchdog_pings", "error")])
        raise
    result = "fail" if failing else "ok"
    stats.add(engine.redis, [stats.count("watchdog_pings", result)])
    return result, reason
