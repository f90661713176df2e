"""``gds-notify status``, ``gds-notify jobs`` and ``gds-notify schema``."""

from __future__ import annotations

from typing import Any

import click

from cli.common import BadInput, Failed, echo_json, one_line_errors, say_if_foreign, when
from worker.channels import Channel
from worker.engine.dead_letters import dead_letter_id, no_job
from worker.engine.jobs import DEAD
from worker.engine.runtime import engine
from worker.job_request import json_schema_text
from worker.validation import inert


@click.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
@one_line_errors
def status(job_id: str, as_json: bool) -> None:
    """Print a job's state per channel and every attempt it took.

    A message dropped as a copy of an earlier job (same idempotency id) answers with
    that job. Exit code 0 when the job is known, 1 when it is not (or its history
    expired).
    """

    record = engine().jobs.lookup(job_id)
    if record is None:
        raise Failed(no_job(engine().dead_letters, job_id))
    if as_json:
        echo_json(record)
        return
    if record.get("duplicate"):
        click.echo(f"{job_id} was dropped: a copy of job {record['id']} (same idempotency id)\n")
    _print_record(record)


@click.command()
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 10_000))
@click.option(
    "--status",
    "only",
    type=click.Choice(["pending", "delivered", "dead-lettered", "partly dead"]),
    help="Only jobs in this state.",
)
@click.option(
    "--late",
    type=click.Choice([c.value for c in Channel]),
    help="Instead: the notifications not yet delivered on this channel, oldest first.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the records as JSON.")
@one_line_errors
def jobs(limit: int, only: str | None, late: str | None, as_json: bool) -> None:
    """The most recent jobs, newest first, with each channel's state; with --late, the
    notifications still on their way on a channel, oldest first (GdsNotifyPagesLate)."""

    if late and only:
        raise BadInput("--late and --status: choose one")
    found = engine().jobs.late(late, limit) if late else engine().jobs.recent(limit, only)
    if not found:
        say_if_foreign(engine().redis)
    if as_json:
        echo_json(found)
        return
    if not found:
        click.echo("no jobs" + (f" {only}" if only else "") + (f" late on {late}" if late else ""))
        return
    for r in found:
        states = ", ".join(f"{ch} {info['state']}" for ch, info in r["channels"].items())
        what = (r.get("notification") or {}).get("subject") or r.get("dedup_key") or ""
        click.echo(f"{r['id']}  {when(r['created_at'])}  {r['action']:<10}  {states}  {what[:60]}")


def _print_record(record: dict[str, Any]) -> None:
    n = record.get("notification") or {}
    click.echo(f"job        {record['id']}  [{record['status']}]")
    click.echo(f"action     {record['action']} (from {record['source']})")
    if n:
        click.echo(f"subject    {n.get('subject')}")
        click.echo(f"recipient  {n.get('recipient')}  priority {n.get('priority')}")
    if record.get("dedup_key"):
        click.echo(f"dedup key  {record['dedup_key']}")  # what `resolve` and `ack` take
    if record.get("team"):
        click.echo(f"team       {record['team']}")
    click.echo(f"created    {when(record['created_at'])}")
    if record["duplicates"]:
        click.echo(f"duplicates {record['duplicates']} later copies dropped")
    if record.get("replay_of"):
        click.echo(f"replay of  {record['replay_of']}")
    for channel, info in record["channels"].items():
        click.echo(f"{channel:<10} {info['state']} after {info['attempts']} attempt(s)")
        if info.get("error"):
            # The server's words, from a peer anyone may run: shown inert.
            click.echo(f"{'':<10} last error: {inert(str(info['error'].get('message')))}")
        for address, where in (info.get("recipients") or {}).items():
            if where != info["state"]:  # refused while the server took the others
                click.echo(f"{'':<10} {address}: {inert(str(where))}")
        if info["state"] == DEAD:
            entry = dead_letter_id(record["id"], channel)
            if info.get("replayed_as"):
                again = info["replayed_as"]
                click.echo(f"{'':<10} dead letter {entry}: replayed as job {again}")
            elif engine().dead_letters.get(entry) is None:
                click.echo(f"{'':<10} dead letter {entry}: removed since")
            else:
                click.echo(f"{'':<10} dead letter {entry} (`gds-notify dlq show {entry}`)")
    click.echo("attempts:")
    for a in record["attempts"]:
        parts = [
            when(a["at"]),
            a["channel"],
            f"#{a['attempt']}" if a["attempt"] else "-",
            a["outcome"],
        ]
        if a.get("latency_ms") is not None:
            parts.append(f"{a['latency_ms']:.0f} ms")
        if a.get("error_class"):
            parts.append(f"{a['error_class']}: {inert(str(a.get('error')))}")
        if a.get("retry_in") is not None:
            parts.append(f"next try in {a['retry_in']:.2f}s")
        click.echo("  " + "  ".join(str(p) for p in parts))


@click.command()
def schema() -> None:
    """Print the JSON Schema of the job payload (Celery task 'notify', one argument)."""

    click.echo(json_schema_text())
