"""A real browser for tests that look at a page: Debian's Chromium, headless."""

from __future__ import annotations

import html
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _chromium(tmp_path: Path, *args: str) -> str:
    assert CHROMIUM is not None
    done = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'chromium'}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def headless(url: str, tmp_path: Path, script_ms: int = 0) -> str:
    """The page's DOM after ``script_ms`` of its scripts' (virtual) time, as Debian's
    Chromium renders it. (The sandbox page reloads itself every 5 s, so it gets none.)"""
    return _chromium(
        tmp_path, *([f"--virtual-time-budget={script_ms}"] if script_ms else []), "--dump-dom", url
    )


def screenshot(url: str, path: Path, tmp_path: Path, width: int = 1280, height: int = 2000) -> Path:
    """A PNG of the page as a ``width`` x ``height`` window shows it, saved at ``path``."""
    _chromium(
        tmp_path,
        "--hide-scrollbars",
        f"--screenshot={path}",
        f"--window-size={width},{height}",
        url,
    )
    assert path.stat().st_size > 0
    return path


def page_width(url: str, tmp_path: Path, width: int = 1280, height: int = 2000) -> tuple[int, str]:
    """How wide the page at ``url`` lays out in a ``width``-pixel window (its
    ``scrollWidth``; more than ``width`` means a sideways scroll), and its DOM.

    Chromium's command line cannot run a script in someone else's page, so the page's own
    HTML, fetched from ``url``, is loaded from a file with one measuring script added.
    """
    with urllib.request.urlopen(url, timeout=30) as answer:  # noqa: S310 - a test's own URL
        page = answer.read().decode()
    measure = (
        "<script>document.body.dataset.scrollWidth = document.documentElement.scrollWidth</script>"
    )
    copy = tmp_path / "measured.html"
    copy.write_text(
        page.replace("<head>", f'<head><base href="{html.escape(url)}">', 1).replace(
            "</body>", measure + "</body>", 1
        )
    )
    window = f"--window-size={width},{height}"
    # Without scrollbars the layout viewport is the whole window width.
    dom = _chromium(tmp_path, "--hide-scrollbars", window, "--dump-dom", copy.as_uri())
    found = re.search(r'data-scroll-width="(\d+)"', dom)
    assert found, dom[-2000:]
    return int(found.group(1)), dom
