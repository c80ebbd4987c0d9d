"""Scheduled reports end to end with a real worker and a real SMTP server: the schedule, the
dispatch beat runs, the PDF, its email; dispatched twice or at once, or after beat was down
(reports/services.py)."""

import io
import threading
from datetime import UTC, date, datetime, timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone
from pypdf import PdfReader

from accounts.services import api_token_create
from media.models import Upload
from reports import services
from reports.models import Report, ReportRun, ReportSchedule
from reports.periods import period_containing
from tests.services import eventually

User = get_user_model()


def person(email: str) -> tuple:
    user = User.objects.create_user(email, "x" * 12, email_verified_at=timezone.now())
    app = Client(headers={"Authorization": f"Bearer {api_token_create(user=user)}"})
    return user, app


def all_ready(expected: int, timeout: float = 60) -> list[Report]:
    return eventually(
        lambda: (
            reports
            if len(reports := list(Report.objects.filter(status=Report.Status.READY))) == expected
            else None
        ),
        timeout=timeout,
        interval=0.2,
    )


def pdf_text(pdf: bytes) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)


def test_a_schedule_brings_the_report_of_the_day_that_ended_by_email(celery_worker, smtp):
    # given a person who asked for daily reports in Paris, with an upload yesterday there
    user, app = person("daily@example.com")
    answer = app.put(
        "/api/v1/reports/schedule",
        {"frequency": "daily", "timezone": "Europe/Paris"},
        content_type="application/json",
    )
    assert answer.status_code == 200, answer.content
    yesterday = period_containing(
        timezone.now(), frequency="daily", timezone="Europe/Paris"
    ).before()
    upload = Upload.objects.create(
        owner=user, original_name="beach.jpg", source_format="JPEG", source_bytes=2048
    )
    Upload.objects.filter(pk=upload.pk).update(created_at=yesterday.start + timedelta(hours=9))
    # when the dispatch runs, as beat runs it
    assert services.reports_dispatch() >= 1
    # then the day's report is made, and emailed with the PDF attached, holding the upload
    (report,) = all_ready(1)
    assert (report.period_start, report.period_end) == (yesterday.start, yesterday.end)
    message = smtp.wait_for(user.email, subject="Your daily activity report is ready")
    (attachment,) = [part for part in message.iter_attachments()]
    assert attachment.get_content_type() == "application/pdf"
    assert "beach.jpg" in pdf_text(attachment.get_content())
    # and the API lists it with a link that gives its owner the PDF, and nobody else
    listed = app.get("/api/v1/reports").json()["results"]
    assert [entry["id"] for entry in listed] == [str(report.pk)]
    download = app.get(listed[0]["download_url"])
    assert download.status_code == 200
    assert download["Content-Type"] == "application/pdf"
    assert b"".join(download.streaming_content) == attachment.get_content()
    _, stranger = person("stranger@example.com")
    assert stranger.get(listed[0]["download_url"]).status_code == 404
    assert stranger.get(f"/api/v1/reports/{report.pk}").status_code == 404


def test_dispatching_twice_and_at_once_makes_one_report_and_one_email_each(celery_worker, smtp):
    # given three people on weekly reports
    people = [person(f"weekly{index}@example.com")[0] for index in range(3)]
    for user in people:
        services.report_schedule_set(user=user, frequency="weekly", timezone_name="UTC")
    # when, just after a week ended, two dispatchers run at once, and one again after
    errors: list = []
    monday = datetime(2026, 11, 30, 0, 10, tzinfo=UTC)

    def dispatch():
        try:
            services.reports_dispatch(at=monday)
        except Exception as error:  # reported below, with the thread's own error
            errors.append(repr(error))

    threads = [threading.Thread(target=dispatch) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    services.reports_dispatch(at=monday + timedelta(minutes=15))
    # then each person has one report of last week, and one email
    all_ready(3)
    assert errors == []
    assert ReportRun.objects.filter(skipped=False).count() == 1
    for user in people:
        smtp.wait_for(user.email, subject="Your weekly activity report is ready")
    assert Report.objects.count() == 3
    assert sorted(len(smtp.sent_to(user.email)) for user in people) == [1, 1, 1]


@pytest.mark.django_db(transaction=True)
def test_periods_missed_while_beat_was_down_are_caught_up_once_or_skipped_past_the_limit(
    celery_worker, settings
):
    # given a person on daily reports in UTC, and beat running a dispatch just after midnight
    settings.REPORT_CATCH_UP_HOURS = 24
    user, _ = person("missed@example.com")
    services.report_schedule_set(user=user, frequency="daily", timezone_name="UTC")
    services.reports_dispatch(at=datetime(2026, 3, 2, 0, 5, tzinfo=UTC))
    # when beat is down until the evening of 4 March, then dispatches, twice
    services.reports_dispatch(at=datetime(2026, 3, 4, 20, tzinfo=UTC))
    services.reports_dispatch(at=datetime(2026, 3, 4, 20, 15, tzinfo=UTC))
    # then 1 March (on time) and 3 March (caught up) are reported, once each; 2 March ended
    # more than 24 h before the first dispatch that saw it, and is skipped, on record
    reports = all_ready(2)
    assert sorted(report.period_start.date() for report in reports) == [
        date(2026, 3, 1),
        date(2026, 3, 3),
    ]
    skipped = ReportRun.objects.filter(skipped=True).values_list("period_start", flat=True)
    assert date(2026, 3, 2) in {start.date() for start in skipped}


@pytest.mark.django_db(transaction=True)
def test_the_command_runs_the_dispatch_for_a_given_moment_and_refuses_a_vague_one(
    celery_worker,
):
    user, _ = person("command@example.com")
    services.report_schedule_set(user=user, frequency="monthly", timezone_name="Asia/Kathmandu")
    out = io.StringIO()
    call_command("reports_dispatch", "--at", "2026-03-01T00:20:00+05:45", stdout=out)
    assert out.getvalue().strip() == "1 period(s) dispatched"
    (report,) = all_ready(1)
    assert report.period_start == datetime(2026, 1, 31, 18, 15, tzinfo=UTC)  # 1 Feb, Kathmandu
    for vague in ("2026-03-01T00:20:00", "yesterday", "2999-01-01T00:00:00Z"):
        with pytest.raises(CommandError):
            call_command("reports_dispatch", "--at", vague)


@pytest.mark.django_db(transaction=True)
def test_a_group_that_cannot_be_dispatched_holds_up_no_other(celery_worker):
    # given a subscriber whose timezone this host's tz database lacks (written before a tzdata
    # change), sorted before a subscriber of a good one
    broken, _ = person("broken@example.com")
    fine, _ = person("fine@example.com")
    services.report_schedule_set(user=fine, frequency="daily", timezone_name="UTC")
    ReportSchedule.objects.create(user=broken, frequency="daily", timezone="Atlantis/Gone")
    # when the dispatch runs, then the good group is dispatched, the broken one skipped
    assert services.reports_dispatch(at=datetime(2026, 3, 2, 0, 5, tzinfo=UTC)) == 1
    (report,) = all_ready(1)
    assert report.user == fine
