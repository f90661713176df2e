"""The heartbeat catalogue: TOML, validation that names the service and field, maintenance
windows (one-off and cron in a time zone)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from config.catalogue import (
    CatalogueFile,
    RecurringWindow,
    load_catalogue,
    parse_catalogue,
    parse_duration,
)
from worker.exceptions import NotificationConfigError

GOOD = """
[services.billing-api]
name = "Billing API"
team = "payments"
priority = "P2"
window = "5m"
threshold = 3
grace = "30s"
runbook_url = "https://runbooks.example/billing-api"
routing_key_team = "dba"

[[services.billing-api.maintenance]]
start = 2026-12-01T22:00:00Z
end = 2026-12-01T23:30:00Z
reason = "database upgrade"

[[services.billing-api.maintenance]]
cron = "0 2 * * SUN"
duration = "2h"
timezone = "Europe/London"

[services.billing-api.flap]
failures_before_page = 2
successes_before_resolve = 3

[services.nightly-etl]
name = "Nightly ETL"
team = "data"
priority = "P4"
window = 86400
runbook_url = "https://runbooks.example/etl"
"""


def test_a_full_catalogue_loads_with_defaults_filled_in() -> None:
    catalogue = parse_catalogue(GOOD)
    billing = catalogue.services["billing-api"]
    assert (billing.slug, billing.name, billing.team, billing.priority) == (
        "billing-api",
        "Billing API",
        "payments",
        "P2",
    )
    assert (billing.window, billing.threshold, billing.grace, billing.span) == (300, 3, 30, 330)
    assert billing.paging_team == "dba"
    assert billing.dedup_key == "medic-heartbeat-billing-api"
    assert billing.flap.failures_before_page == 2
    assert billing.flap.successes_before_resolve == 3
    assert len(billing.maintenance) == 2
    etl = catalogue.services["nightly-etl"]
    assert (etl.threshold, etl.grace, etl.paging_team) == (1, 0, "data")
    assert (etl.flap.failures_before_page, etl.flap.successes_before_resolve) == (1, 1)
    assert etl.maintenance == ()


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(90, 90), (1.5, 1.5), ("90s", 90), ("5m", 300), ("1h", 3600), ("1d", 86400), ("250ms", 0.25)],
)
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ('window = "5 minutes"', "services.svc.window: "),
        ('window = "-5m"', "services.svc.window: "),
        ("window = 0", "services.svc.window: Input should be greater than 0"),
        (
            'priority = "P6"',
            "services.svc.priority: Input should be 'P1', 'P2', 'P3', 'P4' or 'P5'",
        ),
        ("threshold = 0", "services.svc.threshold: Input should be greater than or equal to 1"),
        ('runbook_url = "not a url"', "services.svc.runbook_url: "),
        ('name = " "', "services.svc.name: must be a non-blank single line"),
        # What intake would refuse in the page: the service could never be paged for.
        ('name = "Billing\\u2028API"', "services.svc.name: must be a non-blank single line"),
        ('team = "ops\\u0000"', "services.svc.team: must be a non-blank single line"),
        ('routing_key_team = "a\\u0007b"', "services.svc.routing_key_team: must be a non-blank"),
        ('colour = "red"', "services.svc.colour: Extra inputs are not permitted"),
        (
            '[[services.svc.maintenance]]\ncron = "61 * * * *"\nduration = "1h"',
            "services.svc.maintenance.0.cron: not a valid cron expression '61 * * * *'",
        ),
        (
            '[[services.svc.maintenance]]\ncron = "0 2 * * *"\nduration = "1h"\n'
            'timezone = "Mars/Olympus"',
            "services.svc.maintenance.0.timezone: unknown time zone 'Mars/Olympus'",
        ),
        (
            "[[services.svc.maintenance]]\nstart = 2026-12-01T23:00:00Z\n"
            "end = 2026-12-01T22:00:00Z",
            "services.svc.maintenance.0: end must be after start",
        ),
        (
            "[services.svc.flap]\nfailures_before_page = 0",
            "services.svc.flap.failures_before_page: Input should be greater than or equal to 1",
        ),
    ],
)
def test_a_bad_entry_fails_with_its_slug_and_field(entry: str, expected: str) -> None:
    base = {
        "name": '"Svc"',
        "team": '"ops"',
        "priority": '"P1"',
        "window": "60",
        "runbook_url": '"https://runbooks.example/svc"',
    }
    key = entry.split("=")[0].strip()
    lines = [f"{k} = {v}" for k, v in base.items() if k != key]
    if entry.startswith("["):
        text = "[services.svc]\n" + "\n".join(lines) + "\n" + entry
    else:
        text = "[services.svc]\n" + "\n".join([*lines, entry])
    with pytest.raises(NotificationConfigError) as caught:
        parse_catalogue(text, "services.toml")
    assert str(caught.value).startswith("services.toml: ")
    assert expected in str(caught.value)


def test_a_missing_required_field_is_named() -> None:
    with pytest.raises(
        NotificationConfigError, match=r"services\.svc\.runbook_url: Field required"
    ):
        parse_catalogue('[services.svc]\nname = "S"\nteam = "t"\npriority = "P1"\nwindow = 5')


def test_a_bad_slug_and_bad_toml_are_named() -> None:
    with pytest.raises(NotificationConfigError, match=r"services\.bad slug!: a slug is"):
        parse_catalogue('[services."bad slug!"]\nname = "x"')
    with pytest.raises(NotificationConfigError, match="not valid TOML"):
        parse_catalogue("[services.svc\nname=")
    with pytest.raises(NotificationConfigError, match="cannot be read"):
        load_catalogue("/nonexistent/services.toml")


def test_one_off_windows_need_an_offset_or_a_time_zone() -> None:
    catalogue = parse_catalogue(
        GOOD
        + """
[services.local]
name = "Local"
team = "ops"
priority = "P3"
window = 60
runbook_url = "https://runbooks.example/local"
[[services.local.maintenance]]
start = 2026-12-01T09:00:00
end = 2026-12-01T10:00:00
timezone = "America/New_York"
"""
    )
    spec = catalogue.services["local"]
    inside = datetime(2026, 12, 1, 14, 30, tzinfo=UTC)  # 09:30 in New York
    assert spec.maintenance_until(inside) == datetime(2026, 12, 1, 15, 0, tzinfo=UTC)
    assert spec.maintenance_until(datetime(2026, 12, 1, 9, 30, tzinfo=UTC)) is None


def test_a_recurring_window_follows_its_time_zone_and_summer_time() -> None:
    window = RecurringWindow(cron="0 2 * * SUN", duration="2h", timezone="Europe/London")
    # Winter: 02:00 London is 02:00 UTC.
    winter_sunday = datetime(2026, 11, 22, 2, 30, tzinfo=UTC)
    assert window.active_until(winter_sunday) == datetime(2026, 11, 22, 4, 0, tzinfo=UTC)
    # Summer: 02:00 London is 01:00 UTC, so 03:30 UTC is already outside.
    summer_sunday = datetime(2026, 7, 5, 1, 30, tzinfo=UTC)
    assert window.active_until(summer_sunday) == datetime(2026, 7, 5, 3, 0, tzinfo=UTC)
    assert window.active_until(datetime(2026, 7, 5, 3, 30, tzinfo=UTC)) is None
    # Monday is not in the window at all.
    assert window.active_until(datetime(2026, 11, 23, 2, 30, tzinfo=UTC)) is None
    # Exactly at the start it is active; exactly at the end it is not.
    assert window.active_until(datetime(2026, 11, 22, 2, 0, tzinfo=UTC)) is not None
    assert window.active_until(datetime(2026, 11, 22, 4, 0, tzinfo=UTC)) is None


def test_a_recurring_window_in_a_non_utc_zone_is_not_read_as_utc() -> None:
    kolkata = RecurringWindow(cron="0 9 * * *", duration="30m", timezone="Asia/Kolkata")
    nine_in_kolkata = datetime(2026, 11, 23, 9, 10, tzinfo=ZoneInfo("Asia/Kolkata"))
    assert kolkata.active_until(nine_in_kolkata.astimezone(UTC)) is not None
    nine_utc = datetime(2026, 11, 23, 9, 10, tzinfo=UTC)
    assert kolkata.active_until(nine_utc) is None


def test_the_catalogue_file_is_reread_when_it_changes_and_a_bad_edit_is_refused(
    tmp_path: Path,
) -> None:
    path = tmp_path / "services.toml"
    path.write_text(GOOD)
    watched = CatalogueFile(path)
    assert set(watched.current().services) == {"billing-api", "nightly-etl"}
    path.write_text(GOOD.split("[services.nightly-etl]")[0])
    later = datetime.now().timestamp() + 5
    import os

    os.utime(path, (later, later))
    assert set(watched.current().services) == {"billing-api"}
    path.write_text(GOOD + "\n[services.broken]\nname = 1\n")
    os.utime(path, (later + 5, later + 5))
    assert set(watched.current().services) == {"billing-api"}  # last good one stays
    assert watched.last_error is not None
    assert "services.broken" in watched.last_error


def test_maintenance_until_takes_the_latest_end_of_overlapping_windows() -> None:
    spec = parse_catalogue(GOOD).services["billing-api"]
    sunday_2_30_london = datetime(2026, 11, 29, 2, 30, tzinfo=UTC)
    assert spec.maintenance_until(sunday_2_30_london) == datetime(2026, 11, 29, 4, 0, tzinfo=UTC)
    upgrade = datetime(2026, 12, 1, 22, 15, tzinfo=UTC)
    assert spec.maintenance_until(upgrade) == upgrade.replace(hour=23, minute=30)
    assert spec.maintenance_until(upgrade + timedelta(hours=2)) is None


def test_the_example_catalogue_in_the_repository_is_valid() -> None:
    example = Path(__file__).resolve().parent.parent / "services.example.toml"
    catalogue = load_catalogue(example)
    assert set(catalogue.services) == {"billing-api", "nightly-backup"}
