"""The channels a notification can go out on. Each has its own queue and delivery task."""

from __future__ import annotations

import enum


class Channel(enum.StrEnum):
    PAGERDUTY = "pagerduty"
    EMAIL = "email"
