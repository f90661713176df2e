"""The benchmark harness, in its seconds-long smoke size, so it cannot rot: it starts its
stack, runs every scenario, writes every figure with a sane type, and leaves nothing
running. Speeds are not asserted (this machine is shared); correctness figures are."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent

POSITIVE_NUMBERS = [
    "enqueue_per_s",
    "enqueue_vs_before",
    "celery_noop_per_s",
    "bare_http_per_s",
    "pipeline_per_s",
    "pipeline_vs_noop",
    "pipeline_vs_bare_http",
    "pipeline_two_processes_per_s",
    "pipeline_two_processes_vs_one",
    "page_backlog_ratio",
    "email_per_s",
    "bare_smtp_per_s",
    "email_vs_bare_smtp",
    "raw_smtp_per_s",
    "email_vs_raw",
    "heartbeat_check_ms_10k",
    "worker_rss_mb",
]


def bench_command(out: Path) -> list[str]:
    command = [sys.executable, "-m", "bench", "--smoke", "--out", str(out)]
    given = os.environ.get("REDIS_URL")
    if given:  # a database of its own, as the other tests keep to theirs
        parts = urlsplit(given)
        db = os.environ.get("GDS_BENCH_REDIS_DB", "14")
        command += ["--redis-url", urlunsplit((parts.scheme, parts.netloc, f"/{db}", "", ""))]
    return command


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purpose; Linux marks it Z in /proc/PID/stat.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


def test_smoke_bench_writes_every_figure_and_leaves_nothing_running(tmp_path: Path) -> None:
    out = tmp_path / "smoke.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PAGERDUTY_", "SMTP_"))}
    done = subprocess.run(
        bench_command(out), cwd=ROOT, env=env, capture_output=True, text=True, timeout=110
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(out.read_text())

    assert results["errors"] == {}
    for key in POSITIVE_NUMBERS:
        assert isinstance(results[key], int | float), key
        assert results[key] > 0, key
    for key in ("page_latency_ms", "page_latency_backlog_ms"):
        figures = results[key]
        assert set(figures) == {"p50", "p95", "p99"}
        assert 0 < figures["p50"] <= figures["p95"] <= figures["p99"]
    drain = results["throttled_drain"]
    assert set(drain) == {
        "seconds",
        "minimum_seconds",
        "ratio",
        "responses_429",
        "lost",
        "duplicate_incidents",
    }
    assert drain["seconds"] > 0
    assert drain["minimum_seconds"] > 0
    assert drain["ratio"] > 0
    assert isinstance(drain["responses_429"], int)
    assert drain["responses_429"] >= 0
    assert drain["lost"] == 0
    assert drain["duplicate_incidents"] == 0

    # CPU per 1,000 pages and emails, per process, for each kind of round.
    pages, emails = results["cpu_ms_per_1000_pages"], results["cpu_ms_per_1000_emails"]
    assert {"noop", "bare_http", "pipeline", "pipeline_two_processes"} <= set(pages)
    assert set(pages["pipeline"]) >= {"worker", "producer", "emulator", "total"}
    assert set(pages["pipeline_two_processes"]) >= {"worker", "worker-2"}
    assert set(emails) == {"pipeline", "bare_smtp"}
    assert all(v >= 0 for kind in (*pages.values(), *emails.values()) for v in kind.values())
    if results["details"]["throughput"]["alertmanager"] != "not installed":
        assert results["alertmanager_per_s"] > 0
        assert results["pipeline_vs_alertmanager"] > 0
        assert pages["alertmanager"]["alertmanager"] > 0

    # One delivery step of each channel beside its bare send, split into parts that add up.
    parts = ("validate", "claim", "redis", "provider", "record", "log", "rest")
    for channel in ("pagerduty", "email"):
        step = results["step_cpu_ms"][channel]
        assert set(step) == {"step", "bare_send", "beyond_bare", "timed_step", *parts}, channel
        assert step["step"] > 0, channel
        assert step["bare_send"] > 0, channel
        assert all(step[p] > 0 for p in parts if p != "rest"), channel
        # Each part excludes the others, so they leave some glue over; and the wrappers'
        # cost aside, the timed step is the step: of the same order only, as 30 steps are
        # a small sample that one garbage collection can swing.
        assert step["rest"] >= -0.01, channel
        assert 0.25 * step["step"] < step["timed_step"] < 4 * step["step"], channel

    assert results["run"]["smoke"] is True
    assert set(results["machine"]) >= {"cpu", "cores", "python", "redis", "date", "git_commit"}
    # A target goes unmeasured only where the tool it needs (wrk, Alertmanager) is missing.
    details = results["details"]
    may_skip = set()
    if details["throughput"]["alertmanager"] == "not installed":
        may_skip.add("pipeline_vs_alertmanager")
    for scenario, prefix in (("api", "api_"), ("pings", "ping")):
        if "skipped" in details[scenario]:
            may_skip |= {name for name in results["targets"] if name.startswith(prefix)}
    unmeasured = {name for name, t in results["targets"].items() if t["met"] is None}
    assert unmeasured == may_skip
    assert not (ROOT / "bench" / "results" / "smoke.json").exists()

    # Nothing outlives the harness: no child process, and its own Redis is gone.
    assert results["run"]["child_pids"]
    assert [pid for pid in results["run"]["child_pids"] if alive(pid)] == []
    if "REDIS_URL" not in os.environ:
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", results["run"]["redis_port"])) != 0
