"""Where a running ``gds-notify dev`` stack announces itself, so that any ``gds-notify``
command run from another terminal in the same checkout talks to it with no setup.

``gds-notify dev`` writes ``.gds-dev/stack.json`` in the checkout (``GDS_DEV_DIR``
overrides the folder): its pid, URLs, and the environment its processes run with — none of
it secret (the sandbox's routing key is a made-up one). Other commands read it and use its
values *under* the caller's environment: a variable you set yourself always wins.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

STACK_FILE = "stack.json"


def checkout_root() -> Path:
    """The checkout this ``gds-notify`` was installed from (editable install), else the
    current directory."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").exists() else Path.cwd()


def dev_dir() -> Path:
    return Path(os.environ.get("GDS_DEV_DIR") or checkout_root() / ".gds-dev")


def _alive(pid: int) -> bool:
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


def write_stack(stack: dict[str, Any]) -> Path:
    folder = dev_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / STACK_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(stack, indent=2))
    tmp.replace(path)
    return path


def remove_stack() -> None:
    (dev_dir() / STACK_FILE).unlink(missing_ok=True)


def use_running_stack() -> dict[str, Any] | None:
    """Put a running dev stack's settings under this process's environment (before
    anything has read the settings: ``gds-notify`` calls this first)."""
    stack = running_stack()
    if stack is None:
        return None
    for name, value in dict(stack.get("env", {})).items():
        os.environ.setdefault(str(name), str(value))
    return stack
