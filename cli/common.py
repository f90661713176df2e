"""What every ``gds-notify`` command shares: errors as one line and exit codes scripts
can rely on.

Exit codes: 0 success; 1 the operation failed (Redis unreachable, job not found, delivery
failed); 2 bad usage, bad input or bad configuration.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

import click
import redis

from config.dev_stack_file import running_stack
from config.redis_address import parse_redis_url
from config.settings import get_settings
from worker.engine import keys
from worker.engine.redis_client import NotReplicatedError
from worker.exceptions import NotificationConfigError
from worker.job_request import InvalidJobError

P = ParamSpec("P")
R = TypeVar("R")

EXIT_FAILED = 1
EXIT_USAGE = 2


class Failed(click.ClickException):
    """The operation failed: one line on stderr, exit code 1."""

    exit_code = EXIT_FAILED


class BadInput(click.ClickException):
    """Bad input or configuration: one line on stderr, exit code 2."""

    exit_code = EXIT_USAGE


def one_line_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn the service's own errors into one clear line and the right exit code."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        _check_text(kwargs)
        try:
            return func(*args, **kwargs)
        except NotificationConfigError as exc:
            raise BadInput(str(exc)) from None
        except InvalidJobError as exc:
            raise BadInput(str(exc)) from None
        except NotReplicatedError as exc:
            job = (
                f"; job {exc.job_id} is on the master: `gds-notify status {exc.job_id}` says "
                "whether it stood (send with --idempotency-id to make a retry safe)"
                if exc.job_id
                else ""
            )
            raise Failed(f"{exc}{job}") from None
        except redis.RedisError as exc:
            raise Failed(
                f"cannot reach Redis at {get_settings().redis_address.shown()} "
                f"({type(exc).__name__}: {exc}){_stale_stack_hint()}"
            ) from None

    return wrapper


def _check_text(arguments: dict[str, object]) -> None:
    """Refuse an argument that is not UTF-8 text: Python hands the bytes of one (a Latin-1
    terminal, a binary file name) over as lone surrogates, which fail deep inside, at the
    first encode, with a traceback."""
    context = click.get_current_context(silent=True)
    paths = {
        p.name
        for p in (context.command.params if context else [])
        if isinstance(p.type, click.Path | click.File)
    }
    for name, value in arguments.items():
        if name in paths:  # a file's name is the file system's bytes, whatever they are
            continue
        for text in value if isinstance(value, tuple | list) else (value,):
            if isinstance(text, str):
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:
                    raw = text.encode("utf-8", "surrogateescape")
                    raise BadInput(
                        f"{name.upper()}: {raw!r} is not UTF-8 text (convert it first, e.g. "
                        "with iconv -f latin1 -t utf-8)"
                    ) from None


def say_if_foreign(client: redis.Redis) -> None:
    """When a listing found nothing: say so on stderr if this Redis holds nothing of the
    service at all (no worker ever reported to it, no job came through it). A stale
    REDIS_URL, or another database number, then reads as "nothing to do"."""
    if client.exists(keys.STATS, keys.WORKERS, keys.RECENT_JOBS):
        return
    click.echo(
        f"note: the Redis at {get_settings().redis_address.shown()} holds nothing of this "
        "service (no worker has reported to it, no job came through it): is REDIS_URL the "
        f"one the service uses?{_stale_stack_hint()}",
        err=True,
    )


def _stale_stack_hint() -> str:
    """Why a terminal may be talking to the wrong Redis: its REDIS_URL exported from a dev
    stack that has since restarted on another port (the environment wins over the
    stack's announcement)."""
    exported = os.environ.get("REDIS_URL")
    env = (running_stack() or {}).get("env")
    ours = env.get("REDIS_URL") if isinstance(env, dict) else None
    if not exported or not isinstance(ours, str) or ours == exported:
        return ""
    try:
        shown = parse_redis_url(ours).shown()
    except ValueError:
        return ""
    return (
        f"; REDIS_URL is set in your environment, and the dev stack running here is at "
        f'{shown}: run `eval "$(gds-notify dev --env)"` again, or unset REDIS_URL'
    )


def note(text: str) -> None:
    """Tell the person at the terminal something worth knowing, on stderr: ``note: …``,
    or under ``LOG_FORMAT=json`` (stderr is then a log stream) a warning record."""
    if get_settings().log_format == "json":
        logging.getLogger("cli").warning(text)
    else:
        click.echo(f"note: {text}", err=True)


def when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host``:``port`` now (as it would: with
    SO_REUSEADDR, so a port in TIME_WAIT counts as free)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
