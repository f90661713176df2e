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
                return _TimedContext(self, part, fn(*args, **kwargs))

            return wrapper

        self._swaps.append((owner, name, _rewrapped(owner, name, timed)))
        return self

    def _timed(self, fn: Callable[..., Any], part: str) -> Callable[..., Any]:
        shift = _stacklevel_shift(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if shift is not None:
                args, kwargs = shift(args, kwargs)
            if not self._on_this_thread():
                return fn(*args, **kwargs)
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
                # Saved before it is swapped: whatever interrupts, _restore sees it.
                self._saved.append((owner, name, vars(owner).get(name), name in vars(owner)))
                setattr(owner, name, wrapper)
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
        while self._saved:
            owner, name, original, own = self._saved.pop()
            try:
                if own:
                    setattr(owner, name, original)
                elif name in vars(owner):
                    delattr(owner, name)  # it was inherited: inherit it again
            except BaseException as error:  # the others still go back first
                failures.append(error)
        self._thread = None
        if failures:
            raise failures[0]


def _stacklevel_shift(
    fn: Callable[..., Any],
) -> Callable[[tuple[Any, ...], dict[str, Any]], tuple[tuple[Any, ...], dict[str, Any]]] | None:
    """For a function that takes ``stacklevel`` (``Logger._log``): what adds one to it in
    a call, as the wrapper is one more frame between the caller and ``fn``; None for any
    other function."""
    parameters = list(inspect.signature(fn).parameters.values())
    found = [i for i, p in enumerate(parameters) if p.name == "stacklevel"]
    if not found:
        return None
    (index,) = found
    default = parameters[index].default
    default = 1 if default is inspect.Parameter.empty else default

    def shift(
        args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if len(args) > index:
            return (*args[:index], args[index] + 1, *args[index + 1 :]), kwargs
        return args, {**kwargs, "stacklevel": kwargs.get("stacklevel", default) + 1}

    return shift


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
    """A context manager whose entering and leaving are charged to one part, when they
    happen on the timer's thread while it is on."""

    def __init__(self, timer: PartTimer, part: str, inner: Any) -> None:
        self.timer, self.part, self.inner = timer, part, inner
        self.timed = False

    def __enter__(self) -> Any:
        self.timed = self.timer._on_this_thread()
        if not self.timed:
            return self.inner.__enter__()
        self.timer.enter(self.part)
        try:
            return self.inner.__enter__()
        finally:
            self.timer.leave()

    def __exit__(self, *exc: Any) -> Any:
        if not (self.timed and self.timer._on_this_thread()):
            return self.inner.__exit__(*exc)
        self.timer.enter(self.part)
        try:
            return self.inner.__exit__(*exc)
        finally:
            self.timer.leave()
