"""``gds-notify api``: serve the HTTP API (uvicorn), and ``gds-notify api token``: make a
token for it."""

from __future__ import annotations

import json
import logging
from typing import Any

import click
import uvicorn
import uvicorn.config

from cli.common import BadInput, one_line_errors, port_is_free
from config.api_tokens import SCOPES, new_token, token_hash
from config.settings import get_settings

logger = logging.getLogger(__name__)


@click.group(invoke_without_command=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Processes serving requests (one per core is a good start).",
)
@click.option(
    "--ssl-certfile", type=click.Path(exists=True, dir_okay=False), help="TLS certificate (PEM)."
)
@click.option("--ssl-keyfile", type=click.Path(exists=True, dir_okay=False), help="TLS key (PEM).")
@click.option("--no-access-log", is_flag=True, help="Do not log each request.")
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
)
@click.pass_context
@one_line_errors
def api(
    ctx: click.Context,
    host: str,
    port: int,
    workers: int,
    ssl_certfile: str | None,
    ssl_keyfile: str | None,
    no_access_log: bool,
    log_level: str,
) -> None:
    """Serve the HTTP API: notifications, incidents, jobs, dead letters, the GDS ingest,
    Alertmanager's webhook and health probes (docs at /docs).

    Listens on 127.0.0.1 unless --host says otherwise; give it --ssl-certfile and
    --ssl-keyfile for TLS, or put it behind a proxy that terminates TLS.
    """
    if ctx.invoked_subcommand is not None:
        return
    settings = get_settings()  # a bad setting stops here, named, with exit code 2
    if not port_is_free(host, port):
        # uvicorn would log the bind error over several lines and exit 3.
        raise BadInput(
            f"port {port} on {host} is taken (another program listens there); "
            "choose another with --port"
        )
    json_logs = settings.log_format == "json"
    if not settings.tokens:
        warning = (
            "no API_TOKENS configured: every request that needs a token will be "
            "refused (make one with `gds-notify api token NAME`)"
        )
        if json_logs:
            logger.warning(warning)
        else:
            click.echo(f"warning: {warning}", err=True)
    uvicorn.run(
        "api.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
        access_log=not no_access_log,
        log_level=log_level,
        log_config=_json_log_config() if json_logs else uvicorn.config.LOGGING_CONFIG,
        timeout_keep_alive=5,
        server_header=False,
        http="api.request_heads:BoundedHeadProtocol",  # a head too large or too slow refused
    )


def _json_log_config() -> dict[str, Any]:
    """uvicorn's own logging (its loggers, the error log on stderr and the access log on
    stdout) in JSON, and the root logger too: with --workers, each process sets its
    logging up from this alone."""

    def stream(formatter: str, name: str) -> dict[str, str]:
        return {"class": "logging.StreamHandler", "formatter": formatter, "stream": name}

    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "json": {"()": "config.log_format.JsonFormatter"},
            "access": {"()": "config.log_format.AccessJsonFormatter"},
        },
        "handlers": {
            "default": stream("json", "ext://sys.stderr"),
            "access": stream("access", "ext://sys.stdout"),
        },
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"level": "INFO"},
            "uvicorn.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
        },
        # The level `gds-notify` chose (WARNING, INFO with -v), as text logging keeps it.
        "root": {"handlers": ["default"], "level": logging.getLogger().level},
    }


@api.command()
@click.argument("name")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    required=True,
    type=click.Choice(SCOPES),
    help="What the token may do (repeatable): notify, ping (report heartbeats only: for "
    "crontab lines), heartbeat (report, and manage services), admin (everything).",
)
@click.option(
    "--team", default=None, help="Limit a ping or heartbeat token to the services of one team."
)
def token(name: str, scopes: tuple[str, ...], team: str | None) -> None:
    """Make a new API token called NAME. Prints the token (shown once: only its hash is
    configured) and the entry to add to API_TOKENS or the API_TOKENS_FILE list."""
    if team and not set(scopes) <= {"ping", "heartbeat"}:
        # A team limits heartbeat services only: a notify or admin token would still act
        # for every team, whatever its entry said.
        raise click.UsageError(
            "--team limits a token to one team's heartbeat services: give it with "
            "--scope ping or --scope heartbeat alone"
        )
    secret = new_token()
    entry: dict[str, object] = {
        "name": name,
        "sha256": token_hash(secret),
        "scopes": list(dict.fromkeys(scopes)),
    }
    if team:
        entry["team"] = team
    click.echo("token (shown once; give it to the caller, keep it secret):")
    click.echo(f"  {secret}")
    click.echo("add this entry to the API_TOKENS list (or the file API_TOKENS_FILE names):")
    click.echo(f"  {json.dumps(entry)}")
