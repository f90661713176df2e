"""``gds-notify dlq list|show|replay|purge``: the dead letters."""

from __future__ import annotations

import sys
from typing import Any

import click

import tasks
from cli.common import (
    BadInput,
    Failed,
    echo_json,
    one_line_errors,
    say_if_foreign,
    when,
)
from config.moments import parse_since
from worker.engine.keys import DEAD_LETTER_CHANNELS
from worker.engine.quarantine import BROKER_CHANNEL
from worker.engine.replay import ReplayInProgressError
from worker.engine.replay import remove as remove_letter
from worker.engine.runtime import engine
from worker.job_request import InvalidJobError
from worker.validation import inert


def _since(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """``--since``: a duration (``90s``, ``30m``, ``2h``, ``1d``) or an ISO 8601 time (UTC
    when it names no zone), as the epoch seconds it begins at."""
    if value is None:
        return None
    try:
        return parse_since(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


CHANNEL = click.option(
    "--channel",
    type=click.Choice(DEAD_LETTER_CHANNELS),
    help="Only this channel's: pages, emails, payloads refused at intake, broker messages.",
)
SINCE = click.option(
    "--since", callback=_since, metavar="2h|TIME", help="Only those dead since: '2h', or a time."
)
REASON = click.option("--reason", help="Only those whose reason holds this text (any case).")


def _chosen(channel: str | None, since: float | None, reason: str | None) -> list[dict[str, Any]]:
    """Every dead letter the options choose, newest first."""
    letters = engine().dead_letters
    if reason is None:
        return letters.list(1_000_000, channel, since)
    return letters.matching(reason, 1_000_000, channel, since)[0]


@click.group()
def dlq() -> None:
    """Dead letters: jobs that could not be delivered, with the reason."""


@dlq.command("list")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1))
@CHANNEL
@SINCE
@REASON
@click.option("--json", "as_json", is_flag=True, help="Print the entries as JSON.")
@click.option("-q", "--ids", "ids_only", is_flag=True, help="Print their ids alone, one a line.")
@one_line_errors
def list_(
    limit: int,
    channel: str | None,
    since: float | None,
    reason: str | None,
    as_json: bool,
    ids_only: bool,
) -> None:
    """The newest dead letters first."""

    letters = engine().dead_letters
    if reason is None:
        entries, total = letters.list(limit, channel, since), letters.count(channel, since)
    else:
        entries, total = letters.matching(reason, limit, channel, since)
    if not entries:
        say_if_foreign(engine().redis)
    if as_json:
        echo_json(entries)
        return
    if ids_only:
        for e in entries:
            click.echo(e["id"])
        if total > len(entries):  # said where a pipe does not take it for an id
            click.echo(f"{len(entries)} of {total} shown: --limit {total} for all", err=True)
        return
    if not entries:
        click.echo("no dead letters" + (f" on {channel}" if channel else ""))
        return
    for e in entries:
        reason = inert(e["reason"][:120])
        click.echo(f"{inert(e['id'])}  {when(e['dead_at'])}  {e['channel']:<9}  {reason}")
    click.echo(f"{len(entries)} of {total} shown")


def _missing(name: str) -> str:
    return f"no dead letter {name!r}, nor one of a job of that id (a replay or a purge removes it)"


def _found(name: str) -> list[dict[str, Any]]:
    entries = engine().dead_letters.find(name)
    if not entries:
        raise Failed(_missing(name))
    return entries


@dlq.command()
@click.argument("entry_id")
@one_line_errors
def show(entry_id: str) -> None:
    """Everything kept about a dead letter (job, reason, attempts, last error). ENTRY_ID is
    the entry's id (``dlq list``) or the job's: a job dead on two channels shows both."""

    entries = _found(entry_id)
    echo_json(entries[0] if len(entries) == 1 else entries)


@dlq.command()
@click.argument("entry_ids", nargs=-1)
@click.option(
    "--all", "replay_all", is_flag=True, help="Replay every dead letter (or those chosen)."
)
@CHANNEL
@SINCE
@REASON
@click.option("--dry-run", is_flag=True, help="Print what would be replayed; replay nothing.")
@one_line_errors
def replay(
    entry_ids: tuple[str, ...],
    replay_all: bool,
    channel: str | None,
    since: float | None,
    reason: str | None,
    dry_run: bool,
) -> None:
    """Send dead-lettered jobs through intake again (as new jobs), oldest first whatever
    the order named. Prints the new job ids. Each ENTRY_ID is an entry's id or a job's
    (every dead channel of it), or `-` for those read from stdin (`dlq list --ids | ...`);
    --all instead of ids replays every one, or those that
    --channel, --since and --reason choose (after an outage: `--all --channel pagerduty
    --since 2h --dry-run`, then without --dry-run).

    Exit code 1 if any could not be replayed (they stay dead-lettered).
    """
    if replay_all and entry_ids:
        raise BadInput("name the dead letters to replay, or use --all: not both")
    if not (replay_all or entry_ids):
        raise BadInput("name the dead letters to replay, or use --all")
    entry_ids = _names(entry_ids)
    if entry_ids and (channel or since is not None or reason is not None):
        raise BadInput("--channel, --since and --reason choose among --all, not among ids")
    letters = _chosen(channel, since, reason) if replay_all else []
    missing = [name for name in dict.fromkeys(entry_ids) if not _add(letters, name)]
    # One name gone (replayed by a run before this one) stops none of the others.
    problems = [f"{name}: not replayed: {_missing(name)}" for name in missing]
    # The order their jobs were accepted in (else the order they died in): a resolve must not
    # be queued before its trigger (PagerDuty would drop it, and the trigger would open an
    # incident nobody resolves), even one retried for an hour before it died; and
    # `dlq list` prints the newest first.
    letters.sort(key=lambda entry: entry.get("first_seen") or entry.get("dead_at") or 0)
    wanted = list(dict.fromkeys(entry["id"] for entry in letters))
    if dry_run:
        chosen = list({e["id"]: e for e in letters}.values())
        for entry in chosen:
            # A broker letter is a message no task could read, not a job: replay refuses it.
            verb = "cannot replay" if entry["channel"] == BROKER_CHANNEL else "would replay"
            reason = inert(entry["reason"][:80])
            click.echo(f"{verb} {inert(entry['id'])}  {entry['channel']:<9}  {reason}")
        count = sum(1 for e in chosen if e["channel"] != BROKER_CHANNEL)
        click.echo(f"{count} dead letter{'' if count == 1 else 's'} would be replayed")
        if problems:
            for problem in problems:
                click.echo(problem, err=True)
            raise Failed(f"{len(problems)} not found")
        return
    for entry_id in wanted:
        try:
            click.echo(f"{entry_id} -> job {tasks.replay(entry_id)}")
        except (LookupError, InvalidJobError) as exc:
            problems.append(f"{entry_id}: not replayed: {_text(exc)}")
    asked = len(wanted) + len(missing)
    if len(problems) == 1 and asked == 1:
        raise Failed(problems[0])
    for problem in problems:
        click.echo(problem, err=True)
    if problems:
        raise Failed(f"{len(problems)} of {asked} not replayed")


def _names(given: tuple[str, ...]) -> tuple[str, ...]:
    """The names given, ``-`` standing for those read from stdin: whitespace-separated,
    as ``dlq list --ids`` prints them."""
    if "-" not in given:
        return given
    try:
        read = tuple(sys.stdin.buffer.read().decode("utf-8").split())
    except UnicodeDecodeError:
        raise BadInput("stdin: not UTF-8 text; give the dead letters' ids") from None
    if not read:
        click.echo("no dead letters named on stdin", err=True)
    return tuple(name for part in given for name in (read if part == "-" else (part,)))


def _add(letters: list[dict[str, Any]], name: str) -> bool:
    found = engine().dead_letters.find(name)
    letters += found
    return bool(found)


def _text(exc: Exception) -> str:
    # A KeyError's str() is its argument's repr, quotes and all.
    return str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)


@dlq.command()
@click.argument("entry_ids", nargs=-1, required=True)
@one_line_errors
def remove(entry_ids: tuple[str, ...]) -> None:
    """Delete the dead letters named, and only those (an entry's id or a job's, as for
    `show`; `-` for those read from stdin): for one that is not to be sent, once read.
    Exit code 1 if a name was not found, or a replay holds the letter now (the others are
    removed all the same)."""
    entry_ids = _names(entry_ids)
    problems, failed = [], set()
    for name in dict.fromkeys(entry_ids):
        found = engine().dead_letters.find(name)
        if not found:
            problems.append(f"{name}: {_missing(name)}")
            failed.add(name)
        for entry in found:
            try:
                if remove_letter(engine(), entry["id"]):
                    click.echo(f"removed {entry['id']}")
            except ReplayInProgressError as exc:
                problems.append(f"{entry['id']}: not removed: {exc}")
                failed.add(name)
    for problem in problems:
        click.echo(problem, err=True)
    if failed:
        raise Failed(f"{len(failed)} of {len(set(entry_ids))} not removed")


@dlq.command()
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@one_line_errors
def purge(yes: bool) -> None:
    """Delete every dead letter."""

    letters = engine().dead_letters
    count = letters.count()
    if count and not yes:
        click.confirm(f"Delete {_letters(count)} for good? (--yes: without asking)", abort=True)
    click.echo(f"purged {_letters(letters.purge())}")


def _letters(count: int) -> str:
    return f"{count} dead letter{'' if count == 1 else 's'}"
