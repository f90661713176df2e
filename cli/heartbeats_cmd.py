"""``gds-notify heartbeat SLUG`` (for shells and cron) and ``gds-notify heartbeats``."""

from __future__ import annotations

from typing import Any

import click

from cli.common import BadInput, echo_json, one_line_errors, when
from config.catalogue import ServiceSpec
from worker.engine.heartbeats.checker import last_check, last_idle_check, read_states
from worker.engine.heartbeats.reports import configured_catalogue, record
from worker.engine.heartbeats.store import kept_per_service
from worker.engine.runtime import engine
from worker.validation import inert


@click.command()
@click.argument("slug")
@click.option("--fail", "failed", is_flag=True, help="Report that the service is failing.")
@click.option(
    "--at",
    metavar="TIME",
    help="When it happened: ISO 8601 (naive = UTC) or epoch seconds. Default: now.",
)
@one_line_errors
def heartbeat(slug: str, failed: bool, at: str | None) -> None:
    """Record a heartbeat for SLUG (a service in HEARTBEAT_SERVICES_FILE).

    \b
    Cron example (every minute, after the job succeeded):
      * * * * *  run-backup && gds-notify heartbeat nightly-backup

    Exit codes: 0 recorded; 2 unknown slug or bad value; 1 Redis unreachable.
    """

    when_at: Any = at
    if at is not None:
        try:
            when_at = float(at)
        except ValueError:
            when_at = at
    try:
        stamp = record(engine(), slug, "fail" if failed else "up", when_at)
    except ValueError as exc:  # InvalidHeartbeatError, HeartbeatInFutureError
        raise BadInput(str(exc)) from None
    click.echo(f"heartbeat {slug} {'fail' if failed else 'up'} at {when(stamp)}")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
@click.option(
    "--log",
    "log_of",
    metavar="SLUG",
    help="Instead, SLUG's latest pings: kind, how they came, run id and the text they carried.",
)
@one_line_errors
def heartbeats(as_json: bool, log_of: str | None) -> None:
    """List every monitored service (from the file, and registered over the API): state,
    last heartbeat, heartbeats in the window, and open incident."""

    catalogue = configured_catalogue(engine())
    if log_of is not None:
        _show_log(catalogue.get(log_of), log_of, as_json)
        return
    client = engine().redis
    store = engine().heartbeats
    now = store.now()
    specs = list(catalogue.services.values())
    counts = store.counts(specs, now)
    lasts = store.last()
    states = read_states(client)
    rows: list[dict[str, Any]] = []
    for spec in specs:
        st = states.get(spec.slug)
        last = lasts.get(spec.slug)
        count = counts[spec.slug]
        rows.append(
            {
                "slug": spec.slug,
                "name": spec.name,
                "defined_in": "api" if catalogue.is_registered(spec.slug) else "file",
                "team": spec.team,
                "priority": spec.priority,
                "state": (st.status if st else "new")
                + (" (maintenance)" if st and st.suppressed and not spec.muted else "")
                + (" (muted)" if spec.muted else ""),
                "reason": st.reason if st else None,
                "last_heartbeat": last.at if last else None,
                "last_status": last.status if last else None,
                "in_window": count,
                "in_window_saturated": count >= kept_per_service(spec),
                "threshold": spec.threshold,
                "window_seconds": spec.window,
                "incident": st.incident.model_dump() if st and st.incident else None,
            }
        )
    checked = last_check(client)
    refused = store.refused()
    if as_json:
        echo_json({"services": rows, "last_check": checked, "refused": refused, "now": now})
        return
    header = ("SLUG", "TEAM", "PRI", "STATE", "LAST HEARTBEAT", "IN WINDOW", "INCIDENT")
    table: list[tuple[str, ...]] = [header]
    for r in rows:
        shown = f"{r['in_window']}{'+' if r['in_window_saturated'] else ''}/{r['threshold']}"
        seen = when(r["last_heartbeat"]) + (" fail" if r["last_status"] == "fail" else "")
        incident = r["incident"]["dedup_key"] if r["incident"] else "-"
        table.append((r["slug"], r["team"], r["priority"], r["state"], seen, shown, incident))
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    for row in table:
        click.echo("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    click.echo(f"\n{len(rows)} services; last check {_check_note(checked, now)}")
    registered = sum(r["defined_in"] == "api" for r in rows)
    if registered:
        click.echo(f"{registered} of them registered over the API")
    if refused:
        click.echo(
            "refused heartbeats: " + ", ".join(f"{k} {v}" for k, v in sorted(refused.items()))
        )
    if problem := engine().catalogue_refused():
        click.echo(f"warning: {problem}; the services above are those in force", err=True)


def _check_note(checked: float | None, now: float) -> str:
    idle = last_idle_check(engine().redis)
    if idle is not None and (checked is None or idle > checked):
        return (
            f"{when(checked)}: the worker's checks find no catalogue (the latest "
            f"{now - idle:.0f} s ago): HEARTBEAT_SERVICES_FILE is set here but not for the "
            "worker and beat; start them with it (dev stack: "
            "HEARTBEAT_SERVICES_FILE=FILE make run)"
        )
    if checked is None:
        return "never: no check has run (is `celery -A worker beat` running?)"
    return f"{when(checked)} ({now - checked:.0f} s ago)"


def _show_log(spec: ServiceSpec | None, slug: str, as_json: bool) -> None:
    if spec is None:
        raise BadInput(f"slug: unknown service {slug[:100]!r}")
    entries = engine().heartbeats.log(spec.slug)
    if as_json:
        echo_json(entries)
        return
    if not entries:
        click.echo(f"{slug}: no pings kept")
        return
    for entry in entries:
        head = f"{when(entry['at'])}  {entry['kind']:<5}  {inert(entry.get('via') or '-')}"
        if entry.get("rid"):
            head += f"  rid {entry['rid']}"
        click.echo(head)
        if entry.get("body"):
            for line in str(entry["body"]).splitlines()[:20]:
                click.echo(f"    {inert(line)}")
