"""A real Prometheus (Debian's package) scraping the API's /metrics with the alert rules of
deploy/prometheus/alerts.yml: the series arrive under the names the rules use, and the
no-workers alert fires with no worker and clears once one is up."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from sandbox import SandboxServer
from tests.api_server import ApiServer
from tests.conftest import SandboxClient, free_port, in_thread_worker, wait_for
from tests.test_alert_rules import EXPORTED, RULES
from worker.engine.runtime import engine

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None, reason="Debian's prometheus is not installed (make test installs it)"
)


def instant_rules(path: Path) -> Path:
    """alerts.yml with every `for:` at 0s: the same expressions, firing at the first
    evaluation that matches instead of minutes later."""
    groups = yaml.safe_load(RULES.read_text())
    for group in groups["groups"]:
        for rule in group["rules"]:
            rule["for"] = "0s"
    path.write_text(yaml.safe_dump(groups))
    return path


SHIPPED = RULES.parent / "prometheus.yml"
SHIPPED_ALERTMANAGER = RULES.parent / "alertmanager.yml"
ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


def shipped_prometheus(folder: Path, api_url: str, alertmanager: str | None) -> Path:
    """deploy/prometheus/prometheus.yml as shipped, but for its addresses (the API here,
    this Alertmanager or none) and seconds where it has minutes, with the rules instant."""
    config = yaml.safe_load(SHIPPED.read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(instant_rules(folder / "alerts.yml"))]
    [job] = config["scrape_configs"]
    job["scrape_timeout"] = "1s"
    job["static_configs"] = [{"targets": [api_url.removeprefix("http://")]}]
    if alertmanager is None:
        del config["alerting"]
    else:
        [targets] = config["alerting"]["alertmanagers"]
        targets["static_configs"] = [{"targets": [alertmanager.removeprefix("http://")]}]
    path = folder / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_shipped_configs_are_what_promtool_and_amtool_accept() -> None:
    for tool, args in (
        ("promtool", ["check", "config", SHIPPED.name]),
        ("amtool", ["check-config", SHIPPED_ALERTMANAGER.name]),
    ):
        found = shutil.which(tool)
        if found is None:
            pytest.skip(f"{tool} is not installed (make test installs Debian's packages)")
        done = subprocess.run(
            [found, *args], capture_output=True, text=True, timeout=60, cwd=SHIPPED.parent
        )
        assert done.returncode == 0, done.stdout + done.stderr
    assert (
        "SUCCESS: 1 rule files found"
        in subprocess.run(
            ["promtool", "check", "config", SHIPPED.name],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=SHIPPED.parent,
        ).stdout
    )


@pytest.fixture
def prometheus(api_server: ApiServer, tmp_path: Path) -> Iterator[httpx.Client]:
    assert PROMETHEUS is not None
    config = shipped_prometheus(tmp_path, api_server.url, alertmanager=None)
    port = free_port()
    log = (tmp_path / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5)
    try:
        wait_for(lambda: _ready(http), timeout=30)
        yield http
    finally:
        http.close()
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def _ready(http: httpx.Client) -> bool:
    try:
        return http.get("/-/ready").status_code == 200
    except httpx.HTTPError:
        return False


def query(http: httpx.Client, promql: str) -> list[dict[str, Any]]:
    answer = http.get("/api/v1/query", params={"query": promql}).json()
    assert answer["status"] == "success", answer
    return list(answer["data"]["result"])


def firing(http: httpx.Client) -> dict[str, dict[str, Any]]:
    alerts = http.get("/api/v1/alerts").json()["data"]["alerts"]
    return {a["labels"]["alertname"]: a for a in alerts if a["state"] == "firing"}


def scrape_errors(http: httpx.Client) -> list[str]:
    targets = http.get("/api/v1/targets").json()["data"]["activeTargets"]
    return [f"{t['scrapeUrl']}: {t['lastError']}" for t in targets if t["lastError"]]


def test_prometheus_scrapes_the_api_and_the_no_workers_alert_follows_the_pool(
    prometheus: httpx.Client,
) -> None:
    try:
        wait_for(lambda: query(prometheus, 'up{job="gds-notify"} == 1'), timeout=20)
    except AssertionError:
        pytest.fail(f"Prometheus cannot scrape the API: {scrape_errors(prometheus)}")
    names = {s["metric"]["__name__"] for s in query(prometheus, '{__name__=~"gds_notify_.+"}')}
    assert {"gds_notify_redis_up", "gds_notify_workers_alive", "gds_notify_build_info"} <= names
    assert names <= EXPORTED, sorted(names - EXPORTED)
    assert query(prometheus, "gds_notify_redis_up")[0]["value"][1] == "1"

    alert = wait_for(lambda: firing(prometheus).get("GdsNotifyNoWorkers"), timeout=20)
    assert alert["labels"] | {"severity": "page", "queue": "pagerduty"} == alert["labels"]
    assert alert["annotations"]["runbook_url"].endswith("#runbook-gdsnotifynoworkers")
    assert "GdsNotifyTargetDown" not in firing(prometheus)
    assert "GdsNotifyRedisDown" not in firing(prometheus)

    with in_thread_worker():
        wait_for(
            lambda: query(prometheus, 'gds_notify_workers_alive{queue="pagerduty"} >= 1'),
            timeout=20,
        )
        wait_for(lambda: "GdsNotifyNoWorkers" not in firing(prometheus), timeout=10)


#: The routing key the shipped Alertmanager pages with: one of its own, not the notifier's.
DIRECT_KEY = "DIRECT" + "0" * 22 + "D1RT"


def shipped_alertmanager(folder: Path, events_url: str) -> Path:
    """deploy/prometheus/alertmanager.yml as shipped, but paging the sandbox's PagerDuty
    emulator with DIRECT_KEY, and with seconds where it waits minutes."""
    config = yaml.safe_load(SHIPPED_ALERTMANAGER.read_text())
    config["global"]["smtp_smarthost"] = f"127.0.0.1:{free_port()}"  # mail is not followed
    config["route"] |= {"group_wait": "1s", "group_interval": "1s"}
    [pagerduty] = [r for r in config["receivers"] if r["name"] == "pagerduty-direct"]
    key_file = folder / "pagerduty-routing-key"
    key_file.write_text(DIRECT_KEY)
    pagerduty["pagerduty_configs"][0] |= {"routing_key_file": str(key_file), "url": events_url}
    path = folder / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_notifier_in_trouble_pages_around_itself_through_the_shipped_configs(
    api_server: ApiServer, service_env: SandboxServer, tmp_path: Path
) -> None:
    """Prometheus and Alertmanager with the files in deploy/prometheus: with no worker,
    GdsNotifyNoWorkers reaches PagerDuty straight from Alertmanager with a key of its own
    (the notifier cannot page about itself), and a ticket goes to the email receiver."""
    if PROMETHEUS is None or ALERTMANAGER is None:
        pytest.skip("Debian's prometheus and prometheus-alertmanager (make test installs them)")
    settings = engine().settings
    am_port, prom_port = free_port(), free_port()
    am_url = f"http://127.0.0.1:{am_port}"
    started = []
    try:
        for argv in (
            [
                ALERTMANAGER,
                f"--config.file={shipped_alertmanager(tmp_path, settings.pagerduty_api_url)}",
                f"--storage.path={tmp_path / 'am-data'}",
                f"--web.listen-address=127.0.0.1:{am_port}",
                "--cluster.listen-address=",
            ],
            [
                PROMETHEUS,
                f"--config.file={shipped_prometheus(tmp_path, api_server.url, am_url)}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
                "--log.level=warn",
            ],
        ):
            log = (tmp_path / f"{Path(argv[0]).name}.log").open("w")
            started.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))
            log.close()
        sandbox = SandboxClient(service_env)
        page = wait_for(
            lambda: next(
                (
                    e["body"]
                    for e in sandbox.events()
                    if "GdsNotifyNoWorkers" in e["body"]["payload"]["summary"]
                ),
                None,
            ),
            timeout=60,
        )
        assert page["routing_key"].endswith(DIRECT_KEY[-4:])  # Alertmanager's own key
        assert page["event_action"] == "trigger"
        with httpx.Client(base_url=am_url, timeout=5) as am:
            tickets = am.get(
                "/api/v2/alerts", params={"filter": 'alertname="GdsNotifyNoEmailWorkers"'}
            ).json()
        assert [r["name"] for a in tickets for r in a["receivers"]] == ["ops-email"]
        sandbox.close()
    finally:
        for proc in started:
            proc.terminate()
            proc.wait(15)
