"""The architecture is one-way and checked. `make lint` runs the layer contracts
(``lint-imports``, configured in pyproject.toml); here: they would catch an upward import,
naming its line; no module imports itself in a circle; every module imports on its own in
a fresh interpreter; and the layers below Celery never load it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("config", "worker", "tasks", "cli", "bench", "sandbox")
LINT_IMPORTS = str(Path(sys.executable).with_name("lint-imports"))


def our_modules() -> list[str]:
    """Every module of ours, from the files on disk (a new file is covered at once), but
    ``__main__`` modules: importing one runs its program."""
    names = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.name == "__main__.py":
                continue
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            names.append(".".join(parts))
    return names


def fresh(code: str) -> subprocess.CompletedProcess[str]:
    """``code`` in a new interpreter started from the checkout, as a user's would be."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_every_module_imports_on_its_own_in_a_fresh_interpreter() -> None:
    modules = our_modules()
    assert len(modules) > 80
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(zip(modules, pool.map(lambda m: fresh(f"import {m}"), modules), strict=True))
    failed = {m: r.stderr.strip().splitlines()[-1] for m, r in results.items() if r.returncode}
    assert failed == {}


@pytest.mark.parametrize(
    "statement",
    [
        "from worker.providers import PagerDutyProvider",
        "from worker.providers import SMTPProvider",
        "import config",
        "import config.catalogue, config.routing",
        "import worker",
        "import worker.engine.runtime, worker.engine.delivery, worker.engine.intake",
        "import worker.engine.recovery, worker.engine.replay",
        "import worker.engine.heartbeats.paging, worker.engine.heartbeats.reports",
        "import tasks",  # the Python producer API queues without Celery
        "import api.app",  # so does the HTTP API
    ],
)
def test_the_layers_below_celery_do_not_load_it(statement: str) -> None:
    found = fresh(
        f"{statement}\nimport json, sys\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('celery', 'kombu'))))"
    )
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout) == []


def test_the_app_is_still_found_by_celery_a_worker() -> None:
    found = fresh("from celery.app.utils import find_app; print(find_app('worker').main)")
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == "gds_notification"


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in graph.modules:
                continue
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_no_module_imports_itself_in_a_circle() -> None:
    graph = grimp.build_graph(*PACKAGES)
    assert _cycles(graph) == []


def test_an_upward_import_breaks_the_contract_and_names_its_line(tmp_path: Path) -> None:
    """The contract is not vacuous: a copy of the project where the domain core imports
    the Celery layer fails, and the report names the module and the line."""
    for name in (*PACKAGES, "pyproject.toml"):
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, tmp_path / name, ignore=shutil.ignore_patterns("results"))
        else:
            shutil.copy(source, tmp_path / name)
    core = tmp_path / "worker" / "notification.py"
    lines = core.read_text().splitlines()
    at = lines.index("import enum") + 1
    lines.insert(at, "import tasks.producer  # an upward import")
    core.write_text("\n".join(lines) + "\n")
    result = subprocess.run(
        [LINT_IMPORTS, "--no-cache"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert result.returncode == 1
    assert "BROKEN" in result.stdout
    assert f"worker.notification -> tasks.producer (l.{at + 1})" in result.stdout
