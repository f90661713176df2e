"""``gds-notify``: the one command-line entry point.

Errors reach the user as one line on stderr with a non-zero exit code: 1 for a failure at
run time, 2 for bad usage or configuration (click's own convention for usage errors).
"""

from __future__ import annotations

import logging

import click

from cli.api_cmd import api
from cli.config_cmd import config
from cli.dev_cmd import dev
from cli.dlq_cmd import dlq
from cli.heartbeats_cmd import heartbeat, heartbeats
from cli.jobs_cmd import schema, status
from cli.sandbox_cmd import sandbox
from cli.send_cmd import ack, pagerduty_test, resolve, send
from cli.stack_file import use_running_stack


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log what happens (INFO level).")
@click.version_option(package_name="gds-notification")
def main(verbose: bool) -> None:
    """GDS Notification Service: PagerDuty pages and email from a Celery queue on Redis."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # A `gds-notify dev` stack running in this checkout: talk to it (your own variables win).
    use_running_stack()


for command in (
    send,
    ack,
    resolve,
    status,
    dlq,
    heartbeat,
    heartbeats,
    sandbox,
    dev,
    schema,
    config,
    pagerduty_test,
    api,
):
    main.add_command(command)


if __name__ == "__main__":
    main()
