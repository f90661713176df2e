"""The command line: ``python -m bench [--smoke] [--out PATH] [--only NAMES]``.

A full run of every scenario writes ``bench/results/latest.json`` unless ``--out`` says
otherwise; a smoke run or a partial one (``--only``) writes only where ``--out`` says.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

from bench import report
from bench.context import Context
from bench.procfile import ROOT
from bench.sandbox_api import SandboxAPI
from bench.scenarios import SCENARIOS
from bench.sizes import FULL, SMOKE
from bench.stack import BenchStack

DEFAULT_OUT = ROOT / "bench" / "results" / "latest.json"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="Benchmark the notification service (make bench)."
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny counts: seconds long, figures meaningless"
    )
    parser.add_argument("--out", type=Path, help=f"write the JSON here (default {DEFAULT_OUT})")
    parser.add_argument(
        "--only",
        help=f"comma-separated scenarios to run, of: {', '.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--redis-url",
        help="use this Redis database (it is emptied before and after) instead of starting one",
    )
    parser.add_argument("--markdown", action="store_true", help="also print the Markdown table")
    args = parser.parse_args(argv)
    if args.only:
        unknown = set(args.only.split(",")) - set(SCENARIOS)
        if unknown:
            parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    return args


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the stack's teardown


def run(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, str]]:
    sizes = SMOKE if args.smoke else FULL
    names = args.only.split(",") if args.only else list(SCENARIOS)
    names = [n for n in SCENARIOS if n in names]  # always in the order they depend on
    results: dict[str, Any] = {}
    details: dict[str, Any] = {}
    errors: dict[str, str] = {}
    started = time.monotonic()

    def log(line: str) -> None:
        print(line, flush=True)

    stack = BenchStack(redis_url=args.redis_url, log=log)
    with stack:
        sandbox, mail = SandboxAPI(stack.sandbox_url), SandboxAPI(stack.mail_sandbox_url)
        ctx = Context(stack=stack, sizes=sizes, sandbox=sandbox, mail=mail, log=log)
        info = report.machine(stack.redis_version())
        log(
            f"bench: {info['cpu']}, {info['cores']} cores, Python {info['python']}, "
            f"Redis {info['redis']} ({stack.redis_description}), logs in {stack.logs}"
        )
        try:
            for name in names:
                log(f"[{name}]")
                began = time.monotonic()
                try:
                    figures = SCENARIOS[name](ctx)
                except Exception as exc:  # one broken scenario must not hide the others
                    errors[name] = f"{type(exc).__name__}: {exc}"
                    log(f"  FAILED: {errors[name]}")
                    stack.stop_pools()
                    continue
                details[name] = figures.pop("details", {}) | {
                    "scenario_seconds": round(time.monotonic() - began, 1)
                }
                results.update(figures)
        finally:
            sandbox.close()
            mail.close()
    if not errors:
        stack.remove_files()
    results["targets"] = report.evaluate(results)
    results["details"] = details
    results["errors"] = errors
    results["machine"] = info
    results["run"] = {
        "smoke": bool(args.smoke),
        "scenarios": names,
        "seconds": round(time.monotonic() - started, 1),
        "sizes": sizes.as_dict(),
        "redis": stack.redis_description,
        "redis_port": urlsplit(stack.redis_url).port,
        "child_pids": stack.started_pids,
    }
    return results, errors


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        results, errors = run(args)
    finally:
        signal.signal(signal.SIGTERM, previous)
    print()
    print(report.table(results))
    if args.markdown:
        print()
        print(report.markdown(results))
    out = args.out
    if out is None and not args.smoke and not args.only:
        out = DEFAULT_OUT
    if out is not None:
        report.write_json(results, out)
        print(f"\nwrote {out}")
    if errors:
        print(f"\n{len(errors)} scenario(s) failed: {', '.join(errors)}", file=sys.stderr)
        return 1
    return 0
