"""``gds-notify``: the one command-line entry point.

Errors reach the user as one line on stderr with a non-zero exit code: 1 for a failure at
run time, 2 for bad usage or configuration (click's own convention for usage errors).
"""

from __future__ import annotations

import logging
from typing import Any

import click

from cli.api_cmd import api
from cli.config_cmd import config
from cli.dev_cmd import dev
from cli.dlq_cmd import dlq
from cli.heartbeats_cmd import heartbeat, heartbeats
from cli.jobs_cmd import jobs, schema, status
from cli.metrics_cmd import metrics
from cli.sandbox_cmd import sandbox
from cli.send_cmd import ack, pagerduty_test, resolve, send
from config.log_format import JsonFormatter
from config.settings import load_settings
from worker.exceptions import NotificationConfigError


class OneLineUsageError(click.UsageError):
    """A usage error shown as one line: what is wrong and where help is (click's default
    adds the usage text and a blank line)."""

    def show(self, file: Any = None) -> None:
        where = f" (see `{self.ctx.command_path} --help`)" if self.ctx else ""
        click.echo(f"Error: {self.format_message()}{where}", err=True)


def _one_line(exc: click.UsageError) -> click.UsageError:
    # No command at all is a request for the help text, not an error to shorten.
    if isinstance(exc, OneLineUsageError | click.exceptions.NoArgsIsHelpError):
        return exc
    return OneLineUsageError(exc.format_message(), exc.ctx)


class Commands(click.Group):
    """The command group; its subcommands' usage errors, too, come out as one line."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as exc:
            raise _one_line(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            raise _one_line(exc) from None


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log what happens (INFO level).")
@click.version_option(package_name="gds-notification")
def main(verbose: bool) -> None:
    """GDS Notification Service: PagerDuty pages and email from a Celery queue on Redis."""
    level = logging.INFO if verbose else logging.WARNING
    if _log_format() == "json":
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        logging.basicConfig(level=level, handlers=[handler])
        logging.captureWarnings(True)  # a warning's text would be lines of their own
    else:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _log_format() -> str:
    # Read apart from the command's own settings (not cached): a command that needs none
    # must not fail on them, and one that does reports a bad LOG_FORMAT in its one line.
    try:
        return load_settings().log_format
    except NotificationConfigError:
        return "text"


for command in (
    send,
    ack,
    resolve,
    status,
    jobs,
    dlq,
    heartbeat,
    heartbeats,
    sandbox,
    dev,
    schema,
    config,
    pagerduty_test,
    api,
    metrics,
):
    main.add_command(command)


if __name__ == "__main__":
    main()
