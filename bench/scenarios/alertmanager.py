"""Prometheus Alertmanager as a yardstick for the pipeline: how fast a widely deployed
alert router turns alerts into PagerDuty pages, on the same machine, against the same
emulator, timed the same way (first request in to the emulator's receipt of the last page).

A private ``prometheus-alertmanager`` (Debian's package) runs on a free port with no
clustering, its one receiver a ``pagerduty_configs`` entry pointed at the emulator's
``/v2/enqueue``. Every alert is its own group (``group_by: ['...']``) with
``group_wait: 0s``, so each alert becomes one page at once: the nearest thing Alertmanager
has to the pipeline's one notification, one page. Alerts go in as Prometheus sends them,
in batches on ``POST /api/v2/alerts``.

What this measures is Alertmanager's own cost per page: routing, its aggregation group
(a goroutine and a timer each), the notification log, templating the PagerDuty event and
one HTTP request per group. Alertmanager has no queue that survives a restart and no
idempotency of its own beyond the notification log, so it does less per page than the
pipeline; the figure is a reference point, not a like-for-like contest.

Nothing in Alertmanager throttles this (0.25, checked against its source and its
metrics): the API hands alerts to one dispatcher goroutine, each new group starts a
goroutine of its own that flushes at once, and each flush is one HTTP request, with no
limit on requests in flight (its HTTP client opens as many connections as there are
requests; hundreds at a time here). Its rate is therefore what the CPU allows it beside
the emulator and the harness on the same cores; the emulator must be started without a
rate limit (the bench stack passes ``--rate-limit 0``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import httpx

from bench.context import Context
from bench.measure import BenchError, wait_until
from sandbox.children import die_with_parent
from sandbox.redis_server import free_port

#: The Alertmanager binary (Debian names it ``prometheus-alertmanager``), None when absent.
ALERTMANAGER: str | None = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")

#: Made up: the emulator accepts any well-formed key (32 alphanumerics) unless strict.
ROUTING_KEY = "BENCH" + "0" * 26 + "1"
#: Alerts per ``POST /api/v2/alerts``. Prometheus sends at most 64 to a request; 64 and 500
#: gave the same rate, so the harness spends fewer of the shared cores on round trips.
BATCH = 500
STOP_GRACE = 15.0


def config(events_url: str) -> str:
    """The configuration: one route, one PagerDuty receiver, every alert its own group."""
    # JSON strings are YAML strings, so quoting is never a question.
    return f"""\
global:
  resolve_timeout: 5m
route:
  receiver: emulator
  group_by: ['...']
  group_wait: 0s
  # After the first page a group only re-checks its notification log: nothing is sent
  # again until repeat_interval, far beyond any run.
  group_interval: 1m
  repeat_interval: 24h
receivers:
  - name: emulator
    pagerduty_configs:
      - routing_key: {json.dumps(ROUTING_KEY)}
        url: {json.dumps(events_url)}
        send_resolved: false
"""


class Alertmanager:
    """A private Alertmanager on a free port, its PagerDuty receiver pointed at the emulator.

    ``workdir`` holds its configuration and its storage (notification log, silences);
    its output goes to ``log_path``.
    """

    def __init__(self, emulator_events_url: str, workdir: Path, log_path: Path) -> None:
        self.events_url = emulator_events_url
        self.workdir = workdir
        self.log_path = log_path
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._http: httpx.Client | None = None

    @property
    def url(self) -> str:
        """Its web address (API and ``/-/ready``); empty before :meth:`start`."""
        return f"http://127.0.0.1:{self.port}" if self.port else ""

    @property
    def pid(self) -> int | None:
        """The process id while it runs, else None."""
        return self.proc.pid if self.proc is not None else None

    def start(self, timeout: float = 30) -> Alertmanager:
        """Start it and wait until ``/-/ready`` answers 200; BenchError if it cannot."""
        if ALERTMANAGER is None:
            raise BenchError("prometheus-alertmanager is not installed")
        if self.proc is not None:
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_file = self.workdir / "alertmanager.yml"
        config_file.write_text(config(self.events_url))
        self.port = free_port()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                ALERTMANAGER,
                f"--config.file={config_file}",
                f"--storage.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                # Empty: no gossip port and no peers, so no settle wait before notifying.
                "--cluster.listen-address=",
                "--log.level=warn",
            ],
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            # Its own session, so a Ctrl-C at the terminal reaches the harness only (which
            # then stops it in order); the parent-death signal covers a harness killed outright.
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )
        self._http = httpx.Client(base_url=self.url, timeout=60)
        try:
            wait_until(self._ready, timeout, f"Alertmanager ready (log in {self.log_path})")
        except BaseException:
            self.stop()
            raise
        return self

    def _ready(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace").strip().splitlines()[-5:]
            raise BenchError(f"Alertmanager exited at start: {' | '.join(tail)}")
        assert self._http is not None
        try:
            return self._http.get("/-/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it is still there after a grace; safe to call twice."""
        proc, self.proc = self.proc, None
        if proc is not None:
            _signal(proc, signal.SIGTERM)
            try:
                proc.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                _signal(proc, signal.SIGKILL)
                proc.wait(5)
        if self._http is not None:
            self._http.close()
            self._http = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def fire(self, labels_list: Sequence[dict[str, str]]) -> None:
        """Post one firing alert per label set, ``BATCH`` to a request, as Prometheus does
        (no start or end: Alertmanager stamps them); raises on any answer but 2xx."""
        if self._http is None:
            raise BenchError("Alertmanager is not running")
        for i in range(0, len(labels_list), BATCH):
            batch = [{"labels": labels} for labels in labels_list[i : i + BATCH]]
            answer = self._http.post("/api/v2/alerts", json=batch)
            if not answer.is_success:
                raise BenchError(
                    f"Alertmanager answered {answer.status_code} to {len(batch)} alerts: "
                    f"{answer.text[:300]}"
                )


def _signal(proc: subprocess.Popen[bytes], signum: int) -> None:
    # It leads a session of its own: signal the group, as the stack does its children.
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signum)


def alert_labels(key: str, n: int) -> dict[str, str]:
    """An alert as Prometheus would send it for a page (``key`` makes it a group alone)."""
    return {
        "alertname": "ReplicationLag",
        "instance": "db-bench-01",
        "severity": "critical",
        "team": "dba",
        "region": "eu-west-2",
        "db_instance_id": str(n),
        "key": key,
    }


def one_round(ctx: Context, am: Alertmanager, count: int, label: str) -> float:
    """Fire ``count`` distinct alerts and return the seconds from the first POST to the
    emulator's receipt of the last page. BenchError unless exactly ``count`` distinct pages
    were accepted (202): Alertmanager makes its own dedup key (a hash of the group key), so
    pages are told apart by that key, not matched to ours."""
    keys = ctx.ids(f"alertmanager-{label}", count)
    alerts = [alert_labels(key, n) for n, key in enumerate(keys)]  # made before the clock
    base = ctx.fresh_sandbox()
    started = time.time()
    am.fire(alerts)
    timeout = max(120.0, count / 10)
    ctx.wait_for_events(base, count, timeout=timeout)

    def accepted() -> list[dict[str, Any]]:
        events = [e for e in ctx.sandbox.events() if float(e["at"]) >= started]
        # Alertmanager retries only 429 and 5xx; any other refusal is a page lost for good,
        # so fail now rather than wait out the timeout.
        refused = [e for e in events if _lost(e)]
        if refused:
            raise BenchError(
                f"the emulator refused {len(refused)} pages for good, the first with "
                f"{refused[0].get('status')}: {str(refused[0].get('answer'))[:200]}"
            )
        return [e for e in events if e.get("status") == 202 and e.get("path") == "/v2/enqueue"]

    def all_accepted() -> list[dict[str, Any]] | None:
        found = accepted()
        return found if len(found) >= count else None

    pages = accepted()
    if len(pages) < count:
        # Refused requests count as events too; Alertmanager retries them, so wait for the
        # retries (polling slowly: each look copies the whole event log).
        pages = wait_until(
            all_accepted, timeout, f"{count} accepted pages from Alertmanager", interval=0.5
        )
    dedup_keys = {e["body"].get("dedup_key") for e in pages if isinstance(e["body"], dict)}
    if len(dedup_keys) != count or len(pages) != count:
        raise BenchError(
            f"{len(pages)} pages with {len(dedup_keys)} dedup keys accepted for {count} alerts"
        )
    return max(float(e["at"]) for e in pages) - started


def _lost(event: dict[str, Any]) -> bool:
    status = event.get("status")
    return isinstance(status, int) and 400 <= status < 500 and status != 429


def start(ctx: Context) -> Alertmanager:
    """A private Alertmanager paging the stack's emulator, its files in the stack's folder."""
    folder = ctx.stack.workdir / "alertmanager"
    folder.mkdir(parents=True, exist_ok=True)
    return Alertmanager(
        f"{ctx.stack.sandbox_url}/v2/enqueue", folder, ctx.stack.logs / "alertmanager.log"
    ).start()


def describe() -> str:
    """Which Alertmanager ran, for the results' details."""
    if ALERTMANAGER is None:
        return "not installed"
    done = subprocess.run([ALERTMANAGER, "--version"], capture_output=True, text=True)
    first = (done.stdout or done.stderr).strip().splitlines()
    return f"{ALERTMANAGER}: {first[0] if first else 'unknown version'}"
