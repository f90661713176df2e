"""Targets, the printed table, bench/README.md's table, machine information and the JSON file.

No target is a test assertion: each figure is printed beside its target and the JSON
records whether it was met, so a regression shows without failing a noisy machine's build.
"""

from __future__ import annotations

import json
import operator
import os
import platform
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.procfile import ROOT

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
}


@dataclass(frozen=True)
class Target:
    path: tuple[str, ...]
    op: str
    value: float

    @property
    def text(self) -> str:
        shown = {">=": "≥", "<=": "≤", "==": "="}.get(self.op, self.op)
        return f"{shown} {self.value:g}"

    def met(self, figure: float | None) -> bool | None:
        if figure is None or figure != figure:  # missing, or NaN
            return None
        return _OPS[self.op](figure, self.value)


TARGETS = (
    Target(("api_accepted_per_s",), ">=", 1000),
    Target(("api_latency_ms", "p99"), "<", 50),
    Target(("pings_per_s",), ">=", 2000),
    Target(("ping_latency_ms", "p99"), "<", 50),
    Target(("pipeline_vs_bare_http",), ">=", 0.9),
    Target(("pipeline_two_processes_vs_one",), ">=", 1.6),
    Target(("pipeline_vs_alertmanager",), ">=", 0.25),
    Target(("page_latency_ms", "p99"), "<", 100),
    Target(("page_backlog_ratio",), "<=", 1.5),
    Target(("throttled_drain", "ratio"), "<=", 1.1),
    Target(("throttled_drain", "responses_429"), "<=", 6),
    Target(("throttled_drain", "lost"), "==", 0),
    Target(("throttled_drain", "duplicate_incidents"), "==", 0),
    Target(("email_vs_bare_smtp",), ">=", 0.85),
    Target(("heartbeat_check_ms_10k",), "<", 1000),
    Target(("metrics_scrape_ms", "max"), "<", 1000),
    Target(("worker_rss_mb",), "<", 150),
)

#: Every figure in the table, in order, with its unit.
ROWS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("enqueue_per_s",), "jobs/s"),
    (("enqueue_before_per_s",), "jobs/s"),
    (("enqueue_vs_before",), ""),
    (("api_accepted_per_s",), "jobs/s"),
    (("api_latency_ms", "p50"), "ms"),
    (("api_latency_ms", "p99"), "ms"),
    (("pings_per_s",), "pings/s"),
    (("ping_latency_ms", "p50"), "ms"),
    (("ping_latency_ms", "p99"), "ms"),
    (("celery_noop_per_s",), "tasks/s"),
    (("bare_http_per_s",), "pages/s"),
    (("pipeline_per_s",), "pages/s"),
    (("pipeline_vs_noop",), ""),
    (("pipeline_vs_bare_http",), ""),
    (("pipeline_two_processes_per_s",), "pages/s"),
    (("pipeline_two_processes_vs_one",), ""),
    (("alertmanager_per_s",), "pages/s"),
    (("pipeline_vs_alertmanager",), ""),
    (("cpu_ms_per_1000_pages", "pipeline", "total"), "ms"),
    (("cpu_ms_per_1000_pages", "pipeline", "worker"), "ms"),
    (("cpu_ms_per_1000_pages", "pipeline", "producer"), "ms"),
    (("cpu_ms_per_1000_pages", "pipeline", "redis"), "ms"),
    (("cpu_ms_per_1000_pages", "pipeline", "emulator"), "ms"),
    (("cpu_ms_per_1000_pages", "bare_http", "total"), "ms"),
    (("cpu_ms_per_1000_pages", "bare_http", "worker"), "ms"),
    (("cpu_ms_per_1000_pages", "alertmanager", "total"), "ms"),
    (("cpu_ms_per_1000_pages", "alertmanager", "alertmanager"), "ms"),
    (("page_latency_ms", "p50"), "ms"),
    (("page_latency_ms", "p95"), "ms"),
    (("page_latency_ms", "p99"), "ms"),
    (("page_latency_backlog_ms", "p50"), "ms"),
    (("page_latency_backlog_ms", "p95"), "ms"),
    (("page_latency_backlog_ms", "p99"), "ms"),
    (("page_backlog_ratio",), ""),
    (("throttled_drain", "seconds"), "s"),
    (("throttled_drain", "minimum_seconds"), "s"),
    (("throttled_drain", "ratio"), ""),
    (("throttled_drain", "responses_429"), ""),
    (("throttled_drain", "lost"), ""),
    (("throttled_drain", "duplicate_incidents"), ""),
    (("email_per_s",), "emails/s"),
    (("bare_smtp_per_s",), "emails/s"),
    (("email_vs_bare_smtp",), ""),
    (("raw_smtp_per_s",), "emails/s"),
    (("email_vs_raw",), ""),
    (("cpu_ms_per_1000_emails", "pipeline", "total"), "ms"),
    (("cpu_ms_per_1000_emails", "pipeline", "worker"), "ms"),
    (("cpu_ms_per_1000_emails", "pipeline", "producer"), "ms"),
    (("cpu_ms_per_1000_emails", "bare_smtp", "total"), "ms"),
    (("cpu_ms_per_1000_emails", "bare_smtp", "worker"), "ms"),
    (("heartbeat_check_ms_10k",), "ms"),
    (("metrics_scrape_ms", "p50"), "ms"),
    (("metrics_scrape_ms", "max"), "ms"),
    (("worker_rss_mb",), "MiB"),
    *(
        (("step_cpu_ms", channel, part), "ms")
        for channel in ("pagerduty", "email")
        for part in ("step", "bare_send", "beyond_bare", "timed_step", "redis", "provider", "log")
    ),
)


def lookup(results: dict[str, Any], path: tuple[str, ...]) -> float | None:
    value: Any = results
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return float(value) if isinstance(value, int | float) else None


def evaluate(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each target, its figure and whether it was met (None: not measured)."""
    out = {}
    for target in TARGETS:
        figure = lookup(results, target.path)
        out[".".join(target.path)] = {
            "target": target.text,
            "value": figure,
            "met": target.met(figure),
        }
    return out


def _rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    targets = {t.path: t for t in TARGETS}
    rows = []
    for path, unit in ROWS:
        figure = lookup(results, path)
        shown = "—" if figure is None else f"{figure:,.3f}".rstrip("0").rstrip(".")
        target = targets.get(path)
        verdict = ""
        if target is not None:
            met = target.met(figure)
            verdict = "n/a" if met is None else ("met" if met else "MISSED")
        name = ".".join(path)
        rows.append((name, f"{shown} {unit}".strip(), target.text if target else "", verdict))
    return rows


def table(results: dict[str, Any]) -> str:
    """The figures as a plain-text table for the terminal."""
    rows = [("figure", "value", "target", ""), *_rows(results)]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def markdown(results: dict[str, Any]) -> str:
    """The figures as the Markdown table bench/README.md shows (Last results)."""
    lines = ["| figure | value | target | |", "|---|---|---|---|"]
    lines += [f"| `{n}` | {v} | {t} | {m} |" for n, v, t, m in _rows(results)]
    return "\n".join(lines)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short=12", "HEAD") or "unknown"
    # The results file itself is rewritten by every run: it does not make the code dirty.
    changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/results")
    return commit + ("-dirty" if changed else "")


def machine(redis_version: str) -> dict[str, Any]:
    """Where and when the figures were taken."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "redis": redis_version,
        "os": platform.platform(terse=True),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
        "load_average_at_start": [round(x, 2) for x in load],
    }


def write_json(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
    partial.replace(path)
