"""Reading and steering the sandbox over its HTTP inspection API, as an operator would."""

from __future__ import annotations

from typing import Any

import httpx


class SandboxAPI:
    """A thin client for ``/sandbox/*`` (see sandbox/app.py)."""

    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=60)

    def reset(self) -> None:
        """Forget events, incidents and mail (the request counter keeps counting)."""
        self.http.post("/sandbox/reset").raise_for_status()

    def settings(self, **changes: Any) -> dict[str, Any]:
        answer = self.http.post("/sandbox/settings", json=changes)
        answer.raise_for_status()
        return dict(answer.json())

    def last_seq(self) -> int:
        """The number of the newest request the emulator recorded (0: none since reset)."""
        newest = self.http.get("/sandbox/events", params={"limit": 1}).json()
        return int(newest[0]["seq"]) if newest else 0

    def events(self) -> list[dict[str, Any]]:
        return list(self.http.get("/sandbox/events").json())

    def incidents(self) -> list[dict[str, Any]]:
        return list(self.http.get("/sandbox/incidents").json())

    def message_count(self) -> int:
        return int(self.http.get("/sandbox/smtp").json()["messages"])

    def messages(self) -> list[dict[str, Any]]:
        return list(self.http.get("/sandbox/messages").json())

    def close(self) -> None:
        self.http.close()
