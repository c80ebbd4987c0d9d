"""What the browser tests share besides their fixtures (conftest.py): Debian's Chromium, a
browser that collects every console error and uncaught exception of its pages, and what it takes
to push to our service worker."""

from dataclasses import dataclass, field
from pathlib import Path

from tests.services import eventually

try:
    from playwright.sync_api import (
        BrowserContext,
        CDPSession,
        ConsoleMessage,
        Page,
        sync_playwright,
    )
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


# --- Web Push -------------------------------------------------------------------------------

SUBSCRIBE_BUTTON = "Get push notifications in this browser"
# Our service worker's scope: its script's folder (the default; no Service-Worker-Allowed).
WORKER_SCOPE = "/static/js/"


def worker_registration(page: "Page") -> dict:
    """Our service worker's registration as the page sees it, once its worker is active."""
    return eventually(
        lambda: page.evaluate(
            """async (scope) => {
                const registration = await navigator.serviceWorker.getRegistration(scope);
                return registration?.active
                    ? { scope: registration.scope, script: registration.active.scriptURL }
                    : null;
            }""",
            WORKER_SCOPE,
        ),
        timeout=10,
    )


def subscription_stored(page: "Page", subscription: dict) -> int:
    """Store a Web Push subscription through the API, as the settings page stores one; the
    answer's status."""
    return page.evaluate(
        """async (subscription) => {
            const answer = await fetch("/api/v1/devices", {
                method: "POST",
                credentials: "same-origin",
                headers: {
                    "Content-Type": "application/json",
                    "X-CSRFToken": document.querySelector("[name=csrfmiddlewaretoken]").value,
                },
                body: JSON.stringify({ platform: "webpush", subscription }),
            });
            return answer.status;
        }""",
        subscription,
    )


def notifications_shown(page: "Page") -> list[dict]:
    return page.evaluate(
        """async (scope) => {
            const registration = await navigator.serviceWorker.getRegistration(scope);
            return (await registration.getNotifications()).map(
                ({ title, body, tag, data }) => ({ title, body, tag, data }));
        }""",
        WORKER_SCOPE,
    )


def push_delivered(
    page: "Page", cdp: "CDPSession", *, origin: str, script: str, payload: bytes
) -> None:
    """Hand the service worker of `script` a push message, as Chromium does with one from its
    push service: DevTools' ServiceWorker domain, which names registrations by ids of its own."""
    versions: list[dict] = []
    cdp.on("ServiceWorker.workerVersionUpdated", lambda event: versions.extend(event["versions"]))
    cdp.send("ServiceWorker.enable")

    def ours() -> dict | None:
        page.wait_for_timeout(50)  # Playwright dispatches the events that arrived meanwhile
        return next(
            (v for v in versions if v["scriptURL"] == script and v["status"] == "activated"), None
        )

    version = eventually(ours, timeout=10, interval=0)
    cdp.send(
        "ServiceWorker.deliverPushMessage",
        {"origin": origin, "registrationId": version["registrationId"], "data": payload.decode()},
    )


def push_shown(
    page: "Page", cdp: "CDPSession", *, origin: str, script: str, payload: bytes
) -> list[dict]:
    """Hand our service worker a push message (`push_delivered`) and, once it has told the
    page that it showed it, the notifications it shows. Asked any sooner, Chromium may drop a
    notification it has stored but not yet displayed."""
    page.evaluate(
        """() => {
            window.toldByServiceWorker = new Promise((resolve) =>
                navigator.serviceWorker.addEventListener("message", resolve, { once: true }));
        }"""
    )
    push_delivered(page, cdp, origin=origin, script=script, payload=payload)
    told = page.evaluate(
        """() => Promise.race([
            window.toldByServiceWorker.then(() => true),
            new Promise((resolve) => setTimeout(() => resolve(false), 10000)),
        ])"""
    )
    assert told, "the service worker never told the page of the push"
    return notifications_shown(page)
