"""The HTTP API for tests: the real application served by uvicorn on a free port, in a
thread of the test process (so it shares the settings, Redis and in-thread worker of the
test), with a token per scope and a ping key limited to one team."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import httpx
import pytest
import uvicorn

from config.api_tokens import token_hash
from tests.conftest import free_port, reconfigure, wait_for

NOTIFY_TOKEN = "gdsn_test-notify-0000000000000000000000000000001"
ADMIN_TOKEN = "gdsn_test-admin-00000000000000000000000000000002"
HEARTBEAT_TOKEN = "gdsn_test-heartbeat-000000000000000000000000003"
#: A ping key limited to the services of one team.
TEAM_PING_KEY = "gdsn_test-payments-0000000000000000000000000004"
#: A key that reports heartbeats and nothing else (the one for crontab lines).
PING_ONLY_KEY = "gdsn_test-ping-only-00000000000000000000000005"
TOKENS = [
    {"name": "producer", "sha256": token_hash(NOTIFY_TOKEN), "scopes": ["notify"]},
    {"name": "crontab", "sha256": token_hash(PING_ONLY_KEY), "scopes": ["ping"]},
    {"name": "ops", "sha256": token_hash(ADMIN_TOKEN), "scopes": ["admin"]},
    {"name": "cron", "sha256": token_hash(HEARTBEAT_TOKEN), "scopes": ["heartbeat"]},
    {
        "name": "payments-cron",
        "sha256": token_hash(TEAM_PING_KEY),
        "scopes": ["heartbeat"],
        "team": "payments",
    },
]


class ApiServer:
    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(
            "api.app:create_app",
            factory=True,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="off",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="api", daemon=True)

    def start(self) -> ApiServer:
        self.thread.start()
        wait_for(lambda: self.server.started, timeout=15)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)

    def client(self, token: str | None = NOTIFY_TOKEN) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=15)


def serve(monkeypatch: pytest.MonkeyPatch, **settings: str) -> Iterator[ApiServer]:
    """Serve the API with the test tokens and ``settings`` (environment variables) on top
    of those already in force."""
    monkeypatch.setenv("API_TOKENS", json.dumps(TOKENS))
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    reconfigure()
    server = ApiServer(free_port()).start()
    try:
        yield server
    finally:
        server.stop()
