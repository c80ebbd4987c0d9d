"""What the browser tests share besides their fixtures (conftest.py): Debian's Chromium, and a
browser that collects every console error and uncaught exception of its pages."""

from dataclasses import dataclass, field
from pathlib import Path

try:
    from playwright.sync_api import BrowserContext, ConsoleMessage, Page, sync_playwright
except ImportError:  # the `browser_available` fixture says what to do
    sync_playwright = None

# Debian's Chromium (scripts/setup.sh installs it): Playwright never downloads a browser here.
CHROMIUM = Path("/usr/bin/chromium")
PASSWORD = "a passphrase long enough 7"


@dataclass
class Browser:
    context: "BrowserContext"
    page: "Page"
    # Console errors and uncaught exceptions of every page, as a person's browser logs them.
    problems: list[str] = field(default_factory=list)

    def console(self, message: "ConsoleMessage") -> None:
        if message.type == "error":
            self.problems.append(f"console: {message.text} ({message.location['url']})")
