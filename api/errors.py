"""Every failure of a request, as one JSON shape and the status code that says what to do:

===========================================  ======  ==========================================
what happened                                status  body / headers
===========================================  ======  ==========================================
no token, or one nobody configured           401     ``WWW-Authenticate: Bearer``
a token without the scope                    403
unknown job, dead letter, route              404
a body that arrives too slowly               408
a dead letter another replay holds now       409     ``Retry-After`` (seconds)
a body over ``API_MAX_BODY_BYTES``           413
a field that can never be delivered          422     ``errors``: each field and what is wrong
a token over ``API_RATE_LIMIT``              429     ``Retry-After`` (seconds)
Redis unreachable: nothing was stored        503     ``Retry-After``; never a 202
===========================================  ======  ==========================================

Bodies are ``{"error": "...", "errors": [{"field": ..., "message": ...}]}`` (``errors`` only
for 422). No answer ever repeats a token or a secret.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from api import paths
from worker.engine import intake
from worker.engine.redis_client import NotReplicatedError
from worker.engine.runtime import engine
from worker.job_request import InvalidJobError
from worker.validation import path, printable, problem

logger = logging.getLogger(__name__)

#: Seconds a client is asked to wait when Redis is unreachable.
OUTAGE_RETRY_AFTER = 5


class ApiError(Exception):
    """A request answered with ``status`` and ``message`` (and ``headers``)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def unauthorized(message: str) -> ApiError:
    return ApiError(401, message, {"WWW-Authenticate": "Bearer"})


def forbidden(message: str) -> ApiError:
    return ApiError(403, message)


def not_found(message: str) -> ApiError:
    return ApiError(404, message)


def conflict(message: str, retry_after: int) -> ApiError:
    return ApiError(409, message, {"Retry-After": str(retry_after)})


def too_many(wait: float) -> ApiError:
    seconds = max(1, math.ceil(wait))
    return ApiError(
        429,
        f"rate limit for this token reached: retry in {seconds} s",
        {"Retry-After": str(seconds)},
    )


#: The problems a 422 lists: a body of 50,000 bad alerts made an answer of megabytes,
#: each problem told twice.
ERRORS_LISTED = 20


def invalid(errors: Sequence[dict[str, str]]) -> JSONResponse:
    listed = [
        {"field": printable(e["field"]), "message": printable(e["message"], 1000)}
        for e in errors[:ERRORS_LISTED]
    ]
    shown = "; ".join(f"{e['field']}: {e['message']}" for e in listed)
    if len(errors) > ERRORS_LISTED:
        shown += f"; and {len(errors) - ERRORS_LISTED} more problems"
    return JSONResponse({"error": f"invalid request: {shown}", "errors": listed}, 422)


#: pydantic's words for a whole body that is not an object (FastAPI read it as bytes when
#: its content type was not JSON).
_NOT_AN_OBJECT = ("model_attributes_type", "dict_type", "model_type")


def _json(content_type: str) -> bool:
    """Whether FastAPI read the body as JSON: only under a JSON content type (it reads a
    body with none, or another, as bytes)."""
    media = content_type.split(";", 1)[0].strip()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def _request_fields(exc: RequestValidationError, content_type: str) -> list[dict[str, str]]:
    """FastAPI's errors, each located in the body, query or header (whose name goes). The
    request's whole body is named as such, not mistaken for a notification's ``body``."""
    out = []
    for error in exc.errors():
        loc = tuple(error.get("loc", ()))
        where = path(loc[1:]) if len(loc) > 1 else "body"
        kind = error.get("type")
        if kind == "json_invalid":
            why = error.get("ctx", {}).get("why")
            out.append({"field": "body", "message": f"not valid JSON{why or ''}"})
        elif loc == ("body",) and kind == "missing":
            out.append({"field": "body", "message": "the request has no body: send a JSON object"})
        elif loc == ("body",) and kind in _NOT_AN_OBJECT and not _json(content_type):
            came = f"Content-Type {content_type[:64]!r}" if content_type else "no Content-Type"
            message = f"the request's body was not read as JSON ({came}): send it with "
            out.append({"field": "body", "message": message + "Content-Type: application/json"})
        elif loc == ("body",) and kind in _NOT_AN_OBJECT:
            out.append({"field": "body", "message": "the request's body must be a JSON object"})
        else:
            out.append({"field": where, "message": problem(error)})
    return out


def _not_utf8(request: Request, error: UnicodeDecodeError) -> RequestValidationError:
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        why = f": Content-Encoding {encoding[:32]!r} is not accepted: send the body uncompressed"
    else:
        why = f": not UTF-8 (byte 0x{error.object[error.start]:02x} at {error.start})"
    return RequestValidationError(
        [{"type": "json_invalid", "loc": ("body",), "msg": "not UTF-8", "ctx": {"why": why}}]
    )


def _unparsable(error: ValueError | RecursionError) -> RequestValidationError:
    if isinstance(error, RecursionError):
        why = ": nested too deeply"
    else:  # Python's own advice after the semicolon is for its programmers
        why = f": {str(error).split(';', 1)[0]}"
    return RequestValidationError(
        [{"type": "json_invalid", "loc": ("body",), "msg": "unparsable", "ctx": {"why": why}}]
    )


#: The doors notifications come in by, for the count of those refused as invalid.
INTAKE_SOURCES = {
    "/v1/notifications": "api",
    "/ingest": "ingest",
    "/v1/alertmanager": "alertmanager",
}


async def _count_refusal(request: Request) -> None:
    source = INTAKE_SOURCES.get(request.url.path)
    if source is not None:
        await run_in_threadpool(intake.refused, engine(), source)


def install(app: FastAPI, refused_notifier: Callable[[Request], ApiError | None]) -> None:
    """Register the handlers that give every failure its status code and shape.
    ``refused_notifier`` says why a request's token would be refused (api/auth.py)."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
            # FastAPI's "error parsing the body" names no field: bytes JSON cannot be (RFC
            # 8259 is UTF-8), most often a compressed body or a Latin-1 producer.
            return await request_invalid(request, _not_utf8(request, exc.__cause__))
        if exc.status_code == 400 and isinstance(exc.__cause__, (ValueError, RecursionError)):
            # JSON the parser will not build: a number of thousands of digits, or arrays
            # and objects nested past the interpreter's recursion limit.
            return await request_invalid(request, _unparsable(exc.__cause__))
        return JSONResponse(
            {"error": str(exc.detail)}, exc.status_code, headers=dict(exc.headers or {})
        )

    @app.exception_handler(RequestValidationError)
    async def request_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # A body that is not JSON fails before the route's token check: at the doors that
        # count refusals, a caller without a token (or without the scope) gets its 401 (or
        # 403), and counts for nothing.
        if request.url.path in INTAKE_SOURCES:
            refused = await run_in_threadpool(refused_notifier, request)
            if refused is not None:
                return await api_error(request, refused)
        await _count_refusal(request)
        content_type = request.headers.get("content-type", "").strip().lower()
        return invalid(_request_fields(exc, content_type))

    @app.exception_handler(InvalidJobError)
    async def job_invalid(request: Request, exc: InvalidJobError) -> JSONResponse:
        await _count_refusal(request)
        return invalid(exc.errors)

    async def outage(request: Request, exc: Exception) -> JSONResponse:
        where = paths.shown(request)
        logger.warning("%s %s: redis unavailable: %s", request.method, where, exc)
        said = "Redis is unreachable: nothing was stored; retry later"
        if isinstance(exc, redis.TimeoutError) and request.method not in ("GET", "HEAD"):
            # The write may have been sent before the answer timed out, and run since.
            said = (
                "Redis did not answer in time: what was sent may have been stored; retry "
                "later with the same idempotency id"
            )
        return JSONResponse({"error": said}, 503, headers={"Retry-After": str(OUTAGE_RETRY_AFTER)})

    app.add_exception_handler(redis.RedisError, outage)

    @app.exception_handler(NotReplicatedError)
    async def not_durable(request: Request, exc: NotReplicatedError) -> JSONResponse:
        logger.warning("%s %s: %s", request.method, paths.shown(request), exc)
        body: dict[str, Any] = {"error": str(exc)}
        if exc.job_id is not None:
            # The job is on the master and may well go out: the producer was told no id,
            # and a retry without an idempotency id would be a second job.
            body["job_id"] = exc.job_id
            body["error"] += (
                f"; job {exc.job_id} is on the master: GET /v1/jobs/{exc.job_id} says whether "
                "it stood (a retry is safe with an idempotency_id, a second job without one)"
            )
        return JSONResponse(body, 503, headers={"Retry-After": str(OUTAGE_RETRY_AFTER)})
