"""``enqueue_per_s``: what one Python producer pays per page, ``tasks.enqueue`` alone (no
worker consumes while it runs), measured beside the code as it was before intake validated
each notification once (``enqueue_before_per_s``, commit :data:`BEFORE`).

Each round is a fresh interpreter running :data:`PROGRAM` against one checkout: this one,
or :data:`BEFORE` taken out of git into a temporary folder. Rounds alternate, so both see
the same background load; each figure is its total count over its total time. Without git
(or that commit) only this checkout is measured, and the details say why.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.context import Context
from bench.measure import BenchError
from bench.procfile import ROOT

NAME = "enqueue"

#: The last commit before the one-way layers (issue 12): intake validated and dumped each
#: notification three or four times.
BEFORE = "ecdf4d9d04394f8630b9477ec77c0c24d3d0d556"

#: One round, in a child interpreter: argv = count, warm-up count, id prefix. Only what
#: both versions share: ``tasks.enqueue`` and the pipeline scenario's page. (The older code
#: needed ``worker`` imported before ``tasks``.)
PROGRAM = """
import json, sys, time
import worker, tasks
from bench.scenarios.pipeline import page

count, warm, prefix = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
notes = [page(f"{prefix}-{i}", i) for i in range(count + warm)]
for note in notes[:warm]:
    tasks.enqueue(note)
started = time.perf_counter()
for note in notes[warm:]:
    tasks.enqueue(note)
seconds = time.perf_counter() - started
print(json.dumps({"count": count, "seconds": seconds, "code": worker.__file__}))
"""


def _checkout_of_before(folder: Path) -> str | None:
    """Extract :data:`BEFORE` into ``folder``; None when done, else why it could not be."""
    try:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", "--format=tar", BEFORE],
            capture_output=True,
            check=False,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"git unavailable: {exc}"
    if archive.returncode != 0:
        return f"commit {BEFORE[:12]} not in this clone: {archive.stderr.decode()[:200]}"
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return None


def _round(ctx: Context, code: Path, label: str, count: int) -> tuple[int, float]:
    env = ctx.stack.child_env({"PYTHONPATH": str(code)})
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, str(count), str(ctx.sizes.warmup), f"{ctx.run_id}-{label}"],
        cwd=code,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        raise BenchError(f"enqueue round ({label}) failed: {done.stderr.strip()[-500:]}")
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    if not Path(answer["code"]).resolve().is_relative_to(code.resolve()):
        raise BenchError(f"enqueue round ({label}) ran {answer['code']}, not {code}")
    return int(answer["count"]), float(answer["seconds"])


def run(ctx: Context) -> dict[str, Any]:
    ctx.stack.stop_pools()  # the producer alone: nothing consumes while it runs
    count = ctx.sizes.enqueue_notifications
    totals: dict[str, list[float]] = {"after": [0, 0.0], "before": [0, 0.0]}
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="gds-bench-before-") as folder:
        why_not = _checkout_of_before(Path(folder))
        checkouts = {"after": ROOT}
        if why_not is None:
            checkouts["before"] = Path(folder)
        for n in range(ctx.sizes.throughput_rounds):
            for label, code in checkouts.items():
                done, seconds = _round(ctx, code, f"{label}{n}", count)
                totals[label][0] += done
                totals[label][1] += seconds
                rounds.append({"code": label, "per_s": round(done / seconds, 1)})
                ctx.stack.redis().flushdb()  # the queued pages and their records
    after = totals["after"][0] / totals["after"][1]
    before = totals["before"][0] / totals["before"][1] if totals["before"][1] else None
    shown = f"{before:.0f}/s" if before else f"not measured ({why_not})"
    ctx.log(f"  enqueue {after:.0f}/s now, {shown} at {BEFORE[:12]}")
    return {
        "enqueue_per_s": round(after, 1),
        "enqueue_before_per_s": None if before is None else round(before, 1),
        "enqueue_vs_before": None if before is None else round(after / before, 3),
        "details": {
            "before_commit": BEFORE,
            "before_unavailable": why_not,
            "notifications_per_round": count,
            "rounds": rounds,
            "producer": "one thread, pages with an idempotency id, no worker consuming",
        },
    }
