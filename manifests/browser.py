"""Open a page in headless Chromium: what it logs to the console, its DOM, and a screenshot.

One Chromium process does all three (`--dump-dom`, `--screenshot`, console lines from
`--enable-logging=stderr`), with every background connection switched off, so it works offline.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--hide-scrollbars", "--enable-logging=stderr", "--v=0",
]  # fmt: skip
CONSOLE = re.compile(r":CONSOLE[^\]]*\] (.*)$")


@dataclass
class PageView:
    console: list[str]  # every console message of the page (errors, warnings, logs, uncaught exceptions)
    dom: str  # the DOM after loading, serialised
    screenshot: Path


def chromium() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    raise FileNotFoundError("no Chromium found; install it with `make test-deps` (apt-get install -y chromium)")


def open_page(page: Path, screenshot: Path, size: tuple[int, int] = (1400, 2000), timeout_s: float = 120) -> PageView:
    """Load `page` from disk, wait for it to finish, and return what the browser saw."""
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        done = subprocess.run(
            [
                chromium(),
                *FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size={size[0]},{size[1]}",
                f"--screenshot={Path(screenshot).resolve()}",
                "--dump-dom",
                Path(page).resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    if done.returncode != 0 or not Path(screenshot).is_file():
        raise RuntimeError(f"chromium failed ({done.returncode}): {done.stderr[-2000:]}")
    console = [m.group(1) for line in done.stderr.splitlines() if (m := CONSOLE.search(line))]
    return PageView(console, done.stdout, Path(screenshot))
