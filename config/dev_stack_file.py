"""Where a running ``gds-notify dev`` stack announces itself, so that producers in the
same checkout — ``gds-notify`` commands, ``tasks.enqueue`` and anything else that reads
the settings — talk to it with no setup.

``gds-notify dev`` writes ``.gds-dev/stack.json`` in the checkout (``GDS_DEV_DIR``
overrides the folder): its pid, URLs, and the environment its processes run with (the
sandbox's routing key is a made-up one; the admin API token lives as long as the stack, on
loopback, and the file is readable by its owner alone). Its values count *under* the
environment: a variable set in the environment always wins, and the stack's values win
over a ``.env`` file (which may well name production's Redis). A stack whose process is
gone is ignored.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

STACK_FILE = "stack.json"
#: Settings read where a job enters (routing, its first stall deadline, how long its id and
#: record are kept): a producer without them would route or record a job otherwise than the
#: stack does, so a stack started with any of them passes them on to its producers.
INTAKE_SETTINGS = (
    "ROUTING_RULES",
    "JOB_STALL_SECONDS",
    "IDEMPOTENCY_TTL_SECONDS",
    "JOB_TTL_SECONDS",
)


def checkout_root() -> Path:
    """The checkout this package was installed from (editable install), else the current
    directory."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").exists() else Path.cwd()


def dev_dir() -> Path:
    """The folder a dev stack announces itself in."""
    return Path(os.environ.get("GDS_DEV_DIR") or checkout_root() / ".gds-dev")


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_stack() -> dict[str, Any] | None:
    """The announcement of a dev stack that is still running, or None."""
    path = dev_dir() / STACK_FILE
    try:
        stack = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(stack, dict) or not _alive(int(stack.get("pid", 0) or 0)):
        return None
    return stack


def stack_environment() -> dict[str, str]:
    """The running dev stack's settings that the environment does not set itself."""
    stack = running_stack()
    if stack is None:
        return {}
    return {
        str(name): str(value)
        for name, value in dict(stack.get("env", {})).items()
        if str(name) not in os.environ
    }


def write_stack(stack: dict[str, Any]) -> Path:
    """Announce a stack (atomically: a reader never sees half a file)."""
    folder = dev_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / STACK_FILE
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    # Its owner's alone: it holds the stack's admin API token, which on a shared machine
    # another user could otherwise read and use against the running stack.
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
        out.write(json.dumps(stack, indent=2))
    tmp.replace(path)
    return path


def remove_stack() -> None:
    (dev_dir() / STACK_FILE).unlink(missing_ok=True)
