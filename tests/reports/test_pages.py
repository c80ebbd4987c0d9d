"""The reports page: the schedule form, a report on demand, the person's reports only
(reports/views.py)."""

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone

from reports.models import Report, ReportSchedule

User = get_user_model()


def browser_of(email: str) -> tuple:
    user = User.objects.create_user(email, "x" * 12, email_verified_at=timezone.now())
    browser = Client()
    browser.force_login(user)
    return user, browser


@pytest.mark.django_db
def test_the_schedule_is_set_from_the_page_and_a_bad_timezone_changes_nothing():
    user, browser = browser_of("pages@example.com")
    page = browser.get("/reports")
    assert page.status_code == 200
    assert b'name="timezone" value="UTC"' in page.content
    saved = browser.post("/reports", {"frequency": "weekly", "timezone": "America/Lima"})
    assert saved.status_code == 302
    assert ReportSchedule.objects.filter(
        user=user, frequency="weekly", timezone="America/Lima"
    ).exists()
    refused = browser.post("/reports", {"frequency": "daily", "timezone": "../../etc/passwd"})
    assert refused.status_code == 400
    assert b"not an IANA timezone name" in refused.content
    assert ReportSchedule.objects.get(user=user).frequency == "weekly"
    refused = browser.post("/reports", {"frequency": "hourly", "timezone": "UTC"})
    assert refused.status_code == 400
    assert ReportSchedule.objects.get(user=user).frequency == "weekly"


@pytest.mark.django_db
def test_a_report_asked_for_on_the_page_is_listed_for_its_owner_only():
    user, browser = browser_of("asks@example.com")
    assert browser.post("/reports", {"action": "request", "frequency": "daily"}).status_code == 302
    assert browser.post("/reports", {"action": "request", "frequency": "daily"}).status_code == 302
    (report,) = Report.objects.filter(user=user)
    page = browser.get("/reports").content.decode()
    assert f'/api/v1/reports/{report.pk}"' in page
    assert "Being made" in page
    _, stranger = browser_of("stranger@example.com")
    assert str(report.pk) not in stranger.get("/reports").content.decode()
    assert browser.post("/reports", {"action": "request", "frequency": "x"}).status_code == 400


@pytest.mark.django_db
def test_the_page_asks_for_a_login():
    answer = Client().get("/reports")
    assert answer.status_code == 302 and "/login" in answer["Location"]
