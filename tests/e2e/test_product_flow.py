"""The product end to end, as a person uses it, in Debian's Chromium: sign up, open the emailed
link, log in, ask for push notifications, upload three photos (one taken with the phone turned)
and watch them reach 100 %, see the browser show the push that says one is ready, open a variant,
ask for a report and download its PDF, delete the account and cancel, then delete it for good,
after which the old login fails.

Against the web server, a worker consuming every queue and beat as production runs them, the
session's SMTP server and Web Push service, on the test database. Every page is checked for
console errors and at a phone's width; a failing run leaves a screenshot of the page it was on
in the session folder.
"""

import io
import re
from collections.abc import Callable
from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management import call_command
from PIL import Image

from tests.e2e.browsers import (
    PASSWORD,
    SUBSCRIBE_BUTTON,
    Browser,
    push_shown,
    subscription_stored,
    worker_registration,
)
from tests.services import WebProcess, eventually

EMAIL = "whole.flow@example.com"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 720}


def turned_photo(width: int = 1200, height: int = 900) -> bytes:
    """A JPEG stored landscape whose EXIF says "rotate 90°": upright, it is portrait."""
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the camera was turned
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (40, 90, 200)).save(buffer, "JPEG", exif=exif.tobytes())
    return buffer.getvalue()


def photo(width: int, height: int, colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, "JPEG")
    return buffer.getvalue()


def emailed_path(smtp, subject: str) -> str:
    message = smtp.wait_for(EMAIL, subject=subject, timeout=30)
    text = message.get_body(preferencelist=("plain",)).get_content()
    return re.search(r"https?://[^/\s]+(/\S+)", text).group(1)


def log_in(page, base: str = "") -> None:
    page.goto(f"{base}/login")
    page.get_by_label("Email").fill(EMAIL)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()


def test_a_person_signs_up_uploads_gets_a_report_and_deletes_their_account(
    browser: Browser,
    web: WebProcess,
    start_web: Callable[..., WebProcess],
    celery_worker,
    start_beat,
    smtp,
    push_service,
    collected_static: Path,
    tmp_path: Path,
):
    call_command("sync_periodic_tasks")
    start_beat()
    page = browser.page

    # sign up, and confirm the address from the email
    page.goto("/signup")
    page.get_by_label("Email").fill(EMAIL)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign up").click()
    page.get_by_role("heading", name="Check your email").wait_for()
    page.goto(emailed_path(smtp, "Confirm your email"))
    page.get_by_role("button", name="Confirm my email").click()
    page.get_by_role("heading", name="Your email is confirmed").wait_for()

    # log in
    log_in(page)
    page.wait_for_url("**/dashboard")

    # ask for push notifications in this browser: the page registers our service worker. The
    # browser's own subscription would need Google's push service, which this machine cannot
    # reach: one whose keys the test holds is stored instead, as the page stores one
    page.goto("/notifications/settings")
    page.get_by_role("button", name=SUBSCRIBE_BUTTON).click()
    service_worker = worker_registration(page)["script"]
    subscription = push_service.subscription()
    assert subscription_stored(page, subscription.as_json()) == 201

    # upload three photos at once and watch them reach 100 %
    files = {
        "turned.jpg": turned_photo(),
        "wide.jpg": photo(2400, 1600, (200, 40, 40)),
        "small.jpg": photo(640, 480, (40, 200, 40)),
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    page.goto("/uploads")
    page.set_input_files("#upload-form input[type=file]", [tmp_path / name for name in files])

    def every_card_ready() -> bool:
        cards = page.locator(".upload-card")
        statuses = [cards.nth(i).get_attribute("data-status") for i in range(cards.count())]
        return statuses == ["ready"] * 3

    eventually(every_card_ready, timeout=60, interval=0.5)
    progress = page.locator(".upload-card progress")
    assert [progress.nth(i).get_attribute("value") for i in range(3)] == ["100"] * 3

    # each ready upload is pushed to the browser, whose service worker shows it
    pushes = eventually(
        lambda: [r for r in push_service.received if r.path == "/push/browser"] or None,
        timeout=30,
    )
    shown = push_shown(
        page,
        browser.context.new_cdp_session(page),
        origin=web.url,
        script=service_worker,
        payload=subscription.plaintext(pushes[0].body),
    )
    assert shown[0]["title"].endswith(".jpg is ready"), shown

    # open a variant of each: the turned photo's comes upright (portrait)
    uploads = get_user_model().objects.get(email=EMAIL).uploads.all()
    shapes = set()
    for upload in uploads:
        answer = page.request.get(f"/files/{upload.pk}/small")
        assert answer.ok, answer.status
        shapes.add(Image.open(io.BytesIO(answer.body())).size)
    assert any(height > width for width, height in shapes), shapes

    # ask for a report, and download the PDF once it is made
    page.goto("/reports")
    page.get_by_role("button", name="Make it now").click()
    download_link = page.get_by_role("link", name="Download the PDF")
    download_link.wait_for(timeout=60_000)
    with page.expect_download() as download:
        download_link.click()
    assert Path(download.value.path()).read_bytes().startswith(b"%PDF")

    # every page of the account reads at a phone's width without sideways scrolling
    page.set_viewport_size(PHONE)
    for path in ("/dashboard", "/uploads", "/reports", "/notifications", "/notifications/settings"):
        page.goto(path)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"] + 1, (path, width)
    page.set_viewport_size(DESKTOP)

    # ask for the account's deletion, and cancel it
    page.goto("/account/delete")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Delete my account").click()
    page.get_by_role("heading", name="Your account will be deleted").wait_for()
    log_in(page)
    page.goto("/account/delete")
    page.get_by_role("button", name="Cancel the deletion").click()
    page.get_by_role("heading", name="Your account stays").wait_for()

    # then delete it for good, where the grace period is 0 days
    at_once = start_web(
        extra_env={"STATIC_ROOT": str(collected_static), "ACCOUNT_DELETION_GRACE_DAYS": "0"}
    )
    log_in(page, at_once.url)
    page.goto(f"{at_once.url}/account/delete")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Delete my account").click()
    page.get_by_role("heading", name="Your account is being deleted").wait_for()
    eventually(lambda: not get_user_model().objects.filter(email=EMAIL).exists(), timeout=60)

    # and the old login fails
    log_in(page)
    page.get_by_role("heading", name="Log in").wait_for()
    assert page.url.endswith("/login")
    assert browser.problems == []
