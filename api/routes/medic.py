"""Medic's API, so an existing Medic user switches by changing a URL: ``/heartbeat``,
``/service`` and ``/alerts`` answer in Medic's ``{"success", "message", "results"}`` shape
with its status codes.

Medic has no authentication, so its documented calls send no token: the same routes are
served under ``/medic/{key}`` (a token with the ``heartbeat`` scope in the path, as a ping
URL carries its key), and at the root for callers that send ``Authorization: Bearer``.

Statuses: ``UP`` is a heartbeat; ``DOWN`` is a failing one (it pages at the next check,
which it asks for at once); ``DEGRADED`` counts as alive — the service answers, worse than
it should — and is kept in the log for people to see, but does not page.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
)
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from api.auth import authorize, bearer_secret, calling_token, path_key, require
from api.errors import forbidden
from config.api_tokens import ApiToken
from config.catalogue import SLUG_PATTERN, ServiceSpec
from worker.engine.heartbeats import reports
from worker.engine.heartbeats.checker import read_states
from worker.engine.heartbeats.evaluation import iso
from worker.engine.heartbeats.registry import DEFAULT_TEAM, Registration, RegistryFullError
from worker.engine.heartbeats.store import HeartbeatInFutureError, Ping
from worker.engine.runtime import engine
from worker.validation import path, problem

#: Medic's priorities to ours (p1 critical ... p5 info), and back.
PRIORITY = {"p1": "P1", "p2": "P2", "p3": "P3", "p4": "P4", "p5": "P5"}
MEDIC_PRIORITY = {ours: theirs for theirs, ours in PRIORITY.items()}
#: Medic's heartbeat statuses: what each one records, and how the log shows it.
STATUS_KIND: dict[str, Literal["up", "fail"]] = {"UP": "up", "DEGRADED": "up", "DOWN": "fail"}
MAX_COUNT = 250

Model = TypeVar("Model", bound=BaseModel)


def medic(status: int, success: bool, message: str, results: Any = "") -> JSONResponse:
    """An answer in Medic's shape."""
    return JSONResponse(
        {"success": success, "message": message, "results": results}, status_code=status
    )


def refused(status: int, message: str) -> JSONResponse:
    return medic(status, False, message)


def _problems(exc: ValidationError) -> str:
    return "; ".join(f"{path(e['loc']) or 'body'}: {problem(e)}" for e in exc.errors())


#: What a body that is not a JSON object gets: Medic's documented calls send JSON.
JSON_TYPE = "Content-Type: application/json"
NOT_AN_OBJECT = f"body: must be a JSON object (sent with {JSON_TYPE})"


def _validated(model: type[Model], body: Any) -> Model | JSONResponse:
    """``body`` as ``model``, or Medic's 400 naming what is wrong. A JSON body sent without
    its content type (``curl -d``) is read as JSON all the same."""
    if isinstance(body, bytes | str):
        try:
            body = json.loads(body)
        except (ValueError, RecursionError) as exc:
            # Not JSON (or nested past what the parser builds): say so, not "not an object".
            why = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
            return refused(
                400, f"body: not valid JSON ({why}): send a JSON object, with {JSON_TYPE}"
            )
    if not isinstance(body, dict):
        return refused(400, NOT_AN_OBJECT)
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        return refused(400, _problems(exc))


def _unreadable(exc: RequestValidationError) -> str:
    """What FastAPI could not read, named as the caller wrote it (``maxCount``, not
    ``query.maxCount``)."""
    found = []
    for error in exc.errors():
        if error["type"] == "json_invalid":
            why = (error.get("ctx") or {}).get("error")
            found.append(f"body: not valid JSON ({why})" if why else "body: not valid JSON")
        else:
            found.append(f"{path(error['loc'][1:]) or 'body'}: {problem(error)}")
    return "; ".join(found)


def _caller_check(request: Request) -> None:
    """The check the route's dependency would have made of its caller (the key in the
    path, else the bearer), which FastAPI runs only after it has read the body: raises the
    same 401 or 403."""
    key = request.path_params.get("key")
    authorize(str(key) if key is not None else bearer_secret(request), "ping", rate=None)


class MedicRoute(APIRoute):
    """A route that answers a request FastAPI could not read (a body that is not JSON, a
    query parameter of the wrong type) in Medic's shape, as a 400, once its caller is
    known to hold a key: anyone else gets the 401 or 403 the route would give."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def medic_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                await run_in_threadpool(_caller_check, request)
                return refused(400, _unreadable(exc))
            except HTTPException as exc:
                cause = exc.__cause__
                if exc.status_code == 400 and isinstance(cause, UnicodeDecodeError):
                    await run_in_threadpool(_caller_check, request)
                    return refused(400, "body: not valid JSON (not UTF-8)")
                if exc.status_code == 400 and isinstance(cause, ValueError | RecursionError):
                    # A number of thousands of digits, or nesting past the recursion limit.
                    await run_in_threadpool(_caller_check, request)
                    deep = isinstance(cause, RecursionError)
                    why = "nested too deeply" if deep else str(cause)[:200]
                    return refused(400, f"body: not valid JSON ({why})")
                raise

        return medic_handler


class HeartbeatBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    heartbeat_name: str = Field(min_length=1, max_length=255)
    service_name: str | None = Field(default=None, max_length=255)
    status: str

    @field_validator("status")
    @classmethod
    def _status(cls, value: str) -> str:
        if value.strip().upper() not in STATUS_KIND:
            raise ValueError("must be UP, DOWN or DEGRADED")
        return value.strip().upper()


class ServiceBody(BaseModel):
    """``POST /service``: Medic's fields, its defaults, and ``max_duration`` besides."""

    model_config = ConfigDict(extra="ignore")

    heartbeat_name: str = Field(min_length=1, max_length=100)
    service_name: str = Field(min_length=1, max_length=255)
    environment: str | None = Field(default=None, min_length=1, max_length=50)
    alert_interval: float = Field(gt=0, le=43_200, description="Minutes before alerting.")
    threshold: int = Field(default=1, ge=1, le=10_000)
    team: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        description=f"The owning team: the token's own for a team token, else {DEFAULT_TEAM!r}.",
    )
    priority: str = "p3"
    runbook: str | None = None
    max_duration: float | None = Field(default=None, gt=0, description="Seconds a run may take.")

    @field_validator("priority")
    @classmethod
    def _priority(cls, value: str) -> str:
        if value.strip().lower() not in PRIORITY:
            raise ValueError("must be p1, p2, p3, p4 or p5")
        return value.strip().lower()


_BOOL = TypeAdapter(bool)


def _flag(value: Any) -> bool:
    # What pydantic reads as a bool (0/1, true/false, "yes"/"no", ...), with one message
    # for the field rather than one for each type of a union.
    try:
        return _BOOL.validate_python(value)
    except ValidationError:
        raise ValueError("must be 0 or 1 (or false or true)") from None


#: Medic's 0/1 flags (``active``, ``muted``), true and false taken too.
Flag = Annotated[bool, BeforeValidator(_flag)]


class ServiceUpdate(BaseModel):
    """``POST /service/{heartbeat_name}``: any of Medic's updatable fields."""

    model_config = ConfigDict(extra="ignore")

    service_name: str | None = Field(default=None, min_length=1, max_length=255)
    active: Flag | None = None
    alert_interval: float | None = Field(default=None, gt=0, le=43_200)
    threshold: int | None = Field(default=None, ge=1, le=10_000)
    team: str | None = Field(default=None, min_length=1, max_length=255)
    priority: str | None = None
    muted: Flag | None = None
    runbook: str | None = None
    max_duration: float | None = Field(default=None, gt=0)

    @field_validator("priority")
    @classmethod
    def _priority(cls, value: str | None) -> str | None:
        if value is not None and value.strip().lower() not in PRIORITY:
            raise ValueError("must be p1, p2, p3, p4 or p5")
        return None if value is None else value.strip().lower()


def view(
    spec: ServiceSpec, registration: Registration | None, down: bool = False
) -> dict[str, Any]:
    """A service as Medic's API shows one (plus where it is defined)."""
    return {
        "heartbeat_name": spec.slug,
        "service_name": spec.name,
        "environment": registration.environment if registration else None,
        "alert_interval": spec.window / 60,
        "threshold": spec.threshold,
        "team": spec.team,
        "priority": MEDIC_PRIORITY[spec.priority],
        "runbook": spec.runbook_url,
        "max_duration": spec.max_duration,
        "active": int(spec.active),
        "muted": int(spec.muted),
        "down": int(down),
        "defined_in": "api" if registration else "file",
        "date_added": iso(registration.created_at) if registration else None,
        "date_modified": iso(registration.updated_at) if registration else None,
    }


def _down() -> set[str]:
    return {slug for slug, s in read_states(engine().redis).items() if s.status == "down"}


def _services(token: ApiToken) -> dict[str, tuple[ServiceSpec, Registration | None]]:
    eng = engine()
    registered = eng.registry.all()
    catalogue = eng.catalogue()
    specs = catalogue.services if catalogue is not None else {}
    return {
        slug: (spec, registered.get(slug) if catalogue and catalogue.is_registered(slug) else None)
        for slug, spec in specs.items()
        if token.covers(spec.team)
    }


def _medic_status(entry: dict[str, Any]) -> str:
    """A logged heartbeat as Medic's status: the one a Medic call sent, else (a ping's
    ``/fail``, ``exit 3``) UP or DOWN by what it recorded."""
    via = entry.get("via")
    if via in STATUS_KIND:
        return str(via)
    return "UP" if entry["kind"] == "up" else "DOWN"


def _manages(request: Request) -> None:
    """Reading or changing services takes the ``heartbeat`` scope: a ``ping`` key, the one
    in crontab lines, reports heartbeats and nothing else (it could otherwise mute or
    deactivate the monitoring it feeds)."""
    token = calling_token(request)
    if not token.allows("heartbeat"):
        raise forbidden(
            f"token {token.name!r} has the 'ping' scope: it reports heartbeats only; "
            "reading or changing services takes the 'heartbeat' scope"
        )


MANAGES = [Depends(_manages)]


def build_router() -> APIRouter:
    router = APIRouter(tags=["Medic heartbeats"], route_class=MedicRoute)

    @router.post("/heartbeat", status_code=201)
    def post_heartbeat(request: Request, body: Annotated[Any, Body()] = None) -> JSONResponse:
        """Medic's heartbeat: ``{"heartbeat_name", "service_name", "status"}``, status
        ``UP``, ``DOWN`` or ``DEGRADED``. 201 posted; 404 not registered; 400 bad data or
        an inactive service."""
        beat = _validated(HeartbeatBody, body)
        if isinstance(beat, JSONResponse):
            return beat
        eng = engine()
        spec = eng.service(beat.heartbeat_name)
        if spec is None or not calling_token(request).covers(spec.team):
            eng.heartbeats.refuse("unknown_slug")
            return refused(404, f"Heartbeat {beat.heartbeat_name!r} is not registered.")
        if not spec.active:
            return refused(400, f"Heartbeat {beat.heartbeat_name!r} is inactive.")
        kind = STATUS_KIND[beat.status]
        try:
            reports.ping(eng, spec, Ping(kind=kind, via=beat.status))
        except HeartbeatInFutureError as exc:
            return refused(400, str(exc))
        return medic(201, True, "Heartbeat Posted Successfully.")

    @router.get("/heartbeat", dependencies=MANAGES)
    def get_heartbeats(
        request: Request,
        heartbeat_name: str | None = None,
        service_name: str | None = None,
        max_count: Annotated[int, Query(alias="maxCount", ge=1)] = MAX_COUNT,
    ) -> JSONResponse:
        """The latest heartbeats, newest first (Medic's filters and ``maxCount``, at most
        250: more is taken as 250, as Medic does), each with its time, status, team and
        priority (Medic's ``UP`` or ``DOWN``, or ``DEGRADED``, for pings too)."""
        max_count = min(max_count, MAX_COUNT)
        eng = engine()
        chosen = [
            spec
            for spec, _ in _services(calling_token(request)).values()
            if (heartbeat_name is None or spec.slug == heartbeat_name)
            and (service_name is None or spec.name == service_name)
        ]
        beats = []
        for spec in chosen:
            for entry in eng.heartbeats.log(spec.slug, max_count):
                if entry["kind"] not in ("up", "fail"):
                    continue
                beats.append(
                    {
                        "heartbeat_name": spec.slug,
                        "service_name": spec.name,
                        "status": _medic_status(entry),
                        "time": iso(entry["at"]),
                        "team": spec.team,
                        "priority": MEDIC_PRIORITY[spec.priority],
                    }
                )
        beats.sort(key=lambda b: str(b["time"]), reverse=True)
        return medic(200, True, "", beats[:max_count])

    @router.post("/service", status_code=201, dependencies=MANAGES)
    def register(request: Request, body: Annotated[Any, Body()] = None) -> JSONResponse:
        """Register a service (Medic's fields and defaults; ``alert_interval`` in minutes
        is the window; ``environment`` prefixes the name). 201 registered; 200 when a
        service of that name exists (in the file or registered); 409 when it is another
        team's (a team token's)."""
        token = calling_token(request)
        wanted = _validated(ServiceBody, body)
        if isinstance(wanted, JSONResponse):
            return wanted
        slug = (
            f"{wanted.environment}-{wanted.heartbeat_name}"
            if wanted.environment
            else wanted.heartbeat_name
        )
        if not SLUG_PATTERN.fullmatch(slug):
            return refused(
                400,
                "heartbeat_name: 1-100 letters, digits, '.', '_' or '-', starting with a "
                "letter or digit",
            )
        team = wanted.team or token.team or DEFAULT_TEAM
        if not token.covers(team):
            return refused(400, f"team: this token may register only team {token.team!r}")
        eng = engine()
        existing = eng.service(slug)
        if existing is not None and not token.covers(existing.team):
            # "Already registered" would tell it to start sending heartbeats that it would
            # then be refused (404) for: the name is another team's.
            return refused(409, "heartbeat_name: registered by another team; choose another")
        if existing is not None:
            return medic(200, True, "Heartbeat is already registered.")
        try:
            spec = ServiceSpec(
                slug=slug,
                name=wanted.service_name,
                team=team,
                priority=PRIORITY[wanted.priority],
                window=wanted.alert_interval * 60,
                threshold=wanted.threshold,
                runbook_url=wanted.runbook,
                max_duration=wanted.max_duration,
            )
        except ValidationError as exc:
            return refused(400, _renamed(_problems(exc)))
        registration = Registration.new(spec, wanted.heartbeat_name, wanted.environment)
        try:
            added = eng.registry.add(registration)
        except RegistryFullError as exc:
            return refused(400, str(exc))
        if not added:
            return medic(200, True, "Heartbeat is already registered.")
        return medic(201, True, "Heartbeat successfully registered.")

    @router.get("/service", dependencies=MANAGES)
    def list_services(
        request: Request, service_name: str | None = None, active: int | None = None
    ) -> JSONResponse:
        """Every monitored service (filters ``service_name`` and ``active``)."""
        down = _down()
        found = [
            view(spec, registration, spec.slug in down)
            for spec, registration in _services(calling_token(request)).values()
            if (service_name is None or spec.name == service_name)
            and (active is None or int(spec.active) == active)
        ]
        return medic(200, True, "", found)

    @router.get("/service/{heartbeat_name}", dependencies=MANAGES)
    def show_service(request: Request, heartbeat_name: str) -> JSONResponse:
        """One service."""
        found = _services(calling_token(request)).get(heartbeat_name)
        if found is None:
            return refused(404, f"Heartbeat {heartbeat_name!r} is not registered.")
        return medic(200, True, "", [view(*found, down=heartbeat_name in _down())])

    @router.post("/service/{heartbeat_name}", dependencies=MANAGES)
    def update_service(
        request: Request, heartbeat_name: str, body: Annotated[Any, Body()] = None
    ) -> JSONResponse:
        """Update a registered service: any of service_name, active (0/1), alert_interval,
        threshold, team, priority, muted (0/1), runbook, max_duration. A service from the
        file cannot be changed here (409): change the file."""
        token = calling_token(request)
        change = _validated(ServiceUpdate, body)
        if isinstance(change, JSONResponse):
            return change
        eng = engine()
        found = _services(token).get(heartbeat_name)
        if found is None:
            return refused(404, f"Heartbeat {heartbeat_name!r} is not registered.")
        spec, registration = found
        if registration is None:
            return refused(
                409,
                f"Heartbeat {heartbeat_name!r} is defined in HEARTBEAT_SERVICES_FILE; "
                "change it there",
            )
        if change.team is not None and not token.covers(change.team):
            return refused(400, f"team: this token may act only for team {token.team!r}")
        updates: dict[str, Any] = {}
        fields = {"service_name": "name", "threshold": "threshold", "team": "team"}
        for theirs, ours in fields.items():
            if getattr(change, theirs) is not None:
                updates[ours] = getattr(change, theirs)
        if change.alert_interval is not None:
            updates["window"] = change.alert_interval * 60
        if change.priority is not None:
            updates["priority"] = PRIORITY[change.priority]
        if change.runbook is not None:
            updates["runbook_url"] = change.runbook or None
        if change.max_duration is not None:
            updates["max_duration"] = change.max_duration
        for flag in ("active", "muted"):
            value = getattr(change, flag)
            if value is not None:
                updates[flag] = bool(value)
        try:
            new = ServiceSpec.model_validate(spec.model_dump() | updates)
        except ValidationError as exc:
            return refused(400, _renamed(_problems(exc)))
        saved = registration.model_copy(update={"spec": new, "updated_at": time.time()})
        eng.registry.replace(saved)
        return medic(200, True, "Successfully posted update")

    @router.get("/alerts", dependencies=MANAGES)
    def alerts(request: Request, active: int | None = None) -> JSONResponse:
        """Open heartbeat incidents (``active=1``; closed ones are not kept), with the
        PagerDuty dedup key as ``external_reference_id``."""
        eng = engine()
        services = _services(calling_token(request))
        states = read_states(eng.redis)
        found = []
        if active in (None, 1):
            for slug, state in states.items():
                if state.incident is None or slug not in services:
                    continue
                spec = services[slug][0]
                found.append(
                    {
                        "alert_name": f"Medic - Heartbeat failure for {slug}",
                        "heartbeat_name": slug,
                        "service_name": spec.name,
                        "team": spec.team,
                        "priority": MEDIC_PRIORITY[spec.priority],
                        "active": 1,
                        "external_reference_id": state.incident.dedup_key,
                        "reason": state.reason,
                        "created_date": iso(state.incident.opened_at),
                        "closed_date": None,
                    }
                )
        return medic(200, True, "", found)

    return router


def _renamed(message: str) -> str:
    """Our field names, in Medic's words."""
    for ours, theirs in (
        ("window", "alert_interval"),
        ("runbook_url", "runbook"),
        ("name", "service_name"),
        ("slug", "heartbeat_name"),
    ):
        message = message.replace(f"{ours}:", f"{theirs}:")
    return message


#: At the root, for callers that send a bearer token; under /medic/{key}, for Medic's own
#: calls, which send none.
SCOPES = (
    ": Medic's API takes the 'ping' scope to report heartbeats, the 'heartbeat' scope to "
    "read or change services too"
)
bearer_router = APIRouter(dependencies=[Depends(require("ping", SCOPES))])
bearer_router.include_router(build_router())
keyed_router = APIRouter(prefix="/medic/{key}", dependencies=[Depends(path_key("ping", SCOPES))])
keyed_router.include_router(build_router())
