"""The sandbox's web application: the emulated Events API plus its inspection endpoints.

=====================================  ==============================================
``POST /v2/enqueue``                   alert events (trigger / acknowledge / resolve)
``POST /v2/change/enqueue``            change events
``GET  /sandbox/incidents``            incidents (``?status=``, ``?dedup_key=``)
``GET  /sandbox/events``               every request with time, body and answer
                                       (``?limit=N``)
``GET|POST|DELETE /sandbox/faults``    the fault plan (see :mod:`sandbox.faults`)
``GET|POST /sandbox/settings``         rate_limit, rate_window, retry_after, strict_keys
                                       (``[]`` or ``null``: any well-formed key)
``GET  /sandbox/messages``             mail the SMTP sink kept (``?to=``, ``?message_id=``)
``GET  /sandbox/smtp``                 SMTP sink counters (connections, messages)
``POST /sandbox/smtp/refuse``          refuse given recipients at RCPT with given codes
``GET|POST|DELETE /sandbox/smtp/faults``  the SMTP sink's fault plan
``GET|POST /ping/{check}[/fail]``      a watchdog's dead man's switch (sandbox.ping_sink)
``GET  /sandbox/pings``                the pings it received (``?check=``)
``POST /sandbox/reset``                forget everything, clear faults
``GET  /``                             the HTML page
=====================================  ==============================================
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import ValidationError

from sandbox.faults import FaultInjector, FaultPlan
from sandbox.page import render_index, render_messages
from sandbox.pagerduty_emulator import EmulatorOptions, PagerDutyEmulator
from sandbox.ping_sink import PingSink
from sandbox.smtp_sink import Mailbox

EMULATOR = web.AppKey("emulator", PagerDutyEmulator)
MAILBOX = web.AppKey("mailbox", Mailbox)
PINGS = web.AppKey("pings", PingSink)


def _bad_request(message: str, errors: list[Any] | None = None) -> web.Response:
    return web.json_response({"error": message, "errors": errors or []}, status=400)


async def _json_body(request: web.Request) -> dict[str, Any] | web.Response:
    try:
        body = await request.json()
    except ValueError:
        return _bad_request("body must be JSON")
    if not isinstance(body, dict):
        return _bad_request("body must be a JSON object")
    return body


async def incidents(request: web.Request) -> web.Response:
    emulator = request.app[EMULATOR]
    return web.json_response(
        emulator.incidents.snapshot(
            status=request.query.get("status"), dedup_key=request.query.get("dedup_key")
        )
    )


async def events(request: web.Request) -> web.Response:
    try:
        limit = int(request.query.get("limit", "0")) or None
    except ValueError:
        return _bad_request("limit must be a whole number")
    return web.json_response(request.app[EMULATOR].events(limit))


def _faults_of(request: web.Request) -> FaultInjector:
    if request.path.startswith("/sandbox/smtp/"):
        return request.app[MAILBOX].faults
    return request.app[EMULATOR].faults


async def get_faults(request: web.Request) -> web.Response:
    return web.json_response(_faults_of(request).describe())


async def set_faults(request: web.Request) -> web.Response:
    body = await _json_body(request)
    if isinstance(body, web.Response):
        return body
    try:
        plan = FaultPlan.model_validate(body)
    except ValidationError as exc:
        return _bad_request(
            "invalid fault plan", exc.errors(include_url=False, include_context=False)
        )
    faults = _faults_of(request)
    faults.set_plan(plan)
    return web.json_response(faults.describe())


async def clear_faults(request: web.Request) -> web.Response:
    faults = _faults_of(request)
    faults.clear()
    return web.json_response(faults.describe())


async def messages(request: web.Request) -> web.Response:
    return web.json_response(
        request.app[MAILBOX].messages(
            to=request.query.get("to"), message_id=request.query.get("message_id")
        )
    )


async def smtp_stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[MAILBOX].stats())


async def smtp_refuse(request: web.Request) -> web.Response:
    """``{"recipients": {"address": 550, ...}}``: refuse these at RCPT from now on."""
    body = await _json_body(request)
    if isinstance(body, web.Response):
        return body
    recipients = body.get("recipients")
    if not isinstance(recipients, dict) or not all(
        isinstance(code, int) and 400 <= code <= 599 for code in recipients.values()
    ):
        return _bad_request("recipients must map addresses to SMTP codes 400-599")
    mailbox = request.app[MAILBOX]
    mailbox.refused_recipients = {str(k): int(v) for k, v in recipients.items()}
    return web.json_response({"recipients": mailbox.refused_recipients})


async def get_settings(request: web.Request) -> web.Response:
    return web.json_response(request.app[EMULATOR].describe())


async def set_settings(request: web.Request) -> web.Response:
    """Change the settings given, keep the others: ``rate_limit`` (0: no limit),
    ``rate_window`` (seconds), ``retry_after`` (true/false), ``strict_keys`` (a list of the
    only routing keys accepted; ``null`` or ``[]`` accepts any well-formed key). Unknown or
    invalid settings get a 400 naming them."""
    body = await _json_body(request)
    if isinstance(body, web.Response):
        return body
    unknown = set(body) - {"rate_limit", "rate_window", "retry_after", "strict_keys"}
    if unknown:
        return _bad_request(f"unknown settings: {', '.join(sorted(unknown))}")
    try:
        request.app[EMULATOR].configure(body)
    except (TypeError, ValueError) as exc:
        return _bad_request(f"invalid setting: {exc}")
    return web.json_response(request.app[EMULATOR].describe())


async def reset(request: web.Request) -> web.Response:
    request.app[EMULATOR].reset()
    request.app[MAILBOX].reset()
    request.app[PINGS].reset()
    return web.json_response({"status": "reset"})


async def index(request: web.Request) -> web.Response:
    emulator = request.app[EMULATOR]
    page = render_index(
        emulator.incidents.snapshot(),
        len(emulator.events()),
        emulator.describe(),
        render_messages(request.app[MAILBOX].messages()),
    )
    return web.Response(text=page, content_type="text/html")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def create_app(
    options: EmulatorOptions | None = None, mailbox: Mailbox | None = None
) -> web.Application:
    """A fresh sandbox application with its own state (and the SMTP sink's mailbox)."""
    app = web.Application(client_max_size=8 * 1024 * 1024)
    emulator = PagerDutyEmulator(options)
    app[EMULATOR] = emulator
    app[MAILBOX] = mailbox if mailbox is not None else Mailbox()
    app[PINGS] = PingSink()
    app[PINGS].routes(app)
    app.router.add_post("/v2/enqueue", emulator.handle)
    app.router.add_post("/v2/change/enqueue", emulator.handle)
    app.router.add_get("/sandbox/incidents", incidents)
    app.router.add_get("/sandbox/events", events)
    app.router.add_get("/sandbox/faults", get_faults)
    app.router.add_post("/sandbox/faults", set_faults)
    app.router.add_delete("/sandbox/faults", clear_faults)
    app.router.add_get("/sandbox/settings", get_settings)
    app.router.add_post("/sandbox/settings", set_settings)
    app.router.add_get("/sandbox/messages", messages)
    app.router.add_get("/sandbox/smtp", smtp_stats)
    app.router.add_post("/sandbox/smtp/refuse", smtp_refuse)
    app.router.add_get("/sandbox/smtp/faults", get_faults)
    app.router.add_post("/sandbox/smtp/faults", set_faults)
    app.router.add_delete("/sandbox/smtp/faults", clear_faults)
    app.router.add_post("/sandbox/reset", reset)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/", index)
    return app
