"""Prometheus Alertmanager as a producer: a real Alertmanager (Debian's package) sending
its webhook to the API, and the webhook's edge cases posted as Alertmanager writes them."""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from cli.main import main
from sandbox import SandboxServer
from tests.api_server import ADMIN_TOKEN, HEARTBEAT_TOKEN, NOTIFY_TOKEN, ApiServer
from tests.conftest import TEAM_KEY, SandboxClient, free_port, wait_for
from worker.engine.runtime import engine

JSON = {"content-type": "application/json"}
ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
AMTOOL = shutil.which("amtool")


@pytest.fixture
def api(service_env: SandboxServer) -> Iterator[SandboxClient]:
    client = SandboxClient(service_env)
    yield client
    client.close()


def alert(
    status: str = "firing",
    fingerprint: str = "c0ffee0000000001",
    starts: str = "2026-12-02T01:00:00Z",
    **labels: str,
) -> dict[str, Any]:
    return {
        "status": status,
        "labels": {"alertname": "DiskFull", "instance": "db-1:9100", "severity": "critical"}
        | labels,
        "annotations": {"summary": "Disk full on db-1", "description": "98% used on /var"},
        "startsAt": starts,
        "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else "2026-12-02T01:05:00Z",
        "generatorURL": "http://prometheus.example:9090/graph?g0.expr=disk",
        "fingerprint": fingerprint,
    }


def webhook(*alerts: dict[str, Any], status: str = "firing") -> dict[str, Any]:
    return {
        "version": "4",
        "groupKey": '{}:{alertname="DiskFull"}',
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "gds",
        "groupLabels": {"alertname": "DiskFull"},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.example:9093",
        "alerts": list(alerts),
    }


def job(job_id: str, state: str = "delivered") -> Any:
    return wait_for(lambda: (r := engine().jobs.get(job_id)) and r["status"] == state and r)


def test_a_firing_alert_pages_with_its_labels_and_a_repeat_queues_nothing(
    api_server: ApiServer, celery_worker: Any, api: SandboxClient
) -> None:
    with api_server.client() as http:
        first = http.post("/v1/alertmanager", json=webhook(alert(team="dba")))
        repeat = http.post("/v1/alertmanager", json=webhook(alert(team="dba")))
    assert first.status_code == repeat.status_code == 202
    [outcome] = first.json()["alerts"]
    assert outcome["status"] == "firing"
    assert outcome["duplicate"] is False
    [again] = repeat.json()["alerts"]
    assert again["duplicate"] is True
    assert again["job_ids"] == outcome["job_ids"]
    record = job(outcome["job_ids"][0])
    assert record["source"] == "alertmanager"
    assert record["duplicates"] == 1
    [incident] = api.incidents()
    assert incident["dedup_key"] == "alertmanager-c0ffee0000000001"
    assert incident["summary"] == "Disk full on db-1"
    assert incident["severity"] == "critical"
    assert incident["routing_key"].endswith(TEAM_KEY[-4:])  # the team label's key
    [event] = [e["body"] for e in api.events() if e["status"] == 202]
    details = event["payload"]["custom_details"]
    assert details["labels"]["instance"] == "db-1:9100"
    assert details["annotations"]["description"] == "98% used on /var"
    assert event["payload"]["component"] == "db-1:9100"
    assert event["payload"]["class"] == "DiskFull"
    assert event["links"] == [
        {"href": "http://prometheus.example:9090/graph?g0.expr=disk", "text": "Alert source"}
    ]
    assert event["client"] == "Alertmanager"
    assert event["client_url"] == "http://alertmanager.example:9093"


def test_a_resolved_alert_resolves_its_incident_and_mails_where_it_mailed(
    api_server: ApiServer, celery_worker: Any, api: SandboxClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from config.settings import get_settings

    monkeypatch.setenv(
        "ROUTING_RULES",
        '[{"alert_name": "Queue*", "channels": ["email"], "email_to": "ops@example.com"}]',
    )
    get_settings.cache_clear()
    queue = {"alertname": "QueueSlow", "severity": "warning"}
    with api_server.client() as http:
        firing = http.post(
            "/v1/alertmanager",
            json=webhook(alert(), alert(fingerprint="beef000000000002", **queue)),
        ).json()["alerts"]
        for outcome in firing:
            job(outcome["job_ids"][0])
        ended = webhook(
            alert("resolved"),
            alert("resolved", fingerprint="beef000000000002", **queue),
            status="resolved",
        )
        resolved = http.post("/v1/alertmanager", json=ended).json()["alerts"]
        # Sent again (a retry, the group's next notification): nothing new is queued.
        again = http.post("/v1/alertmanager", json=ended).json()["alerts"]
    for outcome in resolved:
        [job_id] = outcome["job_ids"]
        job(job_id)
    assert [o["job_ids"] for o in again] == [o["job_ids"] for o in resolved]
    assert [o["duplicate"] for o in again] == [True, True]
    assert [o["duplicate"] for o in resolved] == [False, False]
    time.sleep(0.5)  # what a second resolve would have sent
    [incident] = api.incidents()
    assert incident["status"] == "resolved"
    assert [t["action"] for t in incident["timeline"]] == ["trigger", "resolve"]
    subjects = sorted(m["subject"] for m in api.messages())
    assert subjects == ["Disk full on db-1", "[RESOLVED] Disk full on db-1"]
    assert {r for m in api.messages() for r in m["rcpt_tos"]} == {"ops@example.com"}


def test_an_alert_firing_again_from_the_same_start_after_its_resolve_pages_again(
    api_server: ApiServer, celery_worker: Any, api: SandboxClient
) -> None:
    """A Prometheus silent past resolve_timeout (Alertmanager resolves its alerts), then
    back with its `for` state: the alert fires again with its old startsAt. Its first
    firing's idempotency id must not take it for a repeat: nobody would be paged."""
    ended = alert("resolved") | {"endsAt": "2026-12-02T01:05:00Z"}
    ended_again = alert("resolved") | {"endsAt": "2026-12-02T01:30:00Z"}
    with api_server.client() as http:
        steps = []
        for hook in (
            webhook(alert()),
            webhook(ended, status="resolved"),
            webhook(alert()),  # back, from the same start
            webhook(ended, status="resolved"),  # a late copy of the first resolution
            webhook(alert()),  # a repeat of the firing: still a repeat
            webhook(ended_again, status="resolved"),
            webhook(ended_again, status="resolved"),  # that resolution sent twice
        ):
            [outcome] = http.post("/v1/alertmanager", json=hook).json()["alerts"]
            job(outcome["job_ids"][0])
            steps.append(outcome["duplicate"])
    assert steps == [False, False, False, True, True, False, True]
    incidents = api.incidents()
    assert [i["status"] for i in incidents] == ["resolved", "resolved"]
    assert [[t["action"] for t in i["timeline"]] for i in incidents] == [["trigger", "resolve"]] * 2


def test_an_alert_that_cannot_be_a_notification_is_kept_and_the_rest_go_out(
    api_server: ApiServer, celery_worker: Any, api: SandboxClient
) -> None:
    bad = alert(fingerprint="bad0000000000003", team="dba\nX-Evil: 1")
    with api_server.client() as http:
        answer = http.post("/v1/alertmanager", json=webhook(bad, alert()))
        not_v4 = http.post("/v1/alertmanager", json=webhook(alert()) | {"version": "3"})
    assert answer.status_code == 202
    kept, sent = answer.json()["alerts"]
    assert kept["job_ids"] == []
    assert "team: must be a non-blank single line" in kept["error"]
    letter = engine().dead_letters.get(kept["dead_letter"])
    assert letter is not None
    assert letter["channel"] == "intake"
    assert letter["reason"].startswith("alerts.0: invalid notification: team")
    job(sent["job_ids"][0])
    assert [i["dedup_key"] for i in api.incidents()] == ["alertmanager-c0ffee0000000001"]
    assert not_v4.status_code == 422
    assert not_v4.json()["errors"][0]["field"] == "version"


def test_an_alert_whose_summary_or_instance_spans_lines_pages_on_one_line(
    api_server: ApiServer, celery_worker: Any, api: SandboxClient
) -> None:
    """Alertmanager does not read the answer: refusing a multi-line summary would lose the
    page. A field that routes (the team) is still refused (the test above)."""
    block = alert() | {"annotations": {"summary": "Disk full\r\non db-1\n", "description": "a\nb"}}
    odd = alert(fingerprint="c0ffee0000000002", instance="db-2\u2028:9100")
    odd["annotations"] = {"summary": "\n"}  # nothing to say: named by the alert instead
    with api_server.client() as http:
        answer = http.post("/v1/alertmanager", json=webhook(block, odd))
    assert answer.status_code == 202
    for outcome in answer.json()["alerts"]:
        assert outcome["dead_letter"] is None, outcome
        job(outcome["job_ids"][0])
    incidents = {i["dedup_key"]: i for i in api.incidents()}
    assert incidents["alertmanager-c0ffee0000000001"]["summary"] == "Disk full on db-1"
    second = incidents["alertmanager-c0ffee0000000002"]
    assert second["summary"] == "DiskFull on db-2 :9100"
    assert second["payload"]["payload"]["component"] == "db-2 :9100"  # the recipient
    assert engine().dead_letters.list() == []


def test_a_group_past_the_api_body_limit_is_taken_whole_in_a_wide_outage(
    api_server: ApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Alertmanager does not retry a 413: a group over API_MAX_BODY_BYTES, as a wide outage
    makes one (2,500 node alerts), was refused whole and paged nobody."""
    alerts = [
        alert(fingerprint=f"{i:016x}", instance=f"node-{i}.prod.example:9100", job="node")
        | {"annotations": {"summary": f"node-{i} down", "description": "x" * 300}}
        for i in range(2_500)
    ]
    body = json.dumps(webhook(*alerts))
    assert len(body) > engine().settings.api_max_body_bytes
    anonymous = httpx.post(f"{api_server.url}/v1/alertmanager", content=body, headers=JSON)
    ping_key = httpx.post(  # a token, but not one that may send notifications
        f"{api_server.url}/v1/alertmanager",
        content=body,
        headers=JSON | {"Authorization": f"Bearer {HEARTBEAT_TOKEN}"},
    )
    with api_server.client() as http:
        answer = http.post("/v1/alertmanager/", content=body, headers=JSON)  # a slash too
        over = http.post(
            "/v1/alertmanager",
            content=b"x" * (engine().settings.api_max_alertmanager_body_bytes + 1),
            headers=JSON,
        )
    # The larger bound is for a caller with a token: before any route runs, it is work.
    for refused in (anonymous, ping_key):
        assert refused.status_code == 413
        assert "(API_MAX_BODY_BYTES)" in refused.json()["error"]
    assert answer.status_code == 202, answer.text[:300]
    outcomes = answer.json()["alerts"]
    assert len(outcomes) == 2_500
    assert all(len(o["job_ids"]) == 1 and o["dead_letter"] is None for o in outcomes)
    assert over.status_code == 413
    # What a receiver's max_alerts cut never reaches us: said, since it will not page.
    with caplog.at_level("WARNING", logger="api.routes.alertmanager"), api_server.client() as http:
        cut = webhook(alert()) | {"truncatedAlerts": 7}
        assert http.post("/v1/alertmanager", json=cut).status_code == 202
    assert "7 alerts of group '{}:{alertname=\"DiskFull\"}' were left out" in caplog.text
    assert over.json()["error"] == (
        f"the body is over {engine().settings.api_max_alertmanager_body_bytes} bytes "
        "(API_MAX_ALERTMANAGER_BODY_BYTES)"
    )


@pytest.mark.parametrize("replayed_by", ["the API, in order", "dlq replay --all"])
def test_a_resolved_alerts_dead_letter_replays_as_its_resolve_and_repeats_keep_one_letter(
    api_server: ApiServer,
    celery_worker: Any,
    api: SandboxClient,
    monkeypatch: pytest.MonkeyPatch,
    replayed_by: str,
) -> None:
    """An alert routed to email with no recipient is dead-lettered firing, again on
    Alertmanager's repeat (the same letter, first seen when it first was), and resolved.
    Once the route is mended, the firing letter replays as the trigger and the resolved
    one as its resolve (`--all` replays the oldest first): the incident ends resolved, and
    no replay triggers a second time."""
    from config.settings import get_settings

    monkeypatch.setenv("ROUTING_RULES", '[{"alert_name": "Queue*", "channels": ["email"]}]')
    get_settings.cache_clear()
    queue = alert(fingerprint="beef000000000004", alertname="QueueSlow", severity="warning")
    gone = queue | {"status": "resolved", "endsAt": "2026-12-02T01:05:00Z"}
    with api_server.client() as http:
        [firing] = http.post("/v1/alertmanager", json=webhook(queue)).json()["alerts"]
        first = engine().dead_letters.get(firing["dead_letter"])
        time.sleep(0.01)
        [repeat] = http.post("/v1/alertmanager", json=webhook(queue)).json()["alerts"]
        [resolved] = http.post("/v1/alertmanager", json=webhook(gone, status="resolved")).json()[
            "alerts"
        ]
    assert firing["job_ids"] == repeat["job_ids"] == resolved["job_ids"] == []
    assert firing["dead_letter"] == repeat["dead_letter"] != resolved["dead_letter"]
    assert len(engine().dead_letters.list()) == 2
    again = engine().dead_letters.get(firing["dead_letter"])
    assert first is not None
    assert again is not None
    assert again["first_seen"] == first["first_seen"] < again["dead_at"]

    monkeypatch.setenv("ROUTING_RULES", '[{"alert_name": "Queue*", "channels": ["pagerduty"]}]')
    get_settings.cache_clear()
    if replayed_by == "dlq replay --all":
        done = CliRunner().invoke(main, ["dlq", "replay", "--all"])
        assert done.exit_code == 0, done.output
        new_jobs = re.findall(r"-> job (\w+)", done.output)
    else:
        with api_server.client(ADMIN_TOKEN) as admin:
            answers = [
                admin.post(f"/v1/dead-letters/{letter}/replay")
                for letter in (firing["dead_letter"], resolved["dead_letter"])
            ]
        assert [a.status_code for a in answers] == [202, 202], [a.text for a in answers]
        new_jobs = [a.json()["job_id"] for a in answers]
    for job_id in new_jobs:
        job(job_id)
    [incident] = api.incidents(dedup_key="alertmanager-beef000000000004")
    assert incident["status"] == "resolved"
    assert [t["action"] for t in incident["timeline"]] == ["trigger", "resolve"]
    assert engine().dead_letters.list() == []


def test_a_resolved_alert_is_never_refused_for_its_emails_sake(
    api_server: ApiServer, celery_worker: Any, api: SandboxClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rule that pages and emails, and names no one to email: the firing alert pages and
    its email is dead-lettered; so for the resolved one, whose resolve goes out."""
    from config.settings import get_settings

    rule = {"alert_name": "Queue*", "channels": ["pagerduty", "email"]}
    monkeypatch.setenv("ROUTING_RULES", json.dumps([rule]))
    get_settings.cache_clear()
    queue = alert(fingerprint="beef000000000005", alertname="QueueSlow", severity="warning")
    gone = queue | {"status": "resolved", "endsAt": "2026-12-02T01:05:00Z"}
    with api_server.client() as http:
        [firing] = http.post("/v1/alertmanager", json=webhook(queue)).json()["alerts"]
        job(firing["job_ids"][0], state="dead-lettered")
        [resolved] = http.post("/v1/alertmanager", json=webhook(gone, status="resolved")).json()[
            "alerts"
        ]
    assert "dead_letter" not in resolved or resolved["dead_letter"] is None, resolved
    resolve_job, email_job = resolved["job_ids"]
    job(resolve_job)
    job(email_job, state="dead-lettered")
    [incident] = api.incidents(dedup_key="alertmanager-beef000000000005")
    assert incident["status"] == "resolved"


def grouped(*alerts: dict[str, Any], **common: str) -> dict[str, Any]:
    """A group's webhook as Alertmanager writes it, its status from its alerts."""
    firing = any(a["status"] == "firing" for a in alerts)
    return webhook(*alerts, status="firing" if firing else "resolved") | {
        "commonLabels": {"alertname": "DiskFull"} | common
    }


def node(i: int, status: str = "firing", **labels: str) -> dict[str, Any]:
    return alert(status, fingerprint=f"{i:016x}", instance=f"node-{i}:9100", **labels) | {
        "annotations": {"summary": f"Disk full on node-{i}"}
    }


def test_a_group_is_one_incident_that_follows_its_firing_alerts_and_resolves_once(
    api_server: ApiServer, celery_worker: Any, api: SandboxClient
) -> None:
    """?incident=group: one incident per group, as Alertmanager's own PagerDuty receiver
    makes it. A repeat of the same firing alerts queues nothing; a change triggers again
    (PagerDuty adds it to the open incident); the group resolved resolves it, once."""
    steps = [
        grouped(node(1), node(2), node(3), team="dba"),
        grouped(node(1), node(2), node(3), team="dba"),  # repeat_interval
        grouped(node(1), node(2), node(3, "resolved"), team="dba"),  # one resolved
        grouped(node(1, "resolved"), node(2, "resolved"), team="dba"),
        grouped(node(1, "resolved"), node(2, "resolved"), team="dba"),  # sent again
    ]
    outcomes = []
    with api_server.client() as http:
        for hook in steps:
            answer = http.post("/v1/alertmanager?incident=group", json=hook)
            assert answer.status_code == 202, answer.text
            assert answer.json()["alerts"] == []
            outcome = answer.json()["group"]
            for job_id in outcome["job_ids"]:
                job(job_id)
            outcomes.append(outcome)
    assert [(o["status"], o["firing"], o["duplicate"]) for o in outcomes] == [
        ("firing", 3, False),
        ("firing", 3, True),
        ("firing", 2, False),
        ("resolved", 0, False),
        ("resolved", 0, True),
    ]
    assert outcomes[1]["job_ids"] == outcomes[0]["job_ids"]
    time.sleep(0.5)  # what a second resolve would have sent
    [incident] = api.incidents()
    assert incident["dedup_key"] == outcomes[0]["dedup_key"]
    assert incident["dedup_key"].startswith("alertmanager-group-")
    assert incident["routing_key"].endswith(TEAM_KEY[-4:])  # the group's common team
    assert incident["status"] == "resolved"
    assert [t["action"] for t in incident["timeline"]] == ["trigger", "trigger", "resolve"]
    first, second = [e["body"] for e in api.events() if e["body"]["event_action"] == "trigger"]
    assert first["payload"]["summary"] == "[FIRING:3] DiskFull"
    assert second["payload"]["summary"] == "[FIRING:2] DiskFull"
    details = second["payload"]["custom_details"]
    assert (details["num_firing"], details["num_resolved"]) == (2, 1)
    assert [a["labels"]["instance"] for a in details["firing"]] == ["node-1:9100", "node-2:9100"]
    assert second["payload"]["class"] == "DiskFull"
    assert second["payload"]["severity"] == "critical"


def test_a_groups_incident_keeps_its_team_and_priority_and_resolves_where_it_went(
    api_server: ApiServer, celery_worker: Any, api: SandboxClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A warning mails; a critical joins and pages, on the team's key the incident opened
    with, though the group's common team changed; the critical resolves and leaves the
    group, and the incident stays a page. Its resolve goes exactly where it went (the
    team's key; the recipients mailed then, not those the rules name by now), once."""
    from config.settings import get_settings

    def rules(to: str) -> None:
        rule = {"priority": ["normal"], "channels": ["email"], "email_to": to}
        monkeypatch.setenv("ROUTING_RULES", json.dumps([rule]))
        get_settings.cache_clear()

    rules("ops@example.com")
    warning = {"severity": "warning"}
    late = {"endsAt": "2026-12-02T01:06:00Z"}
    steps = [
        grouped(node(2, team="dba", **warning), team="dba"),
        grouped(node(2, team="dba", **warning), team="dba"),  # a repeat, after the rules change
        grouped(node(1, team="web"), node(2, team="dba", **warning)),
        grouped(node(1, "resolved", team="web"), node(2, team="dba", **warning)),
        grouped(node(2, "resolved", team="dba", **warning), team="dba"),
        grouped(node(2, "resolved", team="dba", **warning), team="dba"),  # sent again
        # The other Alertmanager of an HA pair: the same resolution, another end.
        grouped(node(2, "resolved", team="dba", **warning) | late, team="dba"),
    ]
    outcomes = []
    with api_server.client() as http:
        for n, hook in enumerate(steps):
            if n == 1:
                rules("someone-else@example.com")
            outcome = http.post("/v1/alertmanager?incident=group", json=hook).json()["group"]
            assert outcome["dead_letter"] is None, outcome
            for job_id in outcome["job_ids"]:
                job(job_id)
            outcomes.append(outcome)
    assert [o["duplicate"] for o in outcomes] == [False, True, False, False, False, True, True]
    [incident] = api.incidents()
    assert incident["routing_key"].endswith(TEAM_KEY[-4:])  # dba's, as it opened
    assert [t["action"] for t in incident["timeline"]] == ["trigger", "trigger", "resolve"]
    assert incident["status"] == "resolved"
    assert len([e for e in api.events() if e["body"]["event_action"] == "resolve"]) == 1
    # Its severity stays the page's when only the warning fires on.
    triggers = [e["body"] for e in api.events() if e["body"]["event_action"] == "trigger"]
    assert [t["payload"]["severity"] for t in triggers] == ["critical", "critical"]
    mail = [(m["subject"], m["rcpt_tos"]) for m in api.messages()]
    assert mail == [
        ("[FIRING:1] Disk full on node-2", ["ops@example.com"]),
        ("[RESOLVED] Disk full on node-2", ["ops@example.com"]),
    ]
    # Firing again after its resolve: a new incident, as its own webhook has it.
    with api_server.client() as http:
        again = http.post("/v1/alertmanager?incident=group", json=steps[2]).json()["group"]
    assert again["duplicate"] is False
    job(again["job_ids"][0])
    assert [i["status"] for i in api.incidents()] == ["resolved", "triggered"]
    assert api.incidents()[1]["routing_key"].endswith("0001")  # no common team: the default


def test_a_group_that_returns_to_earlier_alerts_or_hears_a_late_copy_is_told_so(
    api_server: ApiServer, celery_worker: Any, api: SandboxClient
) -> None:
    """2, then 3, then 2 alerts again: each change triggers (the page lists what fires
    now). The two Alertmanagers of an HA pair send the same notification at once: one
    job. One resolves the group, then the other's late copy of the last firing arrives
    (PagerDuty opens a new incident, as it would for Alertmanager's own receiver), then
    its resolve, the same as the first: it resolves that incident too."""
    two = grouped(node(1), node(2))
    three = grouped(node(1), node(2), node(3))
    ended = grouped(node(1, "resolved"), node(2, "resolved"), node(3, "resolved"))

    def send(hook: dict[str, Any]) -> dict[str, Any]:
        outcome = _post_group(api_server, hook)
        for job_id in outcome["job_ids"]:
            job(job_id)
        return outcome

    assert [send(h)["duplicate"] for h in (two, three)] == [False, False]
    with ThreadPoolExecutor(8) as pool:  # an HA pair, and Alertmanager's retries
        copies = list(pool.map(send, [two] * 8))
    assert sorted(c["duplicate"] for c in copies) == [False] + [True] * 7
    assert len({c["job_ids"][0] for c in copies}) == 1
    summaries = [
        e["body"]["payload"]["summary"]
        for e in api.events()
        if e["body"]["event_action"] == "trigger"
    ]
    assert summaries == ["[FIRING:2] DiskFull", "[FIRING:3] DiskFull", "[FIRING:2] DiskFull"]
    assert [send(h)["duplicate"] for h in (ended, two, ended)] == [False, False, False]
    incidents = api.incidents()
    assert [i["status"] for i in incidents] == ["resolved", "resolved"]
    # The group fires anew (alerts that started after those ended), then a late copy of
    # the old resolution arrives: it must not close the new incident.
    anew = grouped(alert(fingerprint="0000000000000009", starts="2026-12-02T02:00:00Z"))
    assert send(anew)["duplicate"] is False
    late = send(ended)
    assert (late["status"], late["duplicate"], late["job_ids"]) == ("stale", True, [])
    assert [i["status"] for i in api.incidents()] == ["resolved", "resolved", "triggered"]
    over = alert("resolved", fingerprint="0000000000000009", starts="2026-12-02T02:00:00Z")
    assert send(grouped(over | {"endsAt": "2026-12-02T02:30:00Z"}))["duplicate"] is False
    assert [i["status"] for i in api.incidents()] == ["resolved"] * 3


def test_a_wide_outage_in_one_webhook_is_an_incident_per_alert_none_refused(
    api_server: ApiServer,
) -> None:
    """12,000 alerts in one webhook, an incident each: every one is queued. They were
    refused with a 422, which Alertmanager does not resend: nobody was paged."""
    hook = grouped(*(node(i) for i in range(12_000)))
    with api_server.client() as http:
        each = http.post("/v1/alertmanager", json=hook, timeout=300)
        again = http.post("/v1/alertmanager", json=hook, timeout=300)  # its retry
    assert each.status_code == 202, each.text[:300]
    outcomes = each.json()["alerts"]
    assert len(outcomes) == 12_000
    assert not [o for o in outcomes if o["duplicate"] or o["error"]]
    assert len({o["job_ids"][0] for o in outcomes}) == 12_000
    assert all(o["duplicate"] for o in again.json()["alerts"])
    assert engine().redis.llen("pagerduty") == 12_000


def test_a_group_whose_firing_alerts_max_alerts_cut_is_not_resolved(
    api_server: ApiServer, celery_worker: Any, api: SandboxClient
) -> None:
    """A receiver with max_alerts: 2 and three alerts. Alertmanager sorts them by labels,
    so once the first two resolve the webhook lists only those two, resolved, while the
    third fires on (status firing, truncatedAlerts 1): the incident was resolved."""
    three = grouped(node(1), node(2)) | {"truncatedAlerts": 1}
    cut = grouped(node(1, "resolved"), node(2, "resolved")) | {
        "status": "firing",
        "truncatedAlerts": 1,
    }
    # Its common labels name no severity: its listed (resolved) alerts' stands in for it.
    other = cut | {"groupKey": '{}:{alertname="CpuHigh"}', "commonLabels": {"alertname": "CpuHigh"}}
    with api_server.client() as http:
        opened = http.post("/v1/alertmanager?incident=group", json=three).json()["group"]
        job(opened["job_ids"][0])
        kept = http.post("/v1/alertmanager?incident=group", json=cut).json()["group"]
        # A group first seen with every firing alert cut still pages, as its common labels.
        unseen = http.post("/v1/alertmanager?incident=group", json=other).json()["group"]
    assert (kept["status"], kept["job_ids"], kept["duplicate"]) == ("firing", [], True)
    page = job(unseen["job_ids"][0])["notification"]
    assert page["subject"] == "[FIRING] CpuHigh"
    assert page["priority"] == "critical"
    assert page["body"] == "- and 1 alerts the receiver's max_alerts left out (firing or resolved)"
    assert page["metadata"]["custom_details"]["num_resolved"] == 2
    incidents = api.incidents()
    assert [i["status"] for i in incidents] == ["triggered", "triggered"]
    first = incidents[0]["payload"]["payload"]
    assert first["summary"] == "[FIRING:2] DiskFull"
    assert first["custom_details"]["truncated_alerts"] == 1


def test_a_group_too_large_for_an_incident_each_pages_once_as_a_group(
    api_server: ApiServer, celery_worker: Any, api: SandboxClient
) -> None:
    """12,000 alerts: an incident each would drain for hours through PagerDuty's rate per
    routing key; as a group, one page listing them."""
    hook = grouped(*(node(i) for i in range(12_000)))
    with api_server.client() as http:
        as_group = http.post("/v1/alertmanager?incident=group", json=hook)
        unknown = http.post("/v1/alertmanager?incident=both", json=hook)
    assert unknown.status_code == 422
    assert unknown.json()["errors"][0]["field"] == "incident"
    assert as_group.status_code == 202, as_group.text[:300]
    outcome = as_group.json()["group"]
    record = job(outcome["job_ids"][0])
    lines = record["notification"]["body"].splitlines()  # what an email route would mail
    assert len(lines) == 1_001
    assert lines[0] == "- Disk full on node-0"
    assert lines[-1] == "- and 11000 more"
    [event] = [e["body"] for e in api.events()]
    assert event["payload"]["summary"] == "[FIRING:12000] DiskFull"
    details = event["payload"]["custom_details"]
    assert details["num_firing"] == 12_000
    assert len(details["firing"]) == 100
    assert details["firing_not_listed"] == 11_900


def test_labels_intake_would_refuse_are_folded_and_cut_so_the_alert_still_pages(
    api_server: ApiServer, celery_worker: Any, api: SandboxClient
) -> None:
    """An alertname over lines or over 1,024 characters, an instance over 4,096, a
    fingerprint or start time no Alertmanager writes: each used to dead-letter the page."""
    two_lines = alert(fingerprint="c0ffee0000000003", alertname="Disk\nFull")
    huge = alert(fingerprint="f" * 1_100, alertname="A" * 2_000, instance="i" * 5_000)
    huge["startsAt"] = "2026-12-02T01:00:00Z" + " " * 1_100
    broken_start = alert(fingerprint="c0ffee0000000004") | {"startsAt": "2026-12-02\n01:00"}
    group = grouped(node(1, alertname="Disk\nFull"), alertname="Disk\nFull")
    with api_server.client() as http:
        answer = http.post("/v1/alertmanager", json=webhook(two_lines, huge, broken_start))
        as_group = http.post("/v1/alertmanager?incident=group", json=group)
    assert answer.status_code == as_group.status_code == 202
    folded, cut, broken = answer.json()["alerts"]
    assert folded["dead_letter"] is cut["dead_letter"] is as_group.json()["group"]["error"] is None
    assert broken["dead_letter"] is None, broken["error"]
    assert job(folded["job_ids"][0])["notification"]["alert_name"] == "Disk Full"
    record = job(cut["job_ids"][0])["notification"]
    assert len(record["alert_name"]) == 1_024
    assert record["alert_name"].endswith("…")
    assert len(record["recipient"]) == 4_096
    assert len(record["idempotency_id"]) <= 1_024
    assert cut["fingerprint"] == folded_hash(huge["fingerprint"])
    for each in (folded, broken):  # each page delivered before the sandbox is read
        job(each["job_ids"][0])
    job(as_group.json()["group"]["job_ids"][0])
    classes = sorted(e["body"]["payload"].get("class", "") for e in api.events())
    assert classes[:2] == ["A" * 1_023 + "…", "Disk Full"]
    assert engine().dead_letters.list() == []
    assert len(api.incidents()) == 4


def test_a_long_fingerprint_an_incident_was_opened_with_still_names_it() -> None:
    """Fingerprints up to 1,000 characters worked before labels were bounded: an incident
    opened then is resolved by the same dedup key now."""
    from api.routes.alertmanager import Alert, dedup_key

    for given in ("f" * 900, "fp\u00a0with a no-break space"):  # one line, to intake
        assert dedup_key(Alert.model_validate(alert(fingerprint=given))) == f"alertmanager-{given}"


def folded_hash(fingerprint: str) -> str:
    from worker.engine import keys

    return keys.digest(fingerprint, 16)


def test_long_summaries_and_descriptions_are_cut_not_refused(
    api_server: ApiServer, celery_worker: Any, api: SandboxClient
) -> None:
    """Alertmanager does not read the answer: an alert or group refused for the length of
    its text (past the body bound every notification keeps) would page nobody."""
    wordy = alert() | {"annotations": {"summary": "s", "description": "d" * 2_000_000}}
    group = grouped(
        *(node(i) | {"annotations": {"summary": f"node-{i} " + "x" * 5_000}} for i in range(1_000))
    )
    with api_server.client() as http:
        [one] = http.post("/v1/alertmanager", json=webhook(wordy)).json()["alerts"]
        many = http.post("/v1/alertmanager?incident=group", json=group).json()["group"]
    assert one["dead_letter"] is None, one
    assert many["dead_letter"] is None, many["error"]
    body = job(one["job_ids"][0])["notification"]["body"]
    assert len(body) <= 1_048_576
    assert body.endswith("[cut by gds-notification: 2000000 characters in all]")
    listed = job(many["job_ids"][0])["notification"]["body"].splitlines()
    assert 1 < len(listed) < 1_000
    assert listed[-1] == f"- and {1_001 - len(listed)} more"
    assert len(api.incidents()) == 2


def test_a_group_that_cannot_be_a_notification_is_kept_and_replays_while_it_fires(
    api_server: ApiServer, celery_worker: Any, api: SandboxClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Routed to email with no one to email: the firing group is dead-lettered (once,
    however often Alertmanager repeats it). Once the route is mended, its letter replays
    while the group still fires, and the group's resolve then goes where it went. A letter
    left until the group moved on is refused: it would open an incident no webhook
    resolves. A resolution that cannot go out is kept too, and replays as its resolve."""
    from config.settings import get_settings

    def rules(channels: str) -> None:
        rule = f'{{"alert_name": "DiskFull", "channels": {channels}}}'
        monkeypatch.setenv("ROUTING_RULES", f"[{rule}]")
        get_settings.cache_clear()

    rules('["email"]')
    post = functools.partial(_post_group, api_server)
    kept = [post(grouped(node(1))), post(grouped(node(1)))]
    assert [k["job_ids"] for k in kept] == [[], []]
    assert kept[0]["dead_letter"] == kept[1]["dead_letter"]
    letter = engine().dead_letters.get(kept[0]["dead_letter"])
    assert letter is not None
    assert letter["reason"].startswith("group: invalid notification: recipient")

    rules('["pagerduty"]')
    with api_server.client(ADMIN_TOKEN) as admin:
        replayed = admin.post(f"/v1/dead-letters/{kept[0]['dead_letter']}/replay")
    assert replayed.status_code == 202, replayed.text
    job(replayed.json()["job_id"])
    assert post(grouped(node(1)))["duplicate"] is True  # the repeat after it: one job
    resolved = post(grouped(node(1, "resolved")))
    job(resolved["job_ids"][0])
    [incident] = api.incidents()
    assert [t["action"] for t in incident["timeline"]] == ["trigger", "resolve"]

    # Left until the group moved on (here: resolved), the letter would page for good.
    rules('["email"]')
    stale = post(grouped(node(2)))["dead_letter"]
    rules('["pagerduty"]')
    job(post(grouped(node(2)))["job_ids"][0])  # Alertmanager's repeat pages, once mended
    job(post(grouped(node(2, "resolved")))["job_ids"][0])
    with api_server.client(ADMIN_TOKEN) as admin:
        refused = admin.post(f"/v1/dead-letters/{stale}/replay")
    assert refused.status_code == 422
    assert "the group has moved on since" in refused.json()["errors"][0]["message"]
    assert [i["status"] for i in api.incidents()] == ["resolved", "resolved"]

    # A group never seen firing whose resolve cannot go out: kept, replayed as its resolve.
    rules('["email"]')
    never = grouped(node(3, "resolved")) | {"groupKey": '{}:{alertname="Other"}'}
    letter_id = post(never)["dead_letter"]
    kept_resolve = engine().dead_letters.get(letter_id)
    assert kept_resolve is not None
    assert kept_resolve["payload"]["resolves"].startswith("alertmanager-group-")
    rules('["pagerduty"]')
    with api_server.client(ADMIN_TOKEN) as admin:
        assert admin.post(f"/v1/dead-letters/{letter_id}/replay").status_code == 202

    # Replayed after Alertmanager's repeat paged, once mended: that repeat's job, not a
    # second page.
    rules('["email"]')
    late = grouped(node(4)) | {"groupKey": '{}:{alertname="Late"}'}
    late_letter = post(late)["dead_letter"]
    rules('["pagerduty"]')
    repeat = post(late)
    job(repeat["job_ids"][0])
    with api_server.client(ADMIN_TOKEN) as admin:
        again = admin.post(f"/v1/dead-letters/{late_letter}/replay")
    assert again.json()["job_id"] == repeat["job_ids"][0]
    group_key = repeat["dedup_key"]
    pages = [e for e in api.events() if e["body"].get("dedup_key") == group_key]
    assert len(pages) == 1


def _post_group(api_server: ApiServer, hook: dict[str, Any]) -> dict[str, Any]:
    with api_server.client() as http:
        answer = http.post("/v1/alertmanager?incident=group", json=hook)
    assert answer.status_code == 202, answer.text
    return dict(answer.json()["group"])


def _alertmanager_config(path: Path, webhook_url: str) -> Path:
    path.write_text(
        f"""
route:
  receiver: gds
  group_by: [alertname]
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 2s
receivers:
  - name: gds
    webhook_configs:
      - url: {webhook_url}
        send_resolved: true
        max_alerts: 0
        http_config:
          authorization:
            type: Bearer
            credentials: {NOTIFY_TOKEN}
"""
    )
    return path


@pytest.fixture
def alertmanager(
    api_server: ApiServer, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[str]:
    """A real Alertmanager sending to the API; its webhook URL's query is the parameter."""
    webhook_url = f"{api_server.url}/v1/alertmanager{getattr(request, 'param', '')}"
    if ALERTMANAGER is None or AMTOOL is None:
        pytest.skip("Debian's prometheus-alertmanager is not installed (make test installs it)")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "alertmanager.log").open("w")
    proc = subprocess.Popen(
        [
            ALERTMANAGER,
            f"--config.file={_alertmanager_config(tmp_path / 'alertmanager.yml', webhook_url)}",
            f"--storage.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
            "--log.level=debug",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: _ready(url), timeout=30)
        yield url
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()


def _ready(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def amtool(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(AMTOOL), f"--alertmanager.url={url}", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_a_real_alertmanager_fires_repeats_and_resolves_one_incident(
    alertmanager: str, celery_worker: Any, api: SandboxClient
) -> None:
    labels = ["alertname=ReplicaDown", "instance=db-7", "severity=critical", "team=dba"]
    # As a rule's `summary: |` block writes it: two lines and a newline at the end.
    summary = "--annotation=summary=Replica down\non db-7\n"
    started = datetime.now(UTC).replace(microsecond=0)
    fired = amtool(alertmanager, "alert", "add", *labels, summary, f"--start={started.isoformat()}")
    assert fired.returncode == 0, fired.stderr
    [incident] = wait_for(lambda: api.incidents(), timeout=30)
    assert incident["summary"] == "Replica down on db-7"
    assert incident["routing_key"].endswith(TEAM_KEY[-4:])
    dedup_key = incident["dedup_key"]
    assert dedup_key.startswith("alertmanager-")

    # Alertmanager sends the firing alert again every repeat_interval (2 s): the first
    # job counts the repeats as duplicates and nothing new reaches PagerDuty.
    first = wait_for(
        lambda: (jobs := _jobs_from("alertmanager")) and jobs[0]["duplicates"] >= 2 and jobs,
        timeout=30,
    )
    assert len(first) == 1
    assert len([e for e in api.events() if e["status"] == 202]) == 1

    ended = datetime.now(UTC) - timedelta(seconds=1)
    resolved = amtool(
        alertmanager,
        "alert",
        "add",
        *labels,
        summary,
        f"--start={started.isoformat()}",
        f"--end={ended.isoformat()}",
    )
    assert resolved.returncode == 0, resolved.stderr
    wait_for(lambda: api.incidents()[0]["status"] == "resolved", timeout=30)
    time.sleep(3)  # a resolved alert is not sent again as firing
    [incident] = api.incidents()
    assert [t["action"] for t in incident["timeline"]] == ["trigger", "resolve"]
    assert incident["dedup_key"] == dedup_key


@pytest.mark.parametrize("alertmanager", ["?incident=group"], indirect=True)
def test_a_real_alertmanagers_group_is_one_incident_until_all_its_alerts_resolve(
    alertmanager: str, celery_worker: Any, api: SandboxClient
) -> None:
    """As Prometheus sends them: two alerts of one group fire (one incident, its page
    listing both), one resolves (the incident stays open), then the other."""
    started = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)

    def post(*instances: str, ended: bool = False) -> None:
        end = {"endsAt": (datetime.now(UTC) - timedelta(seconds=1)).isoformat()} if ended else {}
        alerts = [
            {
                "labels": {"alertname": "NodeDown", "instance": i, "severity": "critical"},
                "annotations": {"summary": f"{i} is down"},
                "startsAt": started.isoformat(),
            }
            | end
            for i in instances
        ]
        httpx.post(f"{alertmanager}/api/v2/alerts", json=alerts, timeout=10).raise_for_status()

    def firing_counts() -> list[int]:
        return [
            e["body"]["payload"]["custom_details"]["num_firing"]
            for e in api.events()
            if e["body"]["event_action"] == "trigger"
        ]

    post("node-1", "node-2")
    wait_for(lambda: firing_counts() and firing_counts()[-1] == 2, timeout=30)
    post("node-1", ended=True)
    wait_for(lambda: firing_counts()[-1] == 1, timeout=30)
    [incident] = api.incidents()
    assert incident["status"] == "triggered"
    post("node-2", ended=True)
    wait_for(lambda: api.incidents()[0]["status"] == "resolved", timeout=30)
    time.sleep(3)  # repeats of the resolved group queue nothing new
    [incident] = api.incidents()
    assert incident["dedup_key"].startswith("alertmanager-group-")
    actions = [t["action"] for t in incident["timeline"]]
    assert actions[-1] == "resolve"
    assert actions.count("resolve") == 1
    assert incident["summary"].startswith("[FIRING:")


def _jobs_from(source: str) -> list[dict[str, Any]]:
    store = engine().jobs
    job_ids = [k.split(":")[2] for k in engine().redis.scan_iter("gds:job:*") if k.count(":") == 2]
    records = [store.get(job_id) for job_id in job_ids]
    return [
        r for r in records if r is not None and r["source"] == source and r["action"] != "resolve"
    ]


def test_the_resolved_emails_of_firings_without_an_idempotency_id_are_each_sent(
    service_env: Any,
) -> None:
    """A letter kept before firings carried an id, replayed: each [RESOLVED] email is its
    own (they shared the id "None/resolved", and all but the first were copies)."""
    from worker.engine import alert_resolution
    from worker.job_request import parse_request

    eng = engine()
    done = [
        alert_resolution.resolve(
            eng,
            parse_request({"recipient": "ops@example.com", "subject": f"Queue slow on {name}"}),
            f"alertmanager-{name}",
            "replay",
        )
        for name in ("a", "b")
    ]
    [first], [second] = done
    assert (first.duplicate, second.duplicate) == (False, False)
    assert first.job_id != second.job_id
