"""Fault injection shared by the sandbox's PagerDuty emulator and SMTP sink.

A plan holds a scripted ``sequence`` (one fault per request, for the next N requests) and
``random`` rules (each with a probability, checked in order) used once the sequence is
spent. A fault answers with a given ``status`` (HTTP status, or SMTP reply code for the
sink), waits ``delay`` seconds first (past a client's timeout, if you like), or ``drop``s
the connection without an answer; ``accept`` with ``drop`` takes the request first (the
event applied, the message kept), so only the answer is lost on its way. ``{}`` in a
sequence means "behave normally this time".
"""

from __future__ import annotations

import random
import threading
from collections import deque
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Fault(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: int | None = Field(default=None, ge=100, le=599, description="Answer with this.")
    delay: float = Field(default=0.0, ge=0, le=600, description="Seconds to wait first.")
    drop: bool = Field(default=False, description="Close the connection without answering.")
    accept: bool = Field(
        default=False,
        description="With drop: take the request first (apply the event, keep the message).",
    )
    retry_after: str | None = Field(default=None, description="Retry-After header for a 429.")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra answer headers.")
    body: str | None = Field(default=None, description="Answer body (HTTP) or reply text.")

    @model_validator(mode="after")
    def _accept_needs_drop(self) -> Fault:
        if self.accept and not self.drop:
            raise ValueError("accept goes with drop: it takes the request, then drops the answer")
        return self


class RandomFault(BaseModel):
    model_config = ConfigDict(extra="forbid")

    probability: float = Field(ge=0, le=1)
    fault: Fault


class FaultPlan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sequence: list[Fault] = Field(default_factory=list)
    random: list[RandomFault] = Field(default_factory=list)
    seed: int | None = None


class FaultInjector:
    """Hands out the next fault, if any, for each request; safe across threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sequence: deque[Fault] = deque()
        self._random: list[RandomFault] = []
        self._rng = random.Random()  # noqa: S311 - fault injection, not cryptography
        self.injected = 0

    def set_plan(self, plan: FaultPlan) -> None:
        with self._lock:
            self._sequence = deque(plan.sequence)
            self._random = list(plan.random)
            self._rng = random.Random(plan.seed)  # noqa: S311

    def add_random(self, rule: RandomFault) -> None:
        with self._lock:
            self._random.append(rule)

    def clear(self) -> None:
        self.set_plan(FaultPlan())

    def next(self) -> Fault | None:
        with self._lock:
            if self._sequence:
                fault: Fault | None = self._sequence.popleft()
            else:
                fault = None
                for rule in self._random:
                    if self._rng.random() < rule.probability:
                        fault = rule.fault
                        break
            if fault is not None and fault != Fault():
                self.injected += 1
                return fault
            return None

    def describe(self) -> dict[str, Any]:
        with self._lock:
            return {
                "sequence": [f.model_dump(exclude_defaults=True) for f in self._sequence],
                "random": [r.model_dump(exclude_defaults=True) for r in self._random],
                "injected": self.injected,
            }
