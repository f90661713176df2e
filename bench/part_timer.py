"""CPU time of a step split over the functions it passes through, for one thread.

Each named part is the thread's CPU time inside one function less the time inside the
other timed functions it calls, so the parts of a step add up to no more than the step.
The functions are swapped for timed wrappers while the timer is on (``with timer:``) and
put back afterwards; nothing of the code under measurement changes. Only the thread that
turned the timer on is timed: other threads that call a wrapped function meanwhile run it
untimed.

Owners are classes or modules, whose attributes can be swapped. A wrapped ``Logger._log``
would report the wrapper as the caller of every log record (``%(funcName)s``,
``%(pathname)s``), so :meth:`PartTimer.function` passes one more ``stacklevel`` to
functions that take one.
"""

from __future__ import annotations

import functools
import inspect
import threading
import time
from collections import Counter
from collections.abc import Callable
from types import ModuleType, TracebackType
from typing import Any, Self


class PartTimer:
    """Thread CPU seconds per part; see the module's docstring."""

    def __init__(self) -> None:
        self.spent: Counter[str] = Counter()
        self._running: list[list[Any]] = []  # [part, when it last resumed]
        self._swaps: list[tuple[Any, str, Any]] = []  # (owner, name, wrapper)
        self._saved: list[tuple[Any, str, Any, bool]] = []  # (owner, name, original, own)
        self._thread: int | None = None  # the thread that turned the timer on

    # -- what is timed ----------------------------------------------------------------

    def function(self, owner: type | ModuleType, name: str, part: str) -> Self:
        """Time calls of ``owner.name`` (a function, method, classmethod or staticmethod)
        as ``part``."""
        self._swaps.append((owner, name, _rewrapped(owner, name, lambda fn: self._timed(fn, part))))
        return self

    def context(self, owner: type | ModuleType, name: str, part: str) -> Self:
        """Time what ``owner.name(...)``, a context manager, does on entering and leaving
        its block as ``part`` (the block itself is not part of it)."""

        def timed(fn: Callable[..., Any]) -> Callable[..., Any]:
            @functools.wraps(fn)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                inner = fn(*args, **kwargs)
                return _TimedContext(self, part, inner) if self._on_this_thread() else inner

            return wrapper

        self._swaps.append((owner, name, _rewrapped(owner, name, timed)))
        return self

    def _timed(self, fn: Callable[..., Any], part: str) -> Callable[..., Any]:
        takes_stacklevel = "stacklevel" in inspect.signature(fn).parameters

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not self._on_this_thread():
                return fn(*args, **kwargs)
            if takes_stacklevel:
                # The wrapper is one more frame between the caller and ``fn``.
                kwargs["stacklevel"] = kwargs.get("stacklevel", 1) + 1
            self.enter(part)
            try:
                return fn(*args, **kwargs)
            finally:
                self.leave()

        return wrapper

    def _on_this_thread(self) -> bool:
        return self._thread == threading.get_ident()

    # -- the clock ----------------------------------------------------------------------

    def enter(self, part: str) -> None:
        """Start charging this thread's CPU to ``part``; the part it interrupts pauses."""
        now = time.thread_time()
        if self._running:
            outer = self._running[-1]
            self.spent[outer[0]] += now - outer[1]
        self._running.append([part, now])

    def leave(self) -> None:
        """Stop charging the innermost part; the part it interrupted resumes."""
        now = time.thread_time()
        part, resumed = self._running.pop()
        self.spent[part] += now - resumed
        if self._running:
            self._running[-1][1] = now

    # -- on and off ---------------------------------------------------------------------

    def __enter__(self) -> Self:
        if self._thread is not None:
            raise RuntimeError("this part timer is already on")
        self._thread = threading.get_ident()
        try:
            for owner, name, wrapper in self._swaps:
                own = name in vars(owner)
                saved = (owner, name, vars(owner).get(name), own)
                setattr(owner, name, wrapper)
                self._saved.append(saved)
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._restore()

    def _restore(self) -> None:
        """Put every swapped function back, even when one of them cannot be."""
        failures: list[BaseException] = []
        try:
            for owner, name, original, own in reversed(self._saved):
                try:
                    if own:
                        setattr(owner, name, original)
                    else:
                        delattr(owner, name)  # it was inherited: inherit it again
                except Exception as error:  # the others still go back
                    failures.append(error)
        finally:
            self._saved.clear()
            self._thread = None
        if failures:
            raise failures[0]


def _rewrapped(
    owner: type | ModuleType,
    name: str,
    wrap: Callable[[Callable[..., Any]], Callable[..., Any]],
) -> Any:
    """``owner.name`` with its function wrapped by ``wrap``, as the same kind of
    attribute (a classmethod stays a classmethod, a staticmethod a staticmethod)."""
    if not isinstance(owner, type | ModuleType):
        raise TypeError(f"a part timer swaps attributes of classes or modules, not {owner!r}")
    raw = inspect.getattr_static(owner, name)
    if isinstance(raw, classmethod):
        return classmethod(wrap(raw.__func__))
    if isinstance(raw, staticmethod):
        return staticmethod(wrap(raw.__func__))
    return wrap(raw)


class _TimedContext:
    """A context manager whose entering and leaving are charged to one part."""

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
