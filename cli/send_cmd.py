"""``gds-notify send``, ``ack``, ``resolve`` and ``pagerduty-test``."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sys
import time
import uuid
from typing import Any

import click
import redis

import tasks
from cli.common import EXIT_FAILED, BadInput, Failed, note, one_line_errors
from config.queues import QUEUE_OF
from config.settings import TEAM_KEY_PREFIX, get_settings, normalize_team
from worker.channels import Channel
from worker.engine.runtime import engine
from worker.engine.workers import ALIVE_SECONDS
from worker.exceptions import NotificationError
from worker.job_request import BODY_MAX_CHARS
from worker.notification import Notification, NotificationPriority
from worker.providers.pagerduty import PagerDutyProvider
from worker.redact import mask


def _metadata(pairs: tuple[str, ...], as_json: str | None) -> dict[str, Any]:
    metadata: dict[str, Any] = {}
    if as_json:
        try:
            loaded = json.loads(as_json)
        except ValueError as exc:
            raise BadInput(f"--metadata: not JSON ({exc})") from None
        except RecursionError:
            raise BadInput("--metadata: nested deeper than JSON is read here") from None
        if not isinstance(loaded, dict):
            raise BadInput("--metadata: must be a JSON object")
        metadata.update(loaded)
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise BadInput(f"--meta: expected KEY=VALUE, got {pair!r}")
        try:
            metadata[key] = json.loads(raw)
        except ValueError:
            metadata[key] = raw
        except RecursionError:
            raise BadInput(f"--meta {key}: nested deeper than JSON is read here") from None
    return metadata


def _read_body(body_file: Any) -> str:
    try:
        # Never more than a body may hold: an endless stdin is not read to its end.
        body = str(body_file.read(BODY_MAX_CHARS + 1))
        if len(body) > BODY_MAX_CHARS:
            raise BadInput(
                f"--body-file: more than {BODY_MAX_CHARS} characters, the most a body may "
                "hold: send a link to the rest"
            )
        return body
    except UnicodeDecodeError as exc:
        raise BadInput(
            f"--body-file: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
            f"{exc.start}): convert it first, e.g. with iconv -f latin1 -t utf-8"
        ) from None


@click.command()
@click.argument("recipient")
@click.argument("subject")
@click.option("--body", default="", help="Plain-text body (PagerDuty: custom details).")
@click.option("--body-file", type=click.File("r"), help="Read the body from a file ('-' = stdin).")
@click.option("--html", "body_html", default=None, help="HTML alternative for email.")
@click.option(
    "-p",
    "--priority",
    type=click.Choice([p.value for p in NotificationPriority], case_sensitive=False),
    default="normal",
    show_default=True,
    help="critical and emergency page through PagerDuty; the rest is email.",
)
@click.option("--alert-name", default=None, help="Alert rule name (PagerDuty class).")
@click.option("--db-instance-id", default=None, help="Database instance the alert is about.")
@click.option(
    "--idempotency-id", default=None, help="Stable identity: copies within the TTL are sent once."
)
@click.option(
    "--meta",
    "meta_pairs",
    multiple=True,
    metavar="KEY=VALUE",
    help="Metadata entry (repeatable); VALUE is JSON when it parses, else text.",
)
@click.option(
    "--metadata", "metadata_json", default=None, metavar="JSON", help="Metadata as one JSON object."
)
@click.option("--team", default=None, help="Team: picks PAGERDUTY_ROUTING_KEY_<TEAM>.")
@click.option(
    "--channel",
    type=click.Choice([c.value for c in Channel]),
    default=None,
    help="Force one channel instead of the routing rules.",
)
@click.option(
    "--wait", is_flag=True, help="Follow the job until delivered, deduplicated or dead-lettered."
)
@click.option(
    "--timeout",
    default=120.0,
    show_default=True,
    type=click.FloatRange(1),
    help="Seconds --wait follows the job before giving up.",
)
@one_line_errors
def send(
    recipient: str,
    subject: str,
    body: str,
    body_file: Any,
    body_html: str | None,
    priority: str,
    alert_name: str | None,
    db_instance_id: str | None,
    idempotency_id: str | None,
    meta_pairs: tuple[str, ...],
    metadata_json: str | None,
    team: str | None,
    channel: str | None,
    wait: bool,
    timeout: float,
) -> None:
    """Queue a notification to RECIPIENT (an address, or the affected component for a page)
    with SUBJECT; print its job id.

    \b
    Exit codes: 0 queued (with --wait: delivered, or a duplicate of a delivered job);
    1 dead-lettered, timed out or Redis unreachable; 2 invalid notification.
    """
    if body_file is not None and body:
        raise click.UsageError("--body and --body-file both give the body: use one of them")
    payload: dict[str, Any] = {
        "recipient": recipient,
        "subject": subject,
        "body": _read_body(body_file) if body_file else body,
        "body_html": body_html,
        "priority": priority.lower(),
        "alert_name": alert_name,
        "db_instance_id": db_instance_id,
        "idempotency_id": idempotency_id,
        "metadata": _metadata(meta_pairs, metadata_json),
    }
    note_team_key(team)
    started = time.time()
    job_id = tasks.enqueue(payload, team=team, channel=channel)
    note_no_worker(job_id)
    if not wait:
        note_duplicate(job_id, since=started)
        click.echo(job_id)
        return
    follow(job_id, timeout, since=started)


def note_duplicate(job_id: str, since: float) -> None:
    """Say (stderr) when the notification was a copy of a job accepted before ``since`` (same
    idempotency id): the id printed is that job's, and nothing new was queued."""
    try:
        record = engine().jobs.get(job_id)
    except redis.RedisError:
        return
    if record is not None and _copy_of_earlier(record, since):
        note(
            f"same idempotency id as job {job_id}, accepted before: nothing new was queued "
            f"(`{program()} status {job_id}` follows that job)"
        )


def _copy_of_earlier(record: dict[str, Any], since: float) -> bool:
    """Whether a send since ``since`` was dropped as a copy of ``record``'s job, which
    came before it (the id a send prints is then that job's)."""
    return bool(record["duplicates"]) and record["created_at"] < since


@click.command()
@click.argument("dedup_key")
@click.option("--team", default=None, help="Team whose routing key opened the incident.")
@click.option("--wait", is_flag=True, help="Follow the job until it is delivered or dead.")
@click.option("--timeout", default=120.0, show_default=True, type=click.FloatRange(1))
@one_line_errors
def ack(dedup_key: str, team: str | None, wait: bool, timeout: float) -> None:
    """Acknowledge the incident with DEDUP_KEY (through the queue); print the job id."""
    note_team_key(team)
    _lifecycle(tasks.acknowledge(dedup_key, team=team), wait, timeout)


@click.command()
@click.argument("dedup_key")
@click.option("--team", default=None, help="Team whose routing key opened the incident.")
@click.option("--wait", is_flag=True, help="Follow the job until it is delivered or dead.")
@click.option("--timeout", default=120.0, show_default=True, type=click.FloatRange(1))
@one_line_errors
def resolve(dedup_key: str, team: str | None, wait: bool, timeout: float) -> None:
    """Resolve the incident with DEDUP_KEY (through the queue); print the job id."""
    note_team_key(team)
    _lifecycle(tasks.resolve(dedup_key, team=team), wait, timeout)


def note_team_key(team: str | None) -> None:
    """Say (stderr) when ``team`` has no routing key of its own in the settings here, so
    its pages go with the default key: the documented fallback, but maybe not the
    intent. Producers that hold no keys at all (the workers do) say nothing."""
    settings = get_settings()
    if not team or not (settings.pagerduty_routing_key or settings.pagerduty_team_routing_keys):
        return
    if settings.routing_key_name(team) == "PAGERDUTY_ROUTING_KEY":
        own = f"{TEAM_KEY_PREFIX}{normalize_team(team).upper()}"
        if not re.fullmatch(r"[A-Z0-9_]+", own):
            note(
                f"team {team!r} cannot have a routing key of its own ({TEAM_KEY_PREFIX}<TEAM> "
                "takes letters, digits, - and _): its pages use PAGERDUTY_ROUTING_KEY"
            )
        else:
            note(f"{own} is not set here: team {team}'s pages use PAGERDUTY_ROUTING_KEY")


def note_no_worker(job_id: str) -> None:
    """Say (stderr) when no worker serves the job's queues: on a machine where nothing
    else runs, the default REDIS_URL takes the job, and it would wait there unseen."""
    eng = engine()
    try:
        queues = [QUEUE_OF[c] for c in eng.jobs.channels(job_id)]
        served = {q for w in eng.workers.seen(ALIVE_SECONDS) for q in w.queues}
    except redis.RedisError:
        return  # the job is queued: a failed look must not read as a failed send
    idle = [q for q in queues if q not in served]
    if idle:
        note(
            f"no worker is serving {', '.join(idle)}: the job waits in Redis at "
            f"{eng.settings.redis_address.shown()} until one starts (`make run`, the "
            "Procfile, or `docker compose up`; `gds-notify dev --env` points a shell at a "
            "running dev stack)"
        )


def _lifecycle(job_id: str, wait: bool, timeout: float) -> None:
    note_no_worker(job_id)
    if wait:
        follow(job_id, timeout, since=time.time())
    else:
        click.echo(job_id)


def follow(job_id: str, timeout: float, since: float) -> None:
    """Print the job's progress (stderr) until it ends; the outcome goes to stdout."""

    store = engine().jobs
    shown = 0
    end = time.monotonic() + timeout
    announced = False
    while True:
        record = store.get(job_id)
        if record is None:
            raise Failed(f"job {job_id}: no record (expired, or Redis was emptied)")
        if not announced:
            copy = _copy_of_earlier(record, since)
            first = "deduplicated: same idempotency id as " if copy else ""
            channels = ", ".join(record["channels"])
            key = f" (dedup key {record['dedup_key']})" if record.get("dedup_key") else ""
            click.echo(f"{first}job {job_id} queued for {channels}{key}", err=True)
            announced = True
        for attempt in record["attempts"][shown:]:
            click.echo("  " + _attempt_line(attempt), err=True)
        shown = len(record["attempts"])
        status = record["status"]
        if status == "delivered":
            click.echo(f"{job_id} delivered")
            _next_step(record)
            return
        if status in ("dead-lettered", "partly dead"):
            click.echo(f"{job_id} {status}: see `gds-notify status {job_id}`")
            raise SystemExit(EXIT_FAILED)
        if time.monotonic() > end:
            raise Failed(f"job {job_id} still {status} after {timeout:.0f} s")
        time.sleep(0.1)


def _next_step(record: dict[str, Any]) -> None:
    """After a trigger: the command that acknowledges or resolves its incident."""
    if "trigger" not in str(record.get("action")) or not record.get("dedup_key"):
        return
    team = f" --team {shlex.quote(record['team'])}" if record.get("team") else ""
    key = shlex.quote(record["dedup_key"])
    click.echo(f"  incident open: `{program()} resolve {key}{team}` resolves it", err=True)


def program() -> str:
    """This command as the shell finds it, so a next step printed with it runs as printed:
    ``gds-notify`` when that is the one on the PATH, else the path it was started by (such
    as ``.venv/bin/gds-notify``, the virtualenv not active)."""
    started = sys.argv[0]
    if os.path.basename(started) != "gds-notify":
        return "gds-notify"  # not started as the command (a test runner, python -m)
    found = shutil.which("gds-notify")
    if found is not None and os.path.samefile(found, started):
        return "gds-notify"
    return shlex.quote(started)


def _attempt_line(a: dict[str, Any]) -> str:
    parts = [a["channel"], f"#{a['attempt']}" if a.get("attempt") else "-", a["outcome"]]
    if a.get("latency_ms") is not None:
        parts.append(f"{a['latency_ms']:.0f} ms")
    if a.get("error"):
        parts.append(f"{a.get('error_class')}: {a['error']}")
    if a.get("retry_in") is not None:
        parts.append(f"next try in {a['retry_in']:.1f} s")
    return "  ".join(parts)


@click.command("pagerduty-test")
@click.option("--team", default=None, help="Test this team's routing key instead.")
@one_line_errors
def pagerduty_test(team: str | None) -> None:
    """Send a test trigger, then its resolve, straight to PAGERDUTY_API_URL with the
    configured key (like the curl test in PagerDuty's integration guide).

    Exit codes: 0 both accepted; 1 PagerDuty refused or could not be reached; 2 no key.
    """

    settings = get_settings()
    key = settings.routing_key_for(team)
    dedup_key = f"gds-notify-test-{uuid.uuid4().hex[:12]}"
    fallback = (
        f" (team {team} has no key of its own)"
        if team and settings.routing_key_name(team) == "PAGERDUTY_ROUTING_KEY"
        else ""
    )
    note = Notification(
        recipient="gds-notify pagerduty-test",
        subject="Test event from gds-notify pagerduty-test (resolved at once)",
        body="Sent to check the integration; resolved immediately.",
        priority="low",
        idempotency_id=dedup_key,
    )
    click.echo(f"PagerDuty API {settings.pagerduty_api_url}")
    click.echo(f"routing key   {settings.routing_key_name(team)} {mask(key)}{fallback}")
    try:
        with PagerDutyProvider(
            key.get_secret_value(),
            timeout=settings.pagerduty_timeout,
            api_url=settings.pagerduty_api_url,
        ) as provider:
            provider.trigger(note)
            click.echo(f"trigger accepted   dedup_key {dedup_key}")
            provider.resolve(dedup_key)
            click.echo("resolve accepted")
    except NotificationError as exc:
        raise Failed(f"PagerDuty test failed: {exc}") from None
