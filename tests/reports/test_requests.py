"""Reports on demand (POST /api/v1/reports): the period asked for, what is refused and why, the
per-account allowance, and a failed report asked for again (reports/services.py)."""

from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from reports import services
from reports.models import Report, ReportSchedule
from tests.reports.support import person


def ask(app, **body):
    return app.post("/api/v1/reports", body, content_type="application/json")


@pytest.mark.django_db
def test_a_day_asks_for_the_period_that_holds_it_in_the_persons_timezone():
    # given a person in Tokyo who signed up in January
    user, app = person("tokyo@example.com", date_joined=datetime(2026, 1, 5, tzinfo=UTC))
    services.report_schedule_set(user=user, frequency="weekly", timezone_name="Asia/Tokyo")
    # when they ask for the week holding Wednesday 4 February, and for it again by its Sunday
    first = ask(app, frequency="weekly", period="2026-02-04")
    again = ask(app, frequency="weekly", period="2026-02-08")
    # then one report covers Monday 2 to Monday 9 February, Tokyo time
    assert first.status_code == again.status_code == 202, first.content
    assert first.json()["id"] == again.json()["id"]
    assert first.json()["period_start"] == "2026-02-01T15:00:00Z"
    assert first.json()["period_end"] == "2026-02-08T15:00:00Z"
    assert Report.objects.filter(user=user).count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"frequency": "monthly", "period": "today"}, "Date has wrong format"),
        ({"frequency": "monthly", "period": "0001-01-01"}, "between the day you signed up"),
        ({"frequency": "monthly", "period": "9999-12-31"}, "between the day you signed up"),
        ({"frequency": "daily", "period": "2025-12-31"}, "between the day you signed up"),
        ({"frequency": "hourly"}, "is not a valid choice"),
        ({"frequency": "off"}, "is not a valid choice"),
        ({"frequency": ["daily"]}, "is not a valid choice"),
    ],
)
def test_a_period_that_cannot_be_reported_is_refused_with_its_reason(body, says):
    user, app = person("refused@example.com", date_joined=datetime(2026, 1, 5, tzinfo=UTC))
    answer = ask(app, **body)
    assert answer.status_code == 400, answer.content
    assert says in answer.content.decode()
    assert not Report.objects.filter(user=user).exists()


@pytest.mark.django_db
def test_a_period_that_has_not_ended_is_refused_until_it_has():
    user, app = person("early@example.com", date_joined=datetime(2026, 1, 5, tzinfo=UTC))
    today = timezone.now().date().isoformat()
    for frequency in ("daily", "weekly", "monthly"):
        answer = ask(app, frequency=frequency, period=today)
        assert answer.status_code == 400
        assert "has not ended yet" in answer.content.decode(), answer.content
    assert not Report.objects.filter(user=user).exists()


@pytest.mark.django_db
def test_new_reports_on_demand_are_limited_per_day_and_asking_again_is_free(settings):
    # given an allowance of 3 new reports a day, and an account a year old
    settings.REPORT_REQUESTS_PER_DAY = 3
    user, app = person("busy@example.com", date_joined=timezone.now() - timedelta(days=365))
    days = [(timezone.now() - timedelta(days=n)).date().isoformat() for n in (2, 3, 4, 5)]
    # when they ask for three past days, then each again, then a fourth
    made = [ask(app, frequency="daily", period=day) for day in days[:3]]
    again = [ask(app, frequency="daily", period=day) for day in days[:3]]
    fourth = ask(app, frequency="daily", period=days[3])
    # then the three are made, asking again returns them, and the fourth waits for the window
    assert [answer.status_code for answer in made + again] == [202] * 6
    assert fourth.status_code == 429
    assert "3 reports in the last 24 hours" in fourth.json()["detail"]
    assert 0 < int(fourth["Retry-After"]) <= 24 * 3600
    assert Report.objects.filter(user=user).count() == 3
    # and a day later the allowance is back
    Report.objects.filter(user=user).update(
        requested_at=timezone.now() - timedelta(days=1, seconds=1)
    )
    assert ask(app, frequency="daily", period=days[3]).status_code == 202


@pytest.mark.django_db
def test_a_failed_report_asked_for_again_is_queued_again_from_scratch():
    _, app = person("retry@example.com", date_joined=timezone.now() - timedelta(days=90))
    first = ask(app, frequency="monthly").json()
    Report.objects.filter(pk=first["id"]).update(
        status=Report.Status.FAILED, error="The report could not be made.", resumes=3, progress=40
    )
    again = ask(app, frequency="monthly")
    assert again.status_code == 202
    body = again.json()
    assert (body["id"], body["status"], body["error"], body["progress"]) == (
        first["id"],
        "queued",
        "",
        0,
    )
    assert Report.objects.get(pk=first["id"]).resumes == 0


@pytest.mark.django_db
def test_the_page_asks_for_a_given_period_and_says_what_is_wrong_with_one():
    from django.test import Client

    user, _ = person("page@example.com", date_joined=datetime(2026, 1, 5, tzinfo=UTC))
    browser = Client()
    browser.force_login(user)
    asked = {"action": "request", "frequency": "monthly", "period": "2026-02-14"}
    assert browser.post("/reports", asked).status_code == 302
    (report,) = Report.objects.filter(user=user)
    assert report.period_start == datetime(2026, 2, 1, tzinfo=UTC)
    page = browser.get("/reports").content.decode()
    assert "1 Feb 2026 to 28 Feb 2026 (UTC)" in page
    for day, says in (("14/02/2026", "YYYY-MM-DD"), ("2025-02-14", "signed up")):
        refused = browser.post("/reports", {**asked, "period": day})
        assert refused.status_code == 400 and says in refused.content.decode()


@pytest.mark.django_db
def test_a_timezone_this_server_does_not_know_is_asked_for_again_not_a_500():
    # given a schedule saved in a timezone this host's tz database lacks (an older tzdata)
    user, app = person("unknown-zone@example.com")
    ReportSchedule.objects.create(user=user, frequency="daily", timezone="America/Ciudad_Nueva")
    # when the person asks for a report, then they are told to choose their timezone again
    answer = ask(app, frequency="daily")
    assert answer.status_code == 400
    assert "choose it again" in answer.content.decode()
    assert not Report.objects.exists()
