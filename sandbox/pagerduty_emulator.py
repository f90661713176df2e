"""The Events API v2 emulator: ``POST /v2/enqueue`` and ``POST /v2/change/enqueue``.

It answers as PagerDuty does (see ../shared/reference/pagerduty-events-v2.md): 202 with a
dedup_key, 400 ``invalid event`` listing every error, plain-text ``Invalid routing key`` in
strict mode, 429 from a per-key sliding window (Retry-After only when switched on), and
whatever the fault plan says first. Every request is recorded with its answer.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from aiohttp import web

from sandbox.faults import Fault, FaultInjector
from sandbox.incidents import IncidentStore, shown_key
from sandbox.ratelimit import SlidingWindowLimiter
from sandbox.validation import check_routing_key, validate_alert_event, validate_change_event


@dataclass
class EmulatorOptions:
    """How the emulator behaves; all of it can be changed at run time over HTTP."""

    rate_limit: int = 120  # events per key per window; 0 turns the limit off
    rate_window: float = 60.0  # seconds
    retry_after: bool = False  # send Retry-After on 429 (PagerDuty documents none)
    strict_keys: frozenset[str] | None = None  # known routing keys; None or empty: any valid one
    max_events: int = 50_000  # how many requests the log keeps


class PagerDutyEmulator:
    """State and request handling for the emulated Events API."""

    def __init__(self, options: EmulatorOptions | None = None) -> None:
        self.options = options or EmulatorOptions()
        self.incidents = IncidentStore()
        self.limiter = SlidingWindowLimiter(self.options.rate_limit, self.options.rate_window)
        self.faults = FaultInjector()
        self._events: deque[dict[str, Any]] = deque(maxlen=self.options.max_events)
        self._events_lock = threading.Lock()
        self._sequence = 0

    # -- configuration -----------------------------------------------------------------

    def configure(self, changes: dict[str, Any]) -> None:
        """Apply run-time changes: rate_limit, rate_window, retry_after, strict_keys.

        ``strict_keys`` is a list of routing keys; ``None`` or ``[]`` turns strict mode off.
        A value of the wrong kind raises :class:`ValueError` naming its setting, and nothing
        is changed.
        """
        keys = changes.get("strict_keys")
        if keys is not None and (
            not isinstance(keys, list) or not all(isinstance(k, str) for k in keys)
        ):
            raise ValueError(
                "strict_keys must be a list of routing keys, or null or [] to accept "
                "any well-formed key"
            )
        limit = _number(changes, "rate_limit", "a whole number, 0 for no limit", whole=True)
        window = _number(changes, "rate_window", "a number of seconds above 0", above=0)
        retry_after = changes.get("retry_after")
        if "retry_after" in changes and not isinstance(retry_after, bool):
            raise ValueError(f"retry_after must be true or false, not {retry_after!r}")
        if "strict_keys" in changes:
            self.options.strict_keys = frozenset(keys) if keys else None
        if limit is not None:
            self.options.rate_limit = self.limiter.limit = int(limit)
        if window is not None:
            self.options.rate_window = self.limiter.window = float(window)
        if retry_after is not None:
            self.options.retry_after = retry_after

    def describe(self) -> dict[str, Any]:
        strict = self.options.strict_keys
        return {
            "rate_limit": self.options.rate_limit,
            "rate_window": self.options.rate_window,
            "retry_after": self.options.retry_after,
            "strict_keys": sorted(shown_key(k) for k in strict) if strict else None,
        }

    def reset(self) -> None:
        self.incidents.clear()
        self.limiter.reset()
        self.faults.clear()
        with self._events_lock:
            self._events.clear()

    # -- the log -----------------------------------------------------------------------

    def events(self, limit: int | None = None) -> list[dict[str, Any]]:
        with self._events_lock:
            items = list(self._events)
        return items[-limit:] if limit else items

    def _record(
        self, path: str, body: Any, status: int | None, answer: Any, fault: Fault | None
    ) -> None:
        if isinstance(body, dict) and isinstance(body.get("routing_key"), str):
            body = {**body, "routing_key": shown_key(body["routing_key"])}
        with self._events_lock:
            self._sequence += 1
            self._events.append(
                {
                    "seq": self._sequence,
                    "at": time.time(),
                    "path": path,
                    "body": body,
                    "status": status,
                    "answer": answer,
                    "fault": fault.model_dump(exclude_defaults=True) if fault else None,
                }
            )

    # -- request handling --------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        path = request.path
        fault = self.faults.next()
        if fault is not None:
            if fault.delay:
                await asyncio.sleep(fault.delay)
            if fault.drop:
                taken = self._answer(path, raw)[0] if fault.accept else None
                self._record(path, _loads(raw), taken, "connection dropped", fault)
                return _drop(request)
            if fault.status is not None:
                headers = dict(fault.headers)
                if fault.retry_after:
                    headers["Retry-After"] = fault.retry_after
                answer = fault.body if fault.body is not None else _fault_answer(fault.status)
                self._record(path, _loads(raw), fault.status, answer, fault)
                if isinstance(answer, dict):
                    return web.json_response(answer, status=fault.status, headers=headers)
                return web.Response(
                    status=fault.status,
                    text=answer,
                    headers=headers,
                    content_type="application/json" if answer.startswith("{") else "text/plain",
                )
        status, answer, headers = self._answer(path, raw)
        self._record(path, _loads(raw), status, answer, fault)
        if isinstance(answer, dict):
            return web.json_response(answer, status=status, headers=headers)
        return web.Response(status=status, text=answer, headers=headers)

    def _answer(self, path: str, raw: bytes) -> tuple[int, Any, dict[str, str]]:
        event = _loads(raw)
        if not isinstance(event, dict):
            return (
                400,
                {
                    "status": "Unrecognized object",
                    "message": "Event object format is unrecognized",
                    "errors": ["JSON parse error"],
                },
                {},
            )
        key = event.get("routing_key")
        strict = self.options.strict_keys
        if strict and not check_routing_key(event) and key not in strict:
            return 400, "Invalid routing key", {}
        wait = self.limiter.acquire(str(key))
        if wait is not None:
            headers = {"Retry-After": self.limiter.header_value(wait)}
            return 429, "", headers if self.options.retry_after else {}
        change = path.endswith("/change/enqueue")
        validate = validate_change_event if change else validate_alert_event
        errors = validate(event, len(raw))
        if errors:
            return (
                400,
                {"status": "invalid event", "message": "Event object is invalid", "errors": errors},
                {},
            )
        if change:
            return 202, {"status": "success", "message": "Change event processed"}, {}
        dedup_key = event.get("dedup_key") or uuid.uuid4().hex
        self.incidents.apply(str(key), str(event["event_action"]), dedup_key, event)
        return 202, {"status": "success", "message": "Event processed", "dedup_key": dedup_key}, {}


def _loads(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return raw.decode("utf-8", "replace")[:2000]


def _fault_answer(status: int) -> dict[str, Any] | str:
    """What PagerDuty would send with ``status``: its ``invalid event`` shape for a 400,
    nothing for a 429, else its ``{"status", "message"}`` shape with the reason phrase."""
    if status == 429:
        return ""
    if status == 400:
        return {
            "status": "invalid event",
            "message": "Event object is invalid",
            "errors": ["Fault injected by the sandbox"],
        }
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = f"HTTP {status}"
    return {"status": "error", "message": reason}


def _drop(request: web.Request) -> web.StreamResponse:
    """Close the TCP connection with no answer at all, as a crashed load balancer would."""
    transport = request.transport
    if transport is not None:
        transport.abort()
    raise asyncio.CancelledError  # aiohttp ends the handler quietly on a dead connection


def _number(
    changes: dict[str, Any], name: str, wanted: str, whole: bool = False, above: float = -1
) -> float | None:
    """``changes[name]`` when it is a number of the kind ``wanted`` says (at least 0, above
    ``above``), None when absent; ValueError naming the setting otherwise."""
    if name not in changes:
        return None
    value = changes[name]
    kinds = int if whole else int | float
    if (
        isinstance(value, bool)
        or not isinstance(value, kinds)
        or not math.isfinite(value)
        or value < 0
        or value <= above
    ):
        raise ValueError(f"{name} must be {wanted}, not {value!r}")
    return float(value)
