"""``gds-notify dlq list|show|replay|purge``: the dead letters."""

from __future__ import annotations

import click

import tasks
from cli.common import BadInput, Failed, echo_json, one_line_errors, when
from worker.engine.runtime import engine
from worker.job_request import InvalidJobError


@click.group()
def dlq() -> None:
    """Dead letters: jobs that could not be delivered, with the reason."""


@dlq.command("list")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1))
@click.option("--json", "as_json", is_flag=True, help="Print the entries as JSON.")
@one_line_errors
def list_(limit: int, as_json: bool) -> None:
    """The newest dead letters first."""

    letters = engine().dead_letters
    entries = letters.list(limit)
    if as_json:
        echo_json(entries)
        return
    if not entries:
        click.echo("no dead letters")
        return
    for e in entries:
        click.echo(f"{e['id']}  {when(e['dead_at'])}  {e['channel']:<9}  {e['reason'][:120]}")
    click.echo(f"{len(entries)} of {letters.count()} shown")


@dlq.command()
@click.argument("entry_id")
@one_line_errors
def show(entry_id: str) -> None:
    """Everything kept about one dead letter (job, reason, attempts, last error)."""

    entry = engine().dead_letters.get(entry_id)
    if entry is None:
        raise Failed(f"no dead letter {entry_id!r}")
    echo_json(entry)


@dlq.command()
@click.argument("entry_ids", nargs=-1)
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter.")
@one_line_errors
def replay(entry_ids: tuple[str, ...], replay_all: bool) -> None:
    """Send dead-lettered jobs through intake again (as new jobs). Prints the new job ids.

    Exit code 1 if any could not be replayed (they stay dead-lettered).
    """
    if replay_all:
        entry_ids = tuple(e["id"] for e in engine().dead_letters.list(limit=1_000_000))
    if not entry_ids:
        raise BadInput("name the dead letters to replay, or use --all")
    failed = 0
    for entry_id in entry_ids:
        try:
            click.echo(f"{entry_id} -> job {tasks.replay(entry_id)}")
        except (KeyError, InvalidJobError) as exc:
            failed += 1
            click.echo(f"{entry_id}: not replayed: {exc}", err=True)
    if failed:
        raise Failed(f"{failed} of {len(entry_ids)} not replayed")


@dlq.command()
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@one_line_errors
def purge(yes: bool) -> None:
    """Delete every dead letter."""

    letters = engine().dead_letters
    count = letters.count()
    if count and not yes:
        click.confirm(f"Delete {count} dead letters for good?", abort=True)
    click.echo(f"purged {letters.purge()} dead letters")
