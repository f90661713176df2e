"""Local stand-ins for the outside world: a PagerDuty Events API v2 emulator (and, with the
email issue, an SMTP sink), with a web page and JSON endpoints to see what arrived."""

from sandbox.pagerduty_emulator import EmulatorOptions, PagerDutyEmulator
from sandbox.server import SandboxError, SandboxServer

__all__ = ["EmulatorOptions", "PagerDutyEmulator", "SandboxError", "SandboxServer"]
