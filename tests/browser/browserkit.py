"""What the browser tests and their conftest share (a module of its own: every conftest is named
``conftest``, so tests cannot import from theirs reliably)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from stack import Stack

BROWSER_DIR = Path(__file__).resolve().parent
ROOT = BROWSER_DIR.parents[1]
SCREENSHOTS = ROOT / "test-output" / "screenshots"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
ADMIN_PASSWORD = "browser-admin-password"
AUDITOR_PASSWORD = "browser-auditor-password"


@dataclass
class AdminUi:
    """The admin UI under test: its address and the e2e stack it administers."""

    base_url: str
    stack: Stack
    log: Path

    def url(self, path: str) -> str:
        return self.base_url + path
