"""The benchmark's part timer (bench/part_timer.py): each part is the CPU time inside its
function less the other timed functions it calls, the parts add up to the timed work, and
every function is itself again afterwards."""

from __future__ import annotations

import contextlib
import inspect
import logging
import threading
import time
from collections.abc import Iterator

import pytest

from bench.part_timer import PartTimer


def spin(seconds: float) -> None:
    """Burn this thread's CPU for ``seconds``."""
    until = time.thread_time() + seconds
    while time.thread_time() < until:
        pass


class Base:
    @classmethod
    def make(cls) -> str:
        spin(0.02)
        return cls.__name__


class Work(Base):
    def outer(self) -> str:
        spin(0.03)
        self.inner()
        return Work.make()

    def inner(self) -> None:
        spin(0.05)

    @contextlib.contextmanager
    def held(self) -> Iterator[str]:
        spin(0.02)
        yield "held"
        spin(0.01)


def test_parts_exclude_each_other_and_add_up() -> None:
    timer = (
        PartTimer()
        .function(Work, "outer", "outer")
        .function(Work, "inner", "inner")
        .function(Work, "make", "make")
        .context(Work, "held", "held")
    )
    work = Work()
    with timer:
        started = time.thread_time()
        assert work.outer() == "Work"
        with work.held() as value:
            assert value == "held"
            spin(0.04)  # the block: in no part
        total = time.thread_time() - started

    spent = timer.spent
    assert spent["outer"] == pytest.approx(0.03, abs=0.01)
    assert spent["inner"] == pytest.approx(0.05, abs=0.01)
    assert spent["make"] == pytest.approx(0.02, abs=0.01)
    assert spent["held"] == pytest.approx(0.03, abs=0.01)
    assert sum(spent.values()) == pytest.approx(total - 0.04, abs=0.01)


def test_every_function_is_itself_again_afterwards() -> None:
    before = {name: inspect.getattr_static(Work, name) for name in ("outer", "inner", "held")}
    timer = PartTimer().function(Work, "outer", "o").function(Work, "make", "m")
    timer.context(Work, "held", "h")
    with timer:
        assert inspect.getattr_static(Work, "outer") is not before["outer"]
        assert "make" in vars(Work)  # the inherited classmethod, shadowed while on
    assert {name: inspect.getattr_static(Work, name) for name in before} == before
    assert "make" not in vars(Work)  # inherited again
    assert Work.make() == "Work"
    assert Base.make() == "Base"


def test_an_exception_still_closes_its_part() -> None:
    timer = PartTimer().function(Work, "inner", "inner")

    def boom(self: Work) -> None:
        spin(0.02)
        raise RuntimeError("boom")

    Work.boom = boom  # type: ignore[attr-defined]
    try:
        timer.function(Work, "boom", "boom")
        with timer, pytest.raises(RuntimeError):
            Work().boom()  # type: ignore[attr-defined]
        with timer:
            Work().inner()  # nothing left open: this part is its own
    finally:
        del Work.boom  # type: ignore[attr-defined]
    assert timer.spent["boom"] == pytest.approx(0.02, abs=0.01)
    assert timer.spent["inner"] == pytest.approx(0.05, abs=0.01)


def test_only_the_thread_that_turned_it_on_is_timed() -> None:
    timer = PartTimer().function(Work, "inner", "inner").context(Work, "held", "held")
    other_thread_ran: list[str] = []

    def elsewhere() -> None:
        Work().inner()
        with Work().held() as value:
            other_thread_ran.append(value)

    with timer:
        thread = threading.Thread(target=elsewhere)
        thread.start()
        thread.join()
        Work().inner()  # the same calls here are timed: the timer is really on
        with Work().held():
            pass
    assert other_thread_ran == ["held"]
    # Only this thread's share: the other thread's calls ran, untimed.
    assert timer.spent == {
        "inner": pytest.approx(0.05, abs=0.01),
        "held": pytest.approx(0.03, abs=0.01),
    }


def test_it_cannot_be_turned_on_twice() -> None:
    timer = PartTimer().function(Work, "inner", "inner")
    original = inspect.getattr_static(Work, "inner")
    with timer:
        with pytest.raises(RuntimeError, match="already on"):
            timer.__enter__()
        assert inspect.getattr_static(Work, "inner") is not original
    assert inspect.getattr_static(Work, "inner") is original


def test_a_swap_that_fails_puts_back_the_ones_before_it() -> None:
    class Frozen(type):
        def __setattr__(cls, name: str, value: object) -> None:
            if name == "refused":
                raise AttributeError("read-only")
            super().__setattr__(name, value)

    class Locked(metaclass=Frozen):
        def fine(self) -> None: ...

        def refused(self) -> None: ...

    before = inspect.getattr_static(Locked, "fine")
    timer = PartTimer().function(Locked, "fine", "a").function(Locked, "refused", "b")
    with pytest.raises(AttributeError, match="read-only"), timer:
        pass
    assert inspect.getattr_static(Locked, "fine") is before
    with pytest.raises(AttributeError, match="read-only"), timer:  # off again, not "already on"
        pass


def test_owners_must_be_classes_or_modules() -> None:
    with pytest.raises(TypeError, match="classes or modules"):
        PartTimer().function(Work(), "inner", "inner")  # type: ignore[arg-type]


def test_log_records_name_their_caller_on_every_thread_and_every_way_of_calling(
    caplog: pytest.LogCaptureFixture,
) -> None:
    timer = PartTimer().function(logging.Logger, "_log", "log")
    log = logging.getLogger("part-timer-test")

    def the_caller() -> None:
        log.warning("logged")

    def on_another_thread() -> None:
        log.warning("from another thread")

    def positionally() -> None:
        # Logger._log(level, msg, args, exc_info, extra, stack_info, stacklevel)
        log._log(logging.WARNING, "positional", (), None, None, False, 1)

    with timer, caplog.at_level(logging.INFO):
        the_caller()
        thread = threading.Thread(target=on_another_thread)
        thread.start()
        thread.join()
        positionally()
    names = [r.funcName for r in caplog.records]
    assert names == ["the_caller", "on_another_thread", "positionally"]
    assert {r.pathname for r in caplog.records} == {__file__}
    assert timer.spent["log"] > 0


def test_a_context_entered_on_another_thread_is_not_timed() -> None:
    timer = PartTimer().context(Work, "held", "held")
    used_there: list[str] = []

    def use(held: contextlib.AbstractContextManager[str]) -> None:
        with held as value:
            used_there.append(value)

    with timer:
        thread = threading.Thread(target=use, args=(Work().held(),))  # made here, used there
        thread.start()
        thread.join()
        use(Work().held())  # made and used here: timed, so the timer is really on
    assert used_there == ["held", "held"]
    assert timer.spent == {"held": pytest.approx(0.03, abs=0.01)}  # this thread's use alone
