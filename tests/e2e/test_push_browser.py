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

import contextlib
import json
import re

from django.contrib.auth import get_user_model
from django.utils import timezone

from notifications import services
from notifications.models import Device, Kind
from tests.e2e.browsers import (
    PASSWORD,
    SUBSCRIBE_BUTTON,
    WORKER_SCOPE,
    Browser,
    notifications_shown,
    push_delivered,
    subscription_stored,
    worker_registration,
)
from tests.services import WebProcess, eventually

with contextlib.suppress(ImportError):  # conftest's `browser_available` says what to do
    from playwright.sync_api import Page, expect

# notifications.js gives up on a subscription after 20 s; the page's fake clock runs past it.
FAKE_SECONDS_TO_WAIT_FOR_SUBSCRIBING = 60


def person(email: str = "ada@example.com"):
    return get_user_model().objects.create_user(email, PASSWORD, email_verified_at=timezone.now())


def log_in(page: "Page", email: str) -> None:
    page.goto("/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url("**/dashboard")


def push_subscription(page: "Page") -> dict | None:
    return page.evaluate(
        """async (scope) => {
            const registration = await navigator.serviceWorker.getRegistration(scope);
            return (await registration.pushManager.getSubscription())?.toJSON() ?? null;
        }""",
        WORKER_SCOPE,
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
    stored = subscription_stored(page, subscription.as_json())
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
