"""Catalogue snippets for heartbeat tests (the ``catalogue`` fixture is in conftest)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

WriteCatalogue = Callable[[str], Path]


def service(
    slug: str, *, window: float = 1.0, grace: float = 0.0, extra: str = "", **fields: Any
) -> str:
    values = {
        "name": f'"{fields.get("name", slug.title())}"',
        "team": f'"{fields.get("team", "payments")}"',
        "priority": f'"{fields.get("priority", "P2")}"',
        "window": repr(window),
        "grace": repr(grace),
        "runbook_url": f'"https://runbooks.example/{slug}"',
    }
    if "routing_key_team" in fields:
        values["routing_key_team"] = f'"{fields["routing_key_team"]}"'
    body = "\n".join(f"{k} = {v}" for k, v in values.items())
    return f"[services.{slug}]\n{body}\n{extra}\n"
