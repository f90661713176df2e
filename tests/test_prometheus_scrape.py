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

from tests.api_server import ApiServer
from tests.conftest import free_port, in_thread_worker, wait_for
from tests.test_alert_rules import EXPORTED, RULES

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


@pytest.fixture
def prometheus(api_server: ApiServer, tmp_path: Path) -> Iterator[httpx.Client]:
    assert PROMETHEUS is not None
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(instant_rules(tmp_path / "alerts.yml"))],
                "scrape_configs": [
                    {
                        # The job name alerts.yml expects (GdsNotifyTargetDown).
                        "job_name": "gds-notify",
                        "scrape_timeout": "1s",
                        "static_configs": [{"targets": [api_server.url.removeprefix("http://")]}],
                    }
                ],
            }
        )
    )
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
