"""The Procfile, docker-compose.yml and .env.example say what the service needs, and the
Procfile's worker pools really keep pages away from the email backlog."""

from __future__ import annotations

import io
import os
import re
import shlex
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

import tasks
from config.queues import EMAIL_QUEUE, INTAKE_QUEUE, PAGERDUTY_QUEUE
from config.settings import Settings
from sandbox import SandboxServer
from tests.conftest import SandboxClient, wait_for
from tests.processes import CELERY, WorkerProcess
from worker.engine.runtime import engine
from worker.providers.base import Notification

ROOT = Path(__file__).resolve().parent.parent


def procfile() -> dict[str, str]:
    entries = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, command = line.partition(":")
            entries[name.strip()] = command.strip()
    return entries


def queues_of(command: str) -> list[str]:
    args = shlex.split(command)
    return args[args.index("-Q") + 1].split(",")


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text()))


def shell_words(command: str, **env: str) -> list[str]:
    """``command``'s arguments as the shell honcho and foreman run it with expands them."""
    script = f'for word in {command}; do printf "%s\\0" "$word"; done'
    done = subprocess.run(
        ["sh", "-c", script], env={**os.environ, **env}, capture_output=True, check=True
    )
    return done.stdout.decode().split("\0")[:-1]


def test_a_pool_scales_over_processes_each_with_its_own_node_name() -> None:
    for pool in ("pagerduty", "email"):
        names = set()
        for port in ("5000", "5001"):  # what `honcho start -c pagerduty=2` gives each
            words = shell_words(procfile()[pool], PORT=port)
            names.add(words[words.index("-n") + 1])
        assert len(names) == 2, names
    # Without a process manager, one process keeps a plain name.
    words = shell_words(procfile()["pagerduty"], PORT="")
    assert words[words.index("-n") + 1] == "pagerduty-1@%h"
    replicas = compose()["services"]["worker-pagerduty"]["deploy"]["replicas"]
    assert replicas == "${PAGERDUTY_PROCESSES:-2}"


def test_procfile_runs_a_pool_per_queue_plus_beat_and_flower() -> None:
    entries = procfile()
    assert {"pagerduty", "email", "beat", "flower"} <= set(entries)
    for pool in ("pagerduty", "email"):
        assert entries[pool].startswith("celery -A worker worker ")
        assert "-E" in shlex.split(entries[pool])
    assert "email" not in queues_of(entries["pagerduty"])
    assert "pagerduty" not in queues_of(entries["email"])
    assert queues_of(entries["pagerduty"])[0] == "pagerduty"
    assert entries["beat"].startswith("celery -A worker beat")
    assert entries["flower"].startswith("celery -A worker flower")
    # Production's process list: an emulator failing to bind its port would stop it all.
    assert "sandbox" not in entries


@pytest.mark.parametrize("layout", ["Procfile", "docker-compose.yml"])
def test_intake_is_served_by_the_page_pool_not_the_idle_email_pool(layout: str) -> None:
    # A pool at --idle-priority gets the CPU last: intake there (pages sent with
    # send_task("notify"), the watchdog canary) would wait out every page storm.
    if layout == "Procfile":
        page, mail = procfile()["pagerduty"], procfile()["email"]
    else:
        services = compose()["services"]
        page = services["worker-pagerduty"]["command"]
        mail = services["worker-email"]["command"]
    assert "--idle-priority" in shlex.split(mail)
    assert queues_of(mail) == [EMAIL_QUEUE]
    assert queues_of(page) == [PAGERDUTY_QUEUE, INTAKE_QUEUE]


def test_compose_redis_is_persistent_private_and_protected() -> None:
    services = compose()["services"]
    redis = services["redis"]
    command = " ".join(redis["command"].split())
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command
    assert "--requirepass" in command
    assert "ports" not in redis  # only services on the internal network reach it
    assert "healthcheck" in redis
    flower = services["flower"]
    assert all(p.startswith("127.0.0.1:") for p in flower["ports"])
    assert "FLOWER_BASIC_AUTH" in flower["environment"]
    procs = procfile()
    assert services["worker-pagerduty"]["command"].startswith(procs["pagerduty"].split(" -n ")[0])
    assert services["worker-email"]["command"].startswith(procs["email"].split(" -n ")[0])
    api = services["api"]
    assert api["command"].startswith("gds-notify api ")
    assert all(p.startswith("127.0.0.1:") for p in api["ports"])
    assert procs["api"].startswith("gds-notify api ")
    for name in ("worker-pagerduty", "worker-email", "flower", "api"):
        assert "healthcheck" in services[name], name
    for name in ("worker-pagerduty", "worker-email", "beat", "flower", "api"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"


def _published(service: dict[str, Any]) -> list[str]:
    out = []
    for port in service.get("ports", []):
        if isinstance(port, dict):  # long syntax
            out.append(f"{port.get('host_ip', '0.0.0.0')}:{port.get('published')}")
        else:
            out.append(str(port))
    return out


def test_compose_publishes_nothing_beyond_localhost_and_redis_needs_its_password() -> None:
    services = compose()["services"]
    for name, service in services.items():
        for port in _published(service):
            # "5555:5555" or "0.0.0.0:..." would listen on every interface.
            assert port.startswith("127.0.0.1:"), (name, port)
    for key in ("ports", "network_mode"):
        assert key not in services["redis"], key
    command = services["redis"]["command"].split()
    password = command[command.index("--requirepass") + 1]
    assert password.startswith("${REDIS_PASSWORD:?"), "the password must be required, from .env"
    assert "--appendonly" in command
    assert command[command.index("--appendonly") + 1] == "yes"
    healthcheck = " ".join(services["redis"]["healthcheck"]["test"])
    assert "REDISCLI_AUTH" in healthcheck
    assert " -a " not in healthcheck  # not on a command line `ps` shows
    for name, service in services.items():
        if name in ("redis", "sandbox"):
            continue
        url = service["environment"]["REDIS_URL"]
        assert url.startswith("redis://:${REDIS_PASSWORD"), (name, url)
        assert url.split("@", 1)[1].startswith("redis:6379/"), (name, url)


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(s|m)", duration)
    assert match is not None, duration
    return int(match.group(1)) * (60 if match.group(2) == "m" else 1)


def test_compose_stops_gracefully_bounds_redis_and_rotates_logs() -> None:
    """A stop lets a worker finish the deliveries it holds (Docker's default 10 s killed
    one mid-call, sent again later); Redis has a ceiling, so noeviction refuses writes
    rather than the host killing it; logs do not fill the disk."""
    from types import SimpleNamespace

    from worker.channels import Channel
    from worker.engine.delivery import claim_seconds

    services = compose()["services"]
    defaults: Any = SimpleNamespace(settings=Settings(_env_file=None))
    for name in ("worker-pagerduty", "worker-email", "beat", "api"):
        grace = _seconds(services[name]["stop_grace_period"])
        assert grace >= claim_seconds(defaults, Channel.PAGERDUTY), name
        assert services[name]["logging"]["options"]["max-size"], name
    email_grace = _seconds(services["worker-email"]["stop_grace_period"])
    assert email_grace >= claim_seconds(defaults, Channel.EMAIL)
    command = services["redis"]["command"].split()
    assert command[command.index("--maxmemory") + 1] == "${REDIS_MAXMEMORY:-1gb}"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert services["redis"]["logging"]["options"]["max-file"]
    # The API's own liveness: /readyz describes the whole service.
    assert "/healthz" in " ".join(services["api"]["healthcheck"]["test"])
    # The Sentinel overlay's own servers and Sentinels too (the base file's anchor does
    # not reach them).
    overlay = yaml.safe_load((ROOT / "docker-compose.sentinel.yml").read_text())["services"]
    for name in ("redis-replica-1", "redis-replica-2", "sentinel-1", "sentinel-2", "sentinel-3"):
        assert overlay[name]["logging"]["options"]["max-size"], name


def test_env_example_names_every_setting() -> None:
    text = (ROOT / ".env.example").read_text()
    names = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", text, flags=re.MULTILINE))
    documented_elsewhere = {
        "pagerduty_team_routing_keys",  # PAGERDUTY_ROUTING_KEY_<TEAM>, shown commented
        "smtp_use_tls",
        "smtp_validate_certs",
        "smtp_ca_file",
        "job_ttl_seconds",
    }
    for field in Settings.model_fields:
        if field not in documented_elsewhere:
            assert field.upper() in names, field
    assert "PAGERDUTY_ROUTING_KEY_DBA" in names


def test_procfile_pagerduty_pool_delivers_pages_past_an_email_backlog(
    service_env: SandboxServer, tmp_path: Path
) -> None:
    emails = [
        tasks.enqueue(Notification(recipient=f"u{i}@example.com", subject=f"digest {i}"))
        for i in range(50)
    ]
    page = tasks.enqueue(Notification(recipient="db-2", subject="down", priority="critical"))
    argv = shell_words(procfile()["pagerduty"])
    argv[0] = CELERY  # the virtualenv's celery, as the Procfile's PATH would find it
    pool = WorkerProcess(tmp_path / "pool.log", argv=argv).start()
    try:
        wait_for(lambda: engine().jobs.get(page)["status"] == "delivered")  # type: ignore[index]
    finally:
        pool.stop()
    assert all(engine().jobs.get(e)["status"] == "pending" for e in emails)  # type: ignore[index]
    api = SandboxClient(service_env)
    assert api.messages() == []
    assert len(api.incidents()) == 1
    api.close()


def test_honcho_scales_the_page_pool_over_two_processes_each_seen_by_name(
    service_env: SandboxServer, tmp_path: Path
) -> None:
    """The README's `honcho start -c pagerduty=2`, run by honcho itself (installed with the
    project): two page workers, each with its own node name, both seen by the pool; a
    SIGTERM to honcho stops both, and they say they are gone."""
    # As the README runs it: the virtualenv activated, which puts the Procfile's `celery`
    # on the PATH (a shell of its own, with no PATH from this test run).
    activate = shlex.quote(str(Path(CELERY).parent / "activate"))
    env = {**os.environ, "PATH": os.defpath}
    log = (tmp_path / "honcho.log").open("wb")
    honcho = subprocess.Popen(
        ["bash", "-c", f". {activate} && exec honcho start -c pagerduty=2 pagerduty"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        seen = wait_for(
            lambda: len(names := {w.hostname for w in engine().workers.seen(30)}) == 2 and names,
            timeout=30,
        )
        os.killpg(honcho.pid, signal.SIGTERM)
        honcho.wait(30)  # it stops its processes, then itself
    finally:
        if honcho.poll() is None:
            os.killpg(honcho.pid, signal.SIGKILL)
            honcho.wait()
        log.close()
    assert all(name.startswith("pagerduty-") for name in seen), seen
    assert engine().workers.seen(30) == []  # each said it was gone on its way out


def test_the_image_holds_every_package_its_commands_import(tmp_path: Path) -> None:
    """What the Dockerfile copies, imported alone (the checkout and its editable install
    out of the path): `gds-notify` (the API, the sandbox, the CLI) and the worker. The
    image once left out `api`, and every `gds-notify` command in it failed."""
    import shutil
    import site
    import sys

    context = build_context(ROOT)
    for source in dockerfile_copies():
        for path in context:
            if path == source or path.startswith(source + "/"):
                (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(ROOT / path, tmp_path / path)
    program = (
        "import sys; sys.path[:0] = sys.argv[1:]; "
        "import cli.main, api.app, worker.celery_app, tasks, sandbox.server"
    )
    paths = [str(tmp_path), *site.getsitepackages()]
    done = subprocess.run(
        [sys.executable, "-S", "-c", program, *paths],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]


def dockerfile_copies() -> list[str]:
    """The sources the Dockerfile's COPY lines name, relative to the build context."""
    sources = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"]:
            sources += [word.rstrip("/") for word in words[1:-1] if not word.startswith("--")]
    return sources


def _docker_pattern(pattern: str) -> re.Pattern[str]:
    # Docker's .dockerignore syntax: Go's filepath.Match per path, plus ** for any depth;
    # a pattern that matches a folder excludes everything in it.
    text = pattern.strip().lstrip("/").removeprefix("./")
    out, i = "", 0
    while i < len(text):
        if text.startswith("**/", i):
            out, i = out + "(.*/)?", i + 3  # any folders, none included
        elif text.startswith("**", i):
            out, i = out + ".*", i + 2
        elif text[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif text[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(text[i]), i + 1
    return re.compile(out + "(/.*)?")


def build_context(root: Path) -> set[str]:
    """The files ``docker build`` sends from ``root`` after its .dockerignore: each rule
    in order, the last that matches a path (or a folder holding it) deciding, ``!``
    taking a path back in."""
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            keep = line.startswith("!")
            rules.append((keep, _docker_pattern(line[1:] if keep else line)))

    def ignored(path: str) -> bool:
        verdict = False
        for keep, pattern in rules:
            if pattern.fullmatch(path):
                verdict = not keep
        return verdict

    files = set()
    for folder, dirs, names in os.walk(root):
        relative = Path(folder).relative_to(root)
        # A folder ignored is not walked: no rule here takes anything inside one back.
        dirs[:] = [d for d in dirs if not ignored((relative / d).as_posix())]
        paths = ((relative / name).as_posix() for name in names)
        files |= {path for path in paths if not ignored(path)}
    return files


def test_the_build_context_leaves_out_secrets_and_local_state(tmp_path: Path) -> None:
    """``docker build .`` sends the daemon neither .env (the routing keys, the SMTP and
    Redis passwords) nor the virtualenv, git history, caches or bench results; everything
    the Dockerfile copies still goes."""
    for path in [
        ".env",
        ".env.production",
        ".env.example",
        ".git/HEAD",
        ".venv/bin/python",
        ".gds-dev/stack.json",
        "worker/__pycache__/app.cpython-311.pyc",
        "worker/engine/__pycache__/jobs.cpython-311.pyc",
        "__pycache__/conftest.cpython-311.pyc",
        "server.pem",
        "tls/server.key",
        ".import_linter_cache/x",
        "worker/engine/jobs_claim.lua",
        "worker/celery_app.py",
        "gds_notification.egg-info/PKG-INFO",
        "bench/results/latest.json",
        "celerybeat-schedule.db",
        "pyproject.toml",
    ]:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("x")
    assert build_context(tmp_path) == {
        ".env.example",
        "worker/engine/jobs_claim.lua",
        "worker/celery_app.py",
        "pyproject.toml",
    }
    context = build_context(ROOT)
    for source in dockerfile_copies():
        assert any(p == source or p.startswith(source + "/") for p in context), source
    assert "worker/engine/jobs_claim.lua" in context  # the scripts travel with the code


def test_env_example_reads_the_same_to_honcho_as_to_compose_and_the_service() -> None:
    """honcho joins the words of an unquoted value with nothing between them: SMTP_FROM
    reached the worker as 'GDSAlerts<alerts@example.com>', and the ROUTING_RULES example,
    uncommented, as JSON without its quotes."""
    from dotenv import dotenv_values
    from honcho.environ import parse

    text = (ROOT / ".env.example").read_text()
    uncommented = re.sub(r"(?m)^# ?([A-Z][A-Z0-9_]*=)", r"\1", text)  # every example on
    as_honcho = parse(uncommented)
    as_dotenv = dotenv_values(stream=io.StringIO(uncommented))
    assert set(as_dotenv) >= {"SMTP_FROM", "ROUTING_RULES", "API_TOKENS"}
    differ = {
        name: (as_honcho.get(name), value)
        for name, value in as_dotenv.items()
        if (as_honcho.get(name) or "") != (value or "")
    }
    assert differ == {}
