"""``gds-notify api`` as an operator runs it: a token made with ``gds-notify api token``,
configured through a file, served over TLS by the command itself; a bad token setting
stops it at start."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import trustme

from tests.conftest import client_tls, free_port, wait_for
from worker.engine.runtime import engine

GDS_NOTIFY = str(Path(sys.executable).with_name("gds-notify"))


def make_token(*args: str) -> subprocess.CompletedProcess[str]:
    """``gds-notify api token ARGS`` in a fresh interpreter."""
    return subprocess.run(
        [GDS_NOTIFY, "api", "token", *args], capture_output=True, text=True, timeout=60
    )


def test_a_token_is_made_shown_once_and_configured_by_its_hash_only() -> None:
    done = make_token("alertmanager", "--scope", "notify", "--scope", "heartbeat")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    token = lines[1].strip()
    entry = json.loads(lines[3])
    from config.api_tokens import token_hash

    assert token.startswith("gdsn_")
    assert len(token) > 40
    assert entry == {
        "name": "alertmanager",
        "sha256": token_hash(token),
        "scopes": ["notify", "heartbeat"],
    }
    assert token not in lines[3]


def test_a_team_limits_a_heartbeat_token_only() -> None:
    """A notify or admin token acts for every team: a --team on it would be a promise the
    API does not keep, so it is refused, in one line."""
    team_key = make_token("cron", "--scope", "heartbeat", "--team", "payments")
    assert team_key.returncode == 0, team_key.stderr
    assert json.loads(team_key.stdout.splitlines()[3])["team"] == "payments"
    ping_key = make_token("crontab", "--scope", "ping", "--team", "payments")
    assert ping_key.returncode == 0, ping_key.stderr
    entry = json.loads(ping_key.stdout.splitlines()[3])
    assert (entry["scopes"], entry["team"]) == (["ping"], "payments")
    for scopes in (["notify"], ["heartbeat", "admin"], ["ping", "notify"]):
        refused = make_token("x", "--team", "payments", *(f"--scope={s}" for s in scopes))
        assert refused.returncode == 2
        [line] = refused.stderr.strip().splitlines()
        assert "--team limits a token to one team's heartbeat services" in line
        assert refused.stdout == ""  # no token made


def test_the_api_serves_https_with_tokens_from_a_file(
    service_env: Any, tmp_path: Path, ca: trustme.CA
) -> None:
    made = make_token("producer", "--scope", "notify")
    token, entry = made.stdout.splitlines()[1].strip(), made.stdout.splitlines()[3]
    tokens = tmp_path / "tokens.json"
    tokens.write_text(f"[{entry}]")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    issued = ca.issue_cert("127.0.0.1")
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    port = free_port()
    env = {**os.environ, "API_TOKENS_FILE": str(tokens)}
    env.pop("API_TOKENS", None)
    log = (tmp_path / "api.log").open("wb")
    argv = [GDS_NOTIFY, "api", "--port", str(port)]
    proc = subprocess.Popen(
        [*argv, "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        verify = client_tls(ca)  # trusts the test CA
        url = f"https://127.0.0.1:{port}"
        wait_for(lambda: _answers(f"{url}/healthz", verify), timeout=30)
        with httpx.Client(base_url=url, verify=verify, timeout=10) as http:
            sent = http.post(
                "/v1/notifications",
                json={"recipient": "a@example.com", "subject": "over TLS"},
                headers={"Authorization": f"Bearer {token}"},
            )
        assert sent.status_code == 202, sent.text
        assert engine().jobs.get(sent.json()["job_id"]) is not None
        plain = subprocess.run(
            ["curl", "-sS", f"http://127.0.0.1:{port}/healthz"], capture_output=True, timeout=10
        )
        assert plain.returncode != 0  # TLS only
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)
        log.close()
    assert token not in (tmp_path / "api.log").read_text()


def _answers(url: str, verify: Any) -> bool:
    try:
        return httpx.get(url, verify=verify, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_a_bad_token_setting_stops_the_api_at_start_naming_it(tmp_path: Path) -> None:
    env = {**os.environ, "API_TOKENS": '[{"name": "x", "sha256": "not-a-hash", "scopes": []}]'}
    done = subprocess.run(
        [GDS_NOTIFY, "api", "--port", str(free_port())],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "API_TOKENS: 0.sha256" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    # A hand-written entry giving a notify token a team: a limit the API would not keep.
    teamed = [{"name": "pay", "sha256": "a" * 64, "scopes": ["notify"], "team": "payments"}]
    done = subprocess.run(
        [GDS_NOTIFY, "api", "--port", str(free_port())],
        env={**os.environ, "API_TOKENS": json.dumps(teamed)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert "API_TOKENS: 0: a team limits a token to one team's heartbeat services" in line


def test_a_taken_port_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """As `gds-notify dev` says it; uvicorn alone logged the bind error over several lines
    and exited 3, outside the command's exit codes."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [GDS_NOTIFY, "api", "--port", str(port)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line == (
        f"Error: port {port} on 127.0.0.1 is taken (another program listens there); "
        "choose another with --port"
    )


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_a_request_head_too_large_or_too_slow_is_refused_and_others_are_served(
    service_env: Any, tmp_path: Path
) -> None:
    """uvicorn alone kept a 100 MB header whole (stalling the loop) and waited for ever
    on a header line a second: neither needed a token."""
    made = make_token("producer", "--scope", "notify")
    token, entry = made.stdout.splitlines()[1].strip(), made.stdout.splitlines()[3]
    port = free_port()
    env = {**os.environ, "API_TOKENS": f"[{entry}]", "API_READ_TIMEOUT": "2"}
    log = (tmp_path / "api.log").open("wb")
    proc = subprocess.Popen(
        [GDS_NOTIFY, "api", "--port", str(port), "--workers", "1"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _answers(f"{url}/healthz", None), timeout=30)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as huge:
            huge.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
            try:
                for _ in range(200):  # 12.8 MB, never finished: refused long before
                    huge.sendall(b"a" * 65536)
            except OSError:
                pass  # the server closed it
            big_answer = _read_all(huge)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as at_once:
            # The whole head in one write (one read, for the server): 70 KB of header.
            head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000
            at_once.sendall(head + b"\r\n\r\n")
            at_once_answer = _read_all(at_once)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as trailed:
            # A head within the bound, and a chunked body's trailers: not counted with it.
            body = b'{"recipient": "a@example.com", "subject": "trailers"}'
            trailed.sendall(
                b"POST /v1/notifications HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                + f"Authorization: Bearer {token}\r\n".encode()
                + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
                + b"X-Long: "
                + b"b" * 60_000
                + b"\r\n\r\n"
                + f"{len(body):x}\r\n".encode()
                + body
                + b"\r\n0\r\n"
                + b"X-Trailer: "
                + b"t" * 6_000
                + b"\r\n\r\n"
            )
            trailed_answer = _read_all(trailed)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as trailers:
            # Trailers past the bound themselves: refused, not kept in memory. The bound is
            # passed at the last line, so the server has read all that was sent when it
            # answers (bytes it never read would make its close a reset, and lose the 431).
            lines: list[bytes] = []
            counted = 0
            while counted <= 65_536:
                name, value = f"X-T{len(lines)}", "t" * 1_000
                lines.append(f"{name}: {value}\r\n".encode())
                counted += len(name) + len(value) + 4
            trailers.sendall(
                b"POST /v1/notifications HTTP/1.1\r\nHost: x\r\n"
                + f"Authorization: Bearer {token}\r\n".encode()
                + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                + f"{len(body):x}\r\n".encode()
                + body
                + b"\r\n0\r\n"
                + b"".join(lines)
                + b"\r\n"
            )
            trailers_answer = _read_all(trailers)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as slow:
            slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            try:
                for i in range(40):  # a header line every half second, for 20 s
                    slow.sendall(f"X-Line-{i}: y\r\n".encode())
                    slow.settimeout(0.5)
                    try:
                        if slow.recv(1, socket.MSG_PEEK):
                            break
                    except TimeoutError:
                        pass
            except OSError:
                pass
            slow.settimeout(30)
            slow_answer = _read_all(slow)
        with httpx.Client(base_url=url, timeout=30) as http:
            # Allowed heads, kept connections, and a body in the same packets as its head.
            first = http.get("/healthz", headers={"X-Long": "b" * 30_000})
            second = http.get("/healthz")
            sent = http.post(
                "/v1/notifications",
                json={"recipient": "a@example.com", "subject": "x", "body": "c" * 500_000},
                headers={"Authorization": f"Bearer {token}"},
            )
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)
        log.close()
    assert big_answer.startswith(b"HTTP/1.1 431 "), big_answer[:200]
    assert at_once_answer.startswith(b"HTTP/1.1 431 "), at_once_answer[:200]
    assert b"400" not in at_once_answer  # one answer: the 431
    assert trailed_answer.startswith(b"HTTP/1.1 202 "), trailed_answer[:300]
    assert trailers_answer.startswith(b"HTTP/1.1 431 "), trailers_answer[:300]
    assert slow_answer.startswith(b"HTTP/1.1 408 "), slow_answer[:200]
    assert first.status_code == second.status_code == 200
    assert sent.status_code == 202, sent.text
