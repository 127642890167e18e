"""Headless Chromium with the network off, for tests that check what a page really draws.

`render_dom(page)` returns the DOM after the page's scripts ran; `screenshot(page, png)`
saves what it looks like. Any http(s) fetch fails (no DNS, a dead proxy), so a page that
still needs a CDN draws nothing here. Tests call `require_chromium()` first: it skips them,
with the reason, on machines without the Debian `chromium` package.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser")
OFFLINE_FLAGS = (
    "--headless",
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--disable-features=Translate,MediaRouter,OptimizationHints",
    "--metrics-recording-only",
    "--proxy-server=http://127.0.0.1:9",  # the discard port: any proxied fetch fails
    "--proxy-bypass-list=<-loopback>",
    "--host-resolver-rules=MAP * ~NOTFOUND",  # and no host name resolves
    "--allow-file-access-from-files",
    "--hide-scrollbars",
)


def find_chromium() -> str | None:
    """Path of a Chromium binary, or None. CHROMIUM=<path> overrides the search."""
    if os.environ.get("CHROMIUM"):
        return shutil.which(os.environ["CHROMIUM"])
    return next((found for name in CANDIDATES if (found := shutil.which(name))), None)


def require_chromium() -> str:
    chromium = find_chromium()
    if chromium is None:
        pytest.skip(
            "Chromium is not installed (Debian: apt-get install chromium; .ci/run does it "
            "as root): the offline browser check cannot run"
        )
    return chromium


def _run(args: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    chromium = require_chromium()
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        cmd = [chromium, *OFFLINE_FLAGS, f"--user-data-dir={profile}", *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"chromium failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc


def render_dom(page: Path, budget_ms: int = 5000, timeout_s: float = 60) -> str:
    """The page's DOM once its scripts had `budget_ms` of virtual time to run."""
    proc = _run(
        [f"--virtual-time-budget={budget_ms}", "--dump-dom", Path(page).resolve().as_uri()],
        timeout_s,
    )
    return proc.stdout


def screenshot(
    page: Path,
    png: Path,
    size: tuple[int, int] = (1200, 1600),
    budget_ms: int = 5000,
    timeout_s: float = 60,
) -> Path:
    """Save a `size` (width, height) PNG of the page as drawn after `budget_ms`."""
    png = Path(png).resolve()
    _run(
        [
            f"--virtual-time-budget={budget_ms}",
            f"--window-size={size[0]},{size[1]}",
            f"--screenshot={png}",
            Path(page).resolve().as_uri(),
        ],
        timeout_s,
    )
    if not png.is_file():
        raise RuntimeError(f"chromium wrote no screenshot to {png}")
    return png
