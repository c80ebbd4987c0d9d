"""Web Push in a real browser: Debian's Chromium, headless, driven by Playwright, against the web
server and a worker as production runs them (static/js/notifications.js, notifications-sw.js,
unread.js, inbox.js and the pages that load them).

Real here: logging in, the settings page registering our service worker and trying to
subscribe, a worker encrypting and signing a notification for a subscription, the session's
push service decrypting it, and the service worker's push handler showing it as a notification
and telling the open inbox, whose list and unread count change without a reload.

Not real: the hop from the push service to the browser. Chromium's pushManager.subscribe()
registers only with Google's push service (FCM), which no setting replaces with a local one and
which these machines cannot reach; so the test holds the subscription's keys itself, and hands
the browser's service worker the very bytes the push service decrypted, through the DevTools
protocol (ServiceWorker.deliverPushMessage), as Chromium does with what FCM delivers.
docs/notifications.md, "Tested in a browser", says more.
"""

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from notifications import services
from notifications.models import Device, Kind
from tests.harness import PUSH_PORT, SESSION_DIR
from tests.services import BASE_DIR, WebProcess, eventually

try:
    from playwright.sync_api import (
        BrowserContext,
        CDPSession,
        ConsoleMessage,
        Page,
        expect,
        sync_playwright,
    )
except ImportError:  # the `browser_available` fixture says what to do
    sync_playwright = None

# Debian's Chromium (scripts/setup.sh installs it): Playwright never downloads a browser here.
CHROMIUM = Path("/usr/bin/chromium")
PASSWORD = "a passphrase long enough 7"
SUBSCRIBE_BUTTON = "Get push notifications in this browser"
# Our service worker's scope: its script's folder (the default; no Service-Worker-Allowed).
WORKER_SCOPE = "/static/js/"
# notifications.js gives up on a subscription after 20 s; the page's fake clock runs past it.
FAKE_SECONDS_TO_WAIT_FOR_SUBSCRIBING = 60


@pytest.fixture(scope="session", autouse=True)
def browser_available() -> None:
    """The browser and Playwright are there, or the test says why not before starting servers."""
    if sync_playwright is not None and CHROMIUM.exists():
        return
    why = "the browser test needs Playwright and Debian's chromium: run `make setup`"
    if os.environ.get("CI"):
        pytest.fail(why)  # setup.sh ran there: a missing browser is a broken setup, not a skip
    pytest.skip(why)


@pytest.fixture(scope="session")
def collected_static() -> Path:
    """The project's static files collected as the Dockerfile's build does (hashed names and a
    manifest, which the web server needs with DEBUG off). Not the admin's and the API docs':
    they take 25 of collectstatic's 26 seconds, and no page here loads them."""
    folder = SESSION_DIR / "e2e-static"
    ignored = ["admin", "rest_framework", "drf_spectacular_sidecar"]
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "--verbosity", "0"]
        + [f"--ignore={name}" for name in ignored],
        cwd=BASE_DIR,
        env={**os.environ, "STATIC_ROOT": str(folder)},
        check=True,
        timeout=120,
    )
    return folder


@pytest.fixture
def web(start_web: Callable[..., WebProcess], collected_static: Path) -> WebProcess:
    # Google's push service allowed besides the session's: where the browser reaches FCM, the
    # subscription it makes is stored for real.
    return start_web(
        extra_env={
            "STATIC_ROOT": str(collected_static),
            "WEBPUSH_ALLOWED_HOSTS": f"127.0.0.1:{PUSH_PORT},fcm.googleapis.com",
        }
    )


@dataclass
class Browser:
    context: "BrowserContext"
    page: "Page"
    # Console errors and uncaught exceptions of every page, as a person's browser logs them.
    problems: list[str] = field(default_factory=list)

    def console(self, message: "ConsoleMessage") -> None:
        if message.type == "error":
            self.problems.append(f"console: {message.text} ({message.location['url']})")


@pytest.fixture
def browser(web: WebProcess, tmp_path: Path, monkeypatch) -> Iterator[Browser]:
    """A headless Chromium with a profile of its own, notifications allowed for the site."""
    # Playwright's sync API keeps an event loop marked running in this thread, so Django refuses
    # its ORM here; the test's queries never run inside that loop.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "1")
    with sync_playwright() as playwright:
        # A profile on disk, as a person's browser has: in an incognito context (what
        # browser.new_context() makes) Chromium refuses push altogether.
        context = playwright.chromium.launch_persistent_context(
            tmp_path / "profile", executable_path=CHROMIUM, headless=True, base_url=web.url
        )
        context.grant_permissions(["notifications"], origin=web.url)
        opened = Browser(context=context, page=context.pages[0])
        context.on("console", opened.console)
        context.on("weberror", lambda error: opened.problems.append(f"uncaught: {error.error}"))
        try:
            yield opened
        finally:
            context.close()


def person(email: str = "ada@example.com"):
    return get_user_model().objects.create_user(email, PASSWORD, email_verified_at=timezone.now())


def log_in(page: "Page", email: str) -> None:
    page.goto("/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url("**/dashboard")


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


def push_subscription(page: "Page") -> dict | None:
    return page.evaluate(
        """async (scope) => {
            const registration = await navigator.serviceWorker.getRegistration(scope);
            return (await registration.pushManager.getSubscription())?.toJSON() ?? null;
        }""",
        WORKER_SCOPE,
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


def test_the_settings_page_registers_the_service_worker_and_says_so_when_it_cannot_subscribe(
    browser: Browser, web: WebProcess
):
    # given a person logged in, on the settings page, its time under the test's control
    user = person()
    page = browser.page
    page.clock.install()
    log_in(page, user.email)
    page.goto("/notifications/settings")
    # when they ask for push notifications in this browser
    button = page.get_by_role("button", name=SUBSCRIBE_BUTTON)
    button.click()
    # then the page registers our service worker, which becomes active
    registration = worker_registration(page)
    assert registration["scope"] == f"{web.url}{WORKER_SCOPE}"
    assert re.fullmatch(
        rf"{re.escape(web.url)}/static/js/notifications-sw\.[0-9a-f]+\.js", registration["script"]
    )
    # and the page tells the person how subscribing went, however long the browser tries
    status = page.locator("#push-status")
    for _ in range(FAKE_SECONDS_TO_WAIT_FOR_SUBSCRIBING):
        if status.text_content():
            break
        page.clock.run_for(1000)
    subscription = push_subscription(page)
    if subscription is None:
        # no push service reachable (Chromium keeps trying FCM, never settling): the page gives
        # up, says so, and lets the person try again
        expect(status).to_have_text(re.compile(r"^This browser could not subscribe: \S"))
        expect(button).to_be_enabled()
        assert not Device.objects.exists()
    else:
        # FCM reached: the browser's subscription is stored for this person
        expect(status).to_have_text("This browser gets push notifications.")
        assert Device.objects.get(user=user).address == subscription["endpoint"]
    # and nothing else went wrong in the page
    assert browser.problems == []


def test_a_push_from_our_worker_is_shown_by_the_service_worker_and_in_the_open_inbox(
    browser: Browser, web: WebProcess, celery_worker, push_service
):
    # given a person logged in whose settings page registered our service worker (its attempt
    # to subscribe left to itself)
    user = person()
    page = browser.page
    log_in(page, user.email)
    page.goto("/notifications/settings")
    page.get_by_role("button", name=SUBSCRIBE_BUTTON).click()
    script = worker_registration(page)["script"]
    # and a subscription for this browser whose keys the test holds, as FCM would, stored
    # through the API as the page stores one
    subscription = push_service.subscription()
    stored = page.evaluate(
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
        subscription.as_json(),
    )
    assert stored == 201
    # and their inbox open, empty, its timers stopped: only a push can change it now (not the
    # header's 30-second poll)
    page.clock.install()
    page.goto("/notifications")
    page.clock.pause_at(page.evaluate("Date.now()") + 1000)
    page.evaluate("window.sameDocument = true")
    badge = page.locator("[data-unread-count]")
    expect(badge).to_be_hidden()
    expect(page.get_by_text("Nothing yet.")).to_be_visible()
    cdp = browser.context.new_cdp_session(page)

    # when one of their uploads is ready, and the worker pushes it
    notification = services.notification_send(
        user=user, kind=Kind.UPLOAD_READY, title="beach.jpg is ready", body="4 sizes made",
        data={"upload_id": "123"},
    )  # fmt: skip
    (received,) = eventually(
        lambda: [r for r in push_service.received if r.path == "/push/browser"], timeout=30
    )
    # and the browser gets what the push service decrypted, byte for byte
    payload = subscription.plaintext(received.body)
    push_delivered(page, cdp, origin=web.url, script=script, payload=payload)

    # then the open inbox lists it and counts it unread, without a reload
    entry = page.locator("#inbox-list > li")
    expect(entry).to_have_count(1)
    expect(entry).to_contain_text("beach.jpg is ready")
    expect(entry).to_contain_text("4 sizes made")
    expect(entry.get_by_role("button", name="Mark read")).to_be_visible()
    expect(page.get_by_text("Nothing yet.")).to_be_hidden()
    expect(badge).to_be_visible()
    expect(badge).to_have_text("1")
    assert page.evaluate("window.sameDocument") is True
    # and the service worker showed it as a notification before it told the page (asked any
    # sooner, Chromium may drop a notification it has stored but not yet displayed)
    assert notifications_shown(page) == [
        {
            "title": "beach.jpg is ready",
            "body": "4 sizes made",
            "tag": str(notification.pk),
            "data": json.loads(payload),
        }
    ]
    assert browser.problems == []
