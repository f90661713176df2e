"""Child processes that do not outlive the process that started them.

A dev stack or a test run starts servers in the background; if it is killed outright
(SIGKILL, an OOM kill, a closed terminal that took it down) they would keep their ports and
keep retrying a Redis that is gone. On Linux the kernel can signal a child when its parent
dies (``PR_SET_PDEATHSIG``); elsewhere there is no such thing and this does nothing.

The signal follows the *thread* that started the child: start children from a thread that
lives as long as they should (the main thread, in practice).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


# Looked up once here: after fork, in the child, only the call itself runs.
_PRCTL = _prctl()


def die_with_parent(signum: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` for :class:`subprocess.Popen`: the child gets ``signum`` when the
    process starting it dies. None where the platform cannot do it."""
    if _PRCTL is None:
        return None
    prctl = _PRCTL
    parent = os.getpid()

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the line above took effect
            os.kill(os.getpid(), signum)

    return arm
