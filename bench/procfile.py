"""The worker pools' command lines, read from the Procfile so the benchmark runs the pools
exactly as they are deployed (queues, pool type, concurrency) and cannot drift from it."""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROCFILE = ROOT / "Procfile"


@dataclass(frozen=True)
class PoolSpec:
    """One ``celery worker`` process: its name and the arguments after ``celery``."""

    name: str
    args: tuple[str, ...]

    def option(self, *names: str) -> str | None:
        """The value of an option such as ``-P``/``--pool`` (None when absent)."""
        for i, arg in enumerate(self.args):
            for name in names:
                if arg == name and i + 1 < len(self.args):
                    return self.args[i + 1]
                if name.startswith("--") and arg.startswith(name + "="):
                    return arg.split("=", 1)[1]
        return None

    @property
    def pool(self) -> str:
        return self.option("-P", "--pool") or "prefork"

    @property
    def concurrency(self) -> int:
        return int(self.option("-c", "--concurrency") or 1)

    def argv(self, instance: str) -> list[str]:
        """The command to start it with this interpreter, named ``instance@%h``. The log
        level stays as deployed (INFO logs every task: that cost is part of the figure),
        and INFO is also what prints the "ready." line the harness waits for."""
        args = list(self.args)
        for flag in ("-n", "--hostname"):
            while flag in args:
                at = args.index(flag)
                del args[at : at + 2]
        return [
            sys.executable,
            "-m",
            "celery",
            *args,
            "-n",
            f"{instance}@%h",
            "--without-mingle",
            "--without-gossip",
        ]


def pool(name: str, procfile: Path = PROCFILE) -> PoolSpec:
    """The Procfile entry ``name`` (``pagerduty`` or ``email``) as a :class:`PoolSpec`."""
    for line in procfile.read_text().splitlines():
        entry, sep, command = line.partition(":")
        if sep and entry.strip() == name and not line.lstrip().startswith("#"):
            words = shlex.split(command)
            if not words or words[0] != "celery":
                raise ValueError(f"Procfile entry {name!r} is not a celery command")
            return PoolSpec(name, tuple(words[1:]))
    raise ValueError(f"the Procfile has no {name!r} entry")


def with_option(spec: PoolSpec, flag: str, value: str, name: str | None = None) -> PoolSpec:
    """``spec`` with ``flag``'s value replaced (or added): the same pool for another app or
    other queues."""
    args = list(spec.args)
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args[:0] = [flag, value]
    return PoolSpec(name or spec.name, tuple(args))
