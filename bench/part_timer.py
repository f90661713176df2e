"""CPU time of a step split over the functions it passes through, for one thread.

Each named part is the thread's CPU time inside one function less the time inside the
other timed functions it calls, so the parts of a step add up to no more than the step.
The functions are swapped for timed wrappers while the timer is on (``with timer:``) and
put back afterwards; nothing of the code under measurement changes. Only the thread that
turned the timer on may run the wrapped functions meanwhile.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections import Counter
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self


class PartTimer:
    """Thread CPU seconds per part; see the module's docstring."""

    def __init__(self) -> None:
        self.spent: Counter[str] = Counter()
        self._running: list[list[Any]] = []  # [part, when it last resumed]
        self._swaps: list[tuple[Any, str, Any]] = []  # (owner, name, wrapper)
        self._saved: list[tuple[Any, str, Any, bool]] = []

    # -- what is timed ----------------------------------------------------------------

    def function(self, owner: Any, name: str, part: str) -> Self:
        """Time calls of ``owner.name`` (a function, method or classmethod) as ``part``."""
        raw = inspect.getattr_static(owner, name)
        if isinstance(raw, classmethod):
            inner = raw.__func__
            self._swaps.append((owner, name, classmethod(self._timed(inner, part))))
        elif isinstance(raw, staticmethod):
            self._swaps.append((owner, name, staticmethod(self._timed(raw.__func__, part))))
        else:
            self._swaps.append((owner, name, self._timed(raw, part)))
        return self

    def context(self, owner: Any, name: str, part: str) -> Self:
        """Time what ``owner.name(...)``, a context manager, does on entering and leaving
        its block as ``part`` (the block itself is not part of it)."""
        raw = inspect.getattr_static(owner, name)
        timer = self

        @functools.wraps(raw)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return _TimedContext(timer, part, raw(*args, **kwargs))

        self._swaps.append((owner, name, wrapper))
        return self

    def _timed(self, fn: Callable[..., Any], part: str) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            self.enter(part)
            try:
                return fn(*args, **kwargs)
            finally:
                self.leave()

        return wrapper

    # -- the clock ----------------------------------------------------------------------

    def enter(self, part: str) -> None:
        now = time.thread_time()
        if self._running:
            outer = self._running[-1]
            self.spent[outer[0]] += now - outer[1]
        self._running.append([part, now])

    def leave(self) -> None:
        now = time.thread_time()
        part, resumed = self._running.pop()
        self.spent[part] += now - resumed
        if self._running:
            self._running[-1][1] = now

    # -- on and off ---------------------------------------------------------------------

    def __enter__(self) -> Self:
        for owner, name, wrapper in self._swaps:
            own = name in vars(owner)
            self._saved.append((owner, name, vars(owner).get(name), own))
            setattr(owner, name, wrapper)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for owner, name, original, own in reversed(self._saved):
            if own:
                setattr(owner, name, original)
            else:
                delattr(owner, name)  # it was inherited: inherit it again
        self._saved.clear()


class _TimedContext:
    def __init__(self, timer: PartTimer, part: str, inner: Any) -> None:
        self.timer, self.part, self.inner = timer, part, inner

    def __enter__(self) -> Any:
        self.timer.enter(self.part)
        try:
            return self.inner.__enter__()
        finally:
            self.timer.leave()

    def __exit__(self, *exc: Any) -> Any:
        self.timer.enter(self.part)
        try:
            return self.inner.__exit__(*exc)
        finally:
            self.timer.leave()
