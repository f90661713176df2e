"""A real browser for tests that look at a page: Debian's Chromium, headless."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def headless(url: str, tmp_path: Path, script_ms: int = 0) -> str:
    """The page's DOM after ``script_ms`` of its scripts' (virtual) time, as Debian's
    Chromium renders it. (The sandbox page reloads itself every 5 s, so it gets none.)"""
    assert CHROMIUM is not None
    done = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'chromium'}",
            *([f"--virtual-time-budget={script_ms}"] if script_ms else []),
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout
