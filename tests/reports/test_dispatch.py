"""Scheduled reports end to end with a real worker and a real SMTP server: the schedule, the
dispatch beat runs, the PDF, its email; dispatched twice or at once, or after beat was down
(reports/services.py)."""

import io
import threading
from datetime import UTC, date, datetime, timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from media.models import Upload
from reports import services
from reports.models import Report, ReportRun, ReportSchedule
from reports.periods import period_containing
from tests.reports.support import SUBSCRIBED_LONG_AGO, all_ready, pdf_text, person, subscribed


def test_a_schedule_brings_the_report_of_the_day_that_ended_by_email(celery_worker, smtp):
    # given a person who asked for daily reports in Paris two days ago, with an upload
    # yesterday there
    user, app = person("daily@example.com")
    answer = app.put(
        "/api/v1/reports/schedule",
        {"frequency": "daily", "timezone": "Europe/Paris"},
        content_type="application/json",
    )
    assert answer.status_code == 200, answer.content
    ReportSchedule.objects.filter(user=user).update(since=timezone.now() - timedelta(days=2))
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
    # (named after the day in Paris, which began at 22:00 or 23:00 UTC the day before)
    assert f"report-daily-{yesterday.first_day:%Y-%m-%d}.pdf" in download["Content-Disposition"]
    assert b"".join(download.streaming_content) == attachment.get_content()
    _, stranger = person("stranger@example.com")
    assert stranger.get(listed[0]["download_url"]).status_code == 404
    assert stranger.get(f"/api/v1/reports/{report.pk}").status_code == 404


def test_dispatching_twice_and_at_once_makes_one_report_and_one_email_each(celery_worker, smtp):
    # given three people on weekly reports
    people = [person(f"weekly{index}@example.com")[0] for index in range(3)]
    for user in people:
        subscribed(user, "weekly", "UTC")
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
    subscribed(user, "daily", "UTC")
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
    celery_worker, settings
):
    settings.REPORT_RETENTION_DAYS = 3650  # the moments below are kept
    user, _ = person("command@example.com")
    subscribed(user, "monthly", "Asia/Kathmandu")
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
    subscribed(fine, "daily", "UTC")
    ReportSchedule.objects.create(
        user=broken, frequency="daily", timezone="Atlantis/Gone", since=SUBSCRIBED_LONG_AGO
    )
    # when the dispatch runs, then the good group is dispatched, the broken one skipped
    assert services.reports_dispatch(at=datetime(2026, 3, 2, 0, 5, tzinfo=UTC)) == 1
    (report,) = all_ready(1)
    assert report.user == fine


@pytest.mark.django_db(transaction=True)
def test_a_skipped_period_is_back_filled_by_the_command_once(celery_worker, settings):
    # given a daily subscriber whose 2 March beat saw too late, and skipped
    settings.REPORT_CATCH_UP_HOURS = 24
    settings.REPORT_RETENTION_DAYS = 3650
    user, _ = person("backfill@example.com")
    subscribed(user, "daily", "UTC")
    services.reports_dispatch(at=datetime(2026, 3, 4, 20, tzinfo=UTC))
    assert ReportRun.objects.filter(skipped=True, period_start__date=date(2026, 3, 2)).exists()
    all_ready(1)  # 3 March, caught up
    # when an operator back-fills it, twice
    for _ in range(2):
        call_command("reports_dispatch", "--at", "2026-03-03T00:05:00Z", stdout=io.StringIO())
    # then 2 March is reported, once; beat's own dispatches still skip what they see too late
    reports = all_ready(2)
    assert sorted(report.period_start.date() for report in reports) == [
        date(2026, 3, 2),
        date(2026, 3, 3),
    ]
    assert not ReportRun.objects.filter(period_start__date=date(2026, 3, 2), skipped=True).exists()
    assert services.reports_dispatch(at=datetime(2026, 3, 4, 20, 15, tzinfo=UTC)) == 0


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("day", "hours", "inside", "outside"),
    [
        # Paris moves its clocks forward at 02:00 on 29 March 2026: the day is 23 hours long,
        # from 23:00 UTC on the 28th to 22:00 UTC on the 29th
        (date(2026, 3, 29), 23, ["2026-03-28T23:30Z", "2026-03-29T21:30Z"],
         ["2026-03-28T22:30Z", "2026-03-29T22:30Z"]),
        # and back at 03:00 on 25 October: 25 hours, from 22:00 UTC on the 24th to 23:00 on the 25th
        (date(2026, 10, 25), 25, ["2026-10-24T22:30Z", "2026-10-25T22:30Z"],
         ["2026-10-24T21:30Z", "2026-10-25T23:30Z"]),
    ],
)  # fmt: skip
def test_a_daylight_saving_day_is_reported_with_its_own_hours(
    celery_worker, day, hours, inside, outside
):
    # given a daily subscriber in Paris with uploads around the edges of that day
    user, _ = person("paris@example.com")
    subscribed(user, "daily", "Europe/Paris")
    for moment in inside + outside:
        upload = Upload.objects.create(
            owner=user, original_name=f"at-{moment[11:16]}-{moment[8:10]}.jpg",
            source_format="JPEG", source_bytes=1,
        )  # fmt: skip
        Upload.objects.filter(pk=upload.pk).update(created_at=datetime.fromisoformat(moment))
    # when beat dispatches just after that local midnight
    next_midnight = datetime.combine(day + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    services.reports_dispatch(at=next_midnight + timedelta(hours=1))
    # then the report covers the day's own hours, and the uploads made in them
    (report,) = all_ready(1)
    assert report.period_end - report.period_start == timedelta(hours=hours)
    text = pdf_text(services.report_file(report.pk).read_bytes())
    assert "2uploads" in text, text
    for moment in inside:
        assert f"at-{moment[11:16]}-{moment[8:10]}.jpg" in text
    for moment in outside:
        assert f"at-{moment[11:16]}-{moment[8:10]}.jpg" not in text


@pytest.mark.django_db(transaction=True)
def test_a_schedule_sends_the_periods_that_end_after_it_was_chosen_to_those_still_on_it(
    celery_worker,
):
    # given four people on daily reports in UTC: one since long ago, one who chose it this
    # morning, one who moved to Lagos since the run started, one whose erasure began since
    monday = datetime(2026, 3, 2, 0, 5, tzinfo=UTC)
    old, _ = person("old@example.com")
    subscribed(old, "daily", "UTC")
    new, _ = person("new@example.com")
    services.report_schedule_set(user=new, frequency="daily", timezone_name="UTC")
    ReportSchedule.objects.filter(user=new).update(since=monday - timedelta(minutes=3))
    moved, _ = person("moved@example.com")
    subscribed(moved, "daily", "UTC")
    leaving, _ = person("leaving@example.com")
    subscribed(leaving, "daily", "UTC")
    # (the run's batch is cut, and its chunk waits, while no worker runs)
    celery_worker.stop()
    assert services.reports_dispatch(at=monday) == 1
    services.report_schedule_set(user=moved, frequency="daily", timezone_name="Africa/Lagos")
    type(leaving).objects.filter(pk=leaving.pk).update(is_active=False)
    # when the chunk runs
    celery_worker.start()
    # then only the one subscribed before the day ended, and still on it, gets its report
    (report,) = all_ready(1)
    assert report.user == old
    # and saving the same schedule again does not move its start
    since = ReportSchedule.objects.get(user=old).since
    services.report_schedule_set(user=old, frequency="daily", timezone_name="UTC")
    assert ReportSchedule.objects.get(user=old).since == since


@pytest.mark.django_db(transaction=True)
def test_every_period_missed_since_the_last_run_is_recorded_as_skipped(celery_worker, settings):
    # given a daily subscriber dispatched on 1 March, then beat down until the evening of 6 March
    settings.REPORT_CATCH_UP_HOURS = 24
    user, _ = person("gap@example.com")
    subscribed(user, "daily", "UTC")
    services.reports_dispatch(at=datetime(2026, 3, 2, 0, 5, tzinfo=UTC))
    services.reports_dispatch(at=datetime(2026, 3, 6, 20, tzinfo=UTC))
    # then 2 to 4 March are on record as skipped, 5 March caught up (28 February was skipped
    # by the first dispatch of all, which did not see it in time either)
    skipped = ReportRun.objects.filter(skipped=True).order_by("period_start")
    assert [run.period_start.date() for run in skipped] == [
        date(2026, 2, 28), date(2026, 3, 2), date(2026, 3, 3), date(2026, 3, 4),
    ]  # fmt: skip
    dispatched = ReportRun.objects.filter(skipped=False).order_by("period_start")
    assert [run.period_start.day for run in dispatched] == [1, 5]
    all_ready(2)


@pytest.mark.django_db
def test_the_command_refuses_a_moment_older_than_the_retention(settings):
    settings.REPORT_RETENTION_DAYS = 90
    long_ago = (timezone.now() - timedelta(days=91)).isoformat()
    with pytest.raises(CommandError, match="REPORT_RETENTION_DAYS"):
        call_command("reports_dispatch", "--at", long_ago)
    assert not ReportRun.objects.exists()
