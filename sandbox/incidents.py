"""Incident state per (routing_key, dedup_key), as PagerDuty documents it.

- trigger on a key with an open (triggered or acknowledged) incident appends to it;
  otherwise it opens a new incident (and a trigger with no key always does);
- acknowledge moves an open incident to acknowledged, resolve moves it to resolved;
- after resolve, the next trigger with the same key opens a new incident;
- acknowledge/resolve for a resolved or unknown key are dropped (still answered 202);
- a different routing key never touches another key's incidents.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any

TRIGGERED = "triggered"
ACKNOWLEDGED = "acknowledged"
RESOLVED = "resolved"


def shown_key(routing_key: str) -> str:
    """A routing key as the sandbox shows it: its last four characters, never the rest."""
    return "…" + routing_key[-4:] if len(routing_key) >= 16 else "****"


@dataclass
class Incident:
    number: int
    routing_key: str
    dedup_key: str
    summary: str
    severity: str
    source: str
    status: str = TRIGGERED
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    alert_count: int = 1
    timeline: list[dict[str, Any]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": f"SANDBOX-{self.number}",
            "routing_key": shown_key(self.routing_key),
            "dedup_key": self.dedup_key,
            "status": self.status,
            "summary": self.summary,
            "severity": self.severity,
            "source": self.source,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "alert_count": self.alert_count,
            "event_count": len(self.timeline),
            "timeline": self.timeline,
            "payload": self.details,
        }


class IncidentStore:
    """All incidents the sandbox has seen; thread-safe so tests can read while it serves."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._numbers = itertools.count(1)
        self._all: list[Incident] = []
        self._open: dict[tuple[str, str], Incident] = {}

    def apply(self, routing_key: str, action: str, dedup_key: str, event: dict[str, Any]) -> bool:
        """Apply one valid alert event; False when PagerDuty would have dropped it."""
        now = time.time()
        with self._lock:
            incident = self._open.get((routing_key, dedup_key))
            if action == "trigger":
                payload = event.get("payload") or {}
                entry = {"at": now, "action": action, "summary": payload.get("summary")}
                if incident is None:
                    incident = Incident(
                        number=next(self._numbers),
                        routing_key=routing_key,
                        dedup_key=dedup_key,
                        summary=str(payload.get("summary")),
                        severity=str(payload.get("severity")),
                        source=str(payload.get("source")),
                        details={
                            k: v for k, v in event.items() if k not in ("routing_key", "payload")
                        }
                        | {"payload": payload},
                    )
                    self._all.append(incident)
                    self._open[(routing_key, dedup_key)] = incident
                else:
                    incident.alert_count += 1
                incident.timeline.append(entry)
                incident.updated_at = now
                return True
            if incident is None:
                return False
            incident.timeline.append({"at": now, "action": action})
            incident.updated_at = now
            if action == "acknowledge":
                incident.status = ACKNOWLEDGED
            elif action == "resolve":
                incident.status = RESOLVED
                del self._open[(routing_key, dedup_key)]
            return True

    def snapshot(
        self, status: str | None = None, dedup_key: str | None = None
    ) -> list[dict[str, Any]]:
        with self._lock:
            return [
                i.to_json()
                for i in self._all
                if (status is None or i.status == status)
                and (dedup_key is None or i.dedup_key == dedup_key)
            ]

    def clear(self) -> None:
        with self._lock:
            self._all.clear()
            self._open.clear()
            self._numbers = itertools.count(1)
