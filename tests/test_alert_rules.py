"""The Prometheus alert rules for the notifier itself (deploy/prometheus/alerts.yml): valid,
unit-tested by promtool (Debian's prometheus package), each one labelled, annotated and
pointing at its runbook in deploy/prometheus/RUNBOOKS.md, and built only on metrics the
service exports (the README's metric table)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
README = ROOT / "README.md"
RUNBOOKS = ROOT / "deploy" / "prometheus" / "RUNBOOKS.md"
#: What each rule's runbook_url starts with: the runbooks' path from the repository's root.
RUNBOOKS_URL = RUNBOOKS.relative_to(ROOT).as_posix()
PROMTOOL = shutil.which("promtool")


def exported() -> set[str]:
    """The series GET /metrics exports, read from the README's metric table (name and
    type in its first two columns), so the table, the rules and a scrape cannot drift."""
    rows = re.findall(
        r"^\| `(gds_notify_\w+)` \| (counter|gauge|histogram) \|", README.read_text(), re.M
    )
    assert len(rows) >= 10, "the README's metric table has moved or changed its layout"
    suffixes = {"counter": ("",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
    return {f"{name}{suffix}" for name, kind in rows for suffix in suffixes[kind]}


EXPORTED = exported()


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    if PROMTOOL is None:
        pytest.skip("Debian's prometheus (promtool) is not installed (make test installs it)")
    return subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, timeout=60, cwd=RULES.parent
    )


def test_promtool_accepts_the_rules() -> None:
    checked = promtool("check", "rules", RULES.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules())} rules found" in checked.stdout


def test_promtool_unit_tests_pass() -> None:
    tested = promtool("test", "rules", RULE_TESTS.name)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_rule_has_a_firing_and_a_quiet_case() -> None:
    cases: dict[str, set[bool]] = {}
    for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            cases.setdefault(case["alertname"], set()).add(bool(case.get("exp_alerts")))
    assert {rule["alert"]: {True, False} for rule in rules()} == cases


def test_every_rule_is_labelled_and_annotated_with_its_runbook() -> None:
    for rule in rules():
        name = rule["alert"]
        assert name.startswith("GdsNotify"), name
        assert rule["labels"]["severity"] in {"page", "ticket"}, name
        assert rule["labels"]["service"] == "gds-notify", name
        notes = rule["annotations"]
        assert notes["summary"].strip(), name
        assert notes["description"].strip(), name
        assert notes["runbook_url"] == f"{RUNBOOKS_URL}#{runbook_anchor(name)}", name


def test_rules_use_only_metrics_the_service_exports() -> None:
    used = {m for rule in rules() for m in re.findall(r"\bgds_notify_\w+", rule["expr"])}
    assert used, "no gds_notify_ metric found: has the naming changed?"
    assert used <= EXPORTED, sorted(used - EXPORTED)


def test_every_rule_has_its_runbook() -> None:
    """Each rule's runbook_url leads to a "Runbook: <alert>" heading in RUNBOOKS.md."""
    text = re.sub(r"^ *```.*?^ *```", "", RUNBOOKS.read_text(), flags=re.M | re.S)  # shell comments
    anchors = {github_anchor(h) for h in re.findall(r"^#+ (.+?)\s*$", text, re.M)}
    missing = [rule["alert"] for rule in rules() if runbook_anchor(rule["alert"]) not in anchors]
    assert not missing, f"{RUNBOOKS_URL} has no '#### Runbook: NAME' heading for {missing}"


def runbook_anchor(alert: str) -> str:
    return github_anchor(f"Runbook: {alert}")


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to
    hyphens (markup such as backticks is punctuation too)."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
