"""The operator's page and a dead letter's re-drive in a real browser, as an operator uses them:
through the admin's login, from the link in the admin's header, against the web server, a worker
and beat as production runs them; without a console error, and readable at a phone's width.

OPERATIONS_SCREENSHOT=<path> also saves the page there: docs/images/operations.png is made so.
"""

import os
from datetime import timedelta
from pathlib import Path

import httpx
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db.models import Q
from django.utils import timezone

from config.celery import app
from jobs.models import Batch, DeadLetter
from tests.e2e.browsers import PASSWORD, Browser
from tests.harness import SESSION_DIR
from tests.services import WebProcess, eventually

PHONE = {"width": 390, "height": 844}


def an_operator(also: tuple[str, ...] = ()) -> str:
    """Staff who may see the job platform's rows, and do what `also` names."""
    operator = get_user_model().objects.create_user(
        "operator@example.com", PASSWORD, is_staff=True, email_verified_at=timezone.now()
    )
    operator.user_permissions.set(
        Permission.objects.filter(content_type__app_label="jobs").filter(
            Q(codename__startswith="view_") | Q(codename__in=also)
        )
    )
    return operator.email


def a_day_of_failures() -> None:
    now = timezone.now()
    for index, (task, exception, hours_ago) in enumerate(
        [
            ("notifications.push_send", "PermanentError", 1),
            ("notifications.push_send", "PermanentError", 2),
            ("notifications.push_send", "PermanentError", 5),
            ("accounts.send_email", "SMTPRecipientsRefused", 3),
            ("reports.render", "TimeLimitExceeded", 9),
        ]
    ):
        at = now - timedelta(hours=hours_ago)
        DeadLetter.objects.create(
            task_name=task,
            task_id=f"failed-{index}",
            exception_class=exception,
            first_failed_at=at,
            last_failed_at=at,
        )


def test_an_operator_opens_the_page_from_the_admin_and_sees_a_queue_nobody_consumes(
    browser: Browser, no_worker_running, start_worker, start_beat
):
    # given a worker that leaves the reports queue to nobody, a beat, and a day of failures
    start_worker(queues=["default", "emails", "media", "notifications", "maintenance"])
    start_beat()
    for index in range(12):
        app.send_task("reports.render", kwargs={"report_id": index}, queue="reports")
    a_day_of_failures()
    Batch.objects.create(kind="notifications.announcement", total=20_000, done=12_400, failed=3)
    email = an_operator()
    page = browser.page
    # when the operator logs in to the admin and follows the header's link
    page.goto("/admin/login/?next=/admin/")
    page.fill("#id_username", email)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.get_by_role("link", name="Operations").click()
    page.wait_for_url("**/admin/operations/")

    # then, once the canaries came back from the queues a worker takes, the page shows them
    def canaries_back() -> bool:
        page.reload()
        return page.locator("#queues tr", has_text="default").inner_text().endswith("ago")

    eventually(canaries_back, timeout=30, interval=1)
    reports = page.locator("#queues tr", has_text="reports")
    assert reports.locator("td.late").count() == 2  # no consumer, no canary back
    waiting = int(reports.locator("td").nth(1).inner_text())
    assert waiting >= 12  # and beat's canaries
    assert page.locator("#dead-letters tbody tr").count() == 3
    # and the dead letters' link opens the admin's list of exactly those
    page.locator("#dead-letters tbody tr", has_text="push_send").locator("a").click()
    assert "3 dead letters" in page.locator("#changelist").inner_text()
    page.go_back()
    # and it reads at a phone's width without a horizontal scroll of the whole page
    _save(page, "operations-desktop.png")
    page.set_viewport_size(PHONE)
    page.reload()
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"] + 1
    _save(page, "operations-phone.png")
    assert browser.problems == []


def _save(page, name: str) -> None:
    page.screenshot(path=SESSION_DIR / name, full_page=True)
    wanted = os.environ.get("OPERATIONS_SCREENSHOT")
    if wanted and name == "operations-desktop.png":
        page.screenshot(path=Path(wanted), full_page=True)


def test_an_operator_redrives_a_dead_letter_from_the_admin_once_the_cause_is_fixed(
    browser: Browser, web: WebProcess, celery_worker, smtp
):
    # given a signup whose email the mail server refused for good (a 550), since fixed
    smtp.fail_next("550 5.7.1 relaying temporarily denied", times=1)
    signup = httpx.post(
        f"{web.url}/api/v1/auth/signup",
        json={"email": "refused@example.com", "password": PASSWORD},
        timeout=30,
    )
    assert signup.status_code == 202
    letter = eventually(
        lambda: DeadLetter.objects.filter(task_name="accounts.send_email").first(), timeout=30
    )
    # and an operator who may act on dead letters
    email = an_operator(also=("change_deadletter",))
    page = browser.page
    page.goto("/admin/login/?next=/admin/jobs/deadletter/")
    page.fill("#id_username", email)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    # when they select it in the list and re-drive it
    page.locator(f"input[name=_selected_action][value='{letter.pk}']").check()
    page.select_option("select[name=action]", "redrive")
    page.click("button[name=index]")  # the admin's "Go"
    # then the admin says so, and the email goes out this time
    assert "re-driven" in page.locator(".messagelist").inner_text()
    smtp.wait_for("refused@example.com", subject="Confirm your email", timeout=30)
    letter.refresh_from_db()
    assert letter.status == DeadLetter.Status.REDRIVEN
    assert browser.problems == []
