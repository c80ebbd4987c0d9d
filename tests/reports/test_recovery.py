"""A report gets made once whatever happens to its rendering: a worker killed whole mid-render,
a message lost, a dead letter re-driven; old reports go with their files; a render that would
swallow the machine's memory fails instead (reports/services.py, reports/rendering.py)."""

import stat
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings as project_settings
from django.utils import timezone

from accounts.deletion import account_erasure_queue, account_erasure_start
from accounts.models import EmailDelivery
from jobs.brokers import messages_waiting
from jobs.deadletters import dead_letter_record, dead_letter_redrive
from media.models import Upload
from reports import services
from reports.models import Report, ReportRun
from reports.periods import period_containing
from tests.media.test_crash_safety import kill_worker_and_its_pool
from tests.reports.support import all_ready, pdf_text, person
from tests.services import eventually

READY_SUBJECT = "Your monthly activity report is ready"


def busy_month(email: str) -> Report:
    """A person with 300 uploads last month, and that month's report, queued: a render of
    seconds, time enough to catch it in the middle."""
    user, _ = person(email)
    period = period_containing(timezone.now(), frequency="monthly", timezone="UTC").before()
    Upload.objects.bulk_create(
        Upload(owner=user, original_name=f"photo-{n}.jpg", source_format="JPEG", source_bytes=n)
        for n in range(300)
    )
    Upload.objects.filter(owner=user).update(created_at=period.start + timedelta(hours=30))
    report, made = services.report_request(user=user, frequency="monthly")
    assert made
    return report


def past_deadline(report: Report) -> object:
    return Report.objects.get(pk=report.pk).deadline + timedelta(seconds=1)


def test_a_worker_killed_whole_mid_render_leaves_a_report_made_and_emailed_once(
    no_worker_running, start_worker, smtp
):
    # given a report rendering on a reports worker
    first = start_worker(queues=["reports"], concurrency=1)
    report = busy_month("killed@example.com")
    eventually(
        lambda: Report.objects.filter(pk=report.pk, progress=40).exists(), timeout=60, interval=0.02
    )
    # when the worker and its pool are killed outright, mid-layout
    kill_worker_and_its_pool(first)
    assert Report.objects.get(pk=report.pk).status == Report.Status.RENDERING
    # then the sweep leaves it alone while its deadline is ahead, and queues it again after
    assert services.reports_stalled_sweep() == 0
    assert services.reports_stalled_sweep(now=past_deadline(report)) == 1
    # and a new worker makes it (on RabbitMQ the killed delivery comes back too: one of the two
    # makes it), emails it once, and leaves one PDF and no partial file
    start_worker()
    (ready,) = all_ready(1)
    assert ready.resumes == 1
    message = smtp.wait_for(ready.user.email, subject=READY_SUBJECT)
    (attachment,) = message.iter_attachments()
    assert "photo-299.jpg" in pdf_text(attachment.get_content())
    folder = services.report_file(report.pk).parent
    assert [path.name for path in folder.glob(f"{report.pk}*")] == [f"{report.pk}.pdf"]
    assert len(smtp.sent_to(ready.user.email)) == 1
    assert EmailDelivery.objects.filter(kind=EmailDelivery.Kind.REPORT_READY).count() == 1


def test_a_report_whose_message_was_lost_is_queued_again_then_failed_and_asked_for_again(
    celery_worker, smtp, settings
):
    # given a report queued whose message never reached a worker (a broker that lost it)
    settings.REPORT_MAX_RESUMES = 1
    user, app = person("lost@example.com")
    period = period_containing(timezone.now(), frequency="weekly", timezone="UTC").before()
    report = Report.objects.create(
        user=user, frequency="weekly", timezone="UTC", period_start=period.start,
        period_end=period.end,
    )  # fmt: skip
    # when its deadline passes, the sweep queues it again, and a worker makes it
    assert services.reports_stalled_sweep(now=past_deadline(report)) == 1
    (ready,) = all_ready(1)
    assert ready.resumes == 1
    smtp.wait_for(user.email, subject="Your weekly activity report is ready")
    # and a report whose messages keep being lost is failed once its resumes are spent, with a
    # reason, and made when the person asks again
    Report.objects.filter(pk=report.pk).update(status=Report.Status.QUEUED)
    assert services.reports_stalled_sweep(now=past_deadline(report)) == 1
    failed = Report.objects.get(pk=report.pk)
    assert failed.status == Report.Status.FAILED and "ask for it again" in failed.error
    asked = app.post("/api/v1/reports", {"frequency": "weekly"}, content_type="application/json")
    assert asked.json()["id"] == str(report.pk) and asked.json()["status"] == "queued"
    all_ready(1)


def test_a_report_queued_past_its_deadline_behind_other_messages_is_left_to_wait(
    no_worker_running, transactional_db
):
    # given two reports whose messages wait in the reports queue (no worker consumes it)
    reports = []
    for email in ("first@example.com", "second@example.com"):
        user, _ = person(email)
        reports.append(services.report_request(user=user, frequency="daily")[0])
    eventually(lambda: messages_waiting("reports") == 2)
    # when the sweep runs past their deadline
    later = past_deadline(reports[-1])
    assert services.reports_stalled_sweep(now=later) == 0
    # then nothing is queued again nor counted against them: their deadline moved on
    for report in Report.objects.all():
        assert (report.status, report.resumes) == (Report.Status.QUEUED, 0)
        assert report.deadline > timezone.now()
    assert messages_waiting("reports") == 2


@pytest.mark.django_db
def test_an_erasure_that_begins_while_a_report_renders_leaves_no_pdf_and_no_email(monkeypatch):
    # given a report rendering for an account whose deletion is due
    user, _ = person("erasing@example.com")
    report, _ = services.report_request(user=user, frequency="daily")
    type(user).objects.filter(pk=user.pk).update(deletion_scheduled_for=timezone.now())
    user.refresh_from_db()
    erasure = account_erasure_queue(user=user)
    render = services.rendering.pdf_render

    def render_while_the_erasure_starts(**kwargs):
        assert account_erasure_start(erasure_id=erasure.pk).started
        return render(**kwargs)

    monkeypatch.setattr(services.rendering, "pdf_render", render_while_the_erasure_starts)
    # when the render ends, then nothing was made: the report failed as the erasure began
    assert not services.report_render(report_id=str(report.pk))
    assert Report.objects.get(pk=report.pk).status == Report.Status.FAILED
    assert not any(services.report_file(report.pk).parent.glob(f"{report.pk}*"))
    assert not EmailDelivery.objects.filter(kind=EmailDelivery.Kind.REPORT_READY).exists()
    # and a delivery of it that comes later renders nothing
    monkeypatch.setattr(services.rendering, "pdf_render", render)
    assert not services.report_render(report_id=str(report.pk))
    # nor does asking for a report, or a dispatch chunk
    with pytest.raises(services.ReportRefused, match="being deleted"):
        services.report_request(user=user, frequency="weekly")


def test_a_failed_renders_dead_letter_re_driven_makes_the_report(celery_worker, smtp):
    # given a report whose rendering failed for good
    user, _ = person("redrive@example.com")
    report, _ = services.report_request(user=user, frequency="daily")
    all_ready(1)
    smtp.wait_for(user.email)
    Report.objects.filter(pk=report.pk).update(status=Report.Status.FAILED, error="It failed.")
    services.report_files_delete(report.pk)
    letter = dead_letter_record(task_name="reports.render_report", task_id="render-1", args=[],
                                kwargs={"report_id": str(report.pk)}, queue="reports",
                                error=OSError("disk full"), attempts=4)  # fmt: skip
    # when a person re-drives it
    dead_letter_redrive(dead_letter_id=letter.pk, by="ops@example.com")
    # then it is made again, and ready
    (ready,) = all_ready(1)
    assert ready.error == "" and services.report_file(report.pk).is_file()


def test_a_report_larger_than_the_attachment_limit_is_emailed_as_a_link(
    celery_worker, smtp, settings
):
    # given an attachment limit smaller than any PDF (the render runs in this process, which has
    # the setting; the email goes through the worker)
    settings.REPORT_ATTACH_MAX_BYTES = 1000
    user, _ = person("link@example.com")
    period = period_containing(timezone.now(), frequency="daily", timezone="UTC").before()
    report = Report.objects.create(
        user=user, frequency="daily", timezone="UTC", period_start=period.start,
        period_end=period.end,
    )  # fmt: skip
    # when it is rendered
    assert services.report_render(report_id=str(report.pk))
    # (readable by the web server's user, which sends it through X-Accel-Redirect)
    assert stat.S_IMODE(services.report_file(report.pk).stat().st_mode) == 0o644
    # then the email holds a link to the PDF, behind the login, and no attachment
    message = smtp.wait_for(user.email, subject="Your daily activity report is ready")
    assert list(message.iter_attachments()) == []
    text = message.get_body(("plain",)).get_content()
    assert f"/reports/{report.pk}/download" in text


@pytest.mark.django_db
def test_reports_past_their_retention_go_with_their_files_and_newer_ones_stay(settings, tmp_path):
    # given reports made (ready) 31 and 29 days ago, one asked for 40 days ago but made a day
    # ago (it failed, then was asked for again), and one never made, last queued 31 days ago,
    # with a retention of 30 days
    settings.MEDIA_ROOT = str(tmp_path)
    settings.REPORT_RETENTION_DAYS = 30
    user, _ = person("old@example.com")
    days_ago = lambda days: timezone.now() - timedelta(days=days)  # noqa: E731
    kept = {}
    for name, created, ready, status in [
        ("made 31 days ago", 31, 31, Report.Status.READY),
        ("made 29 days ago", 29, 29, Report.Status.READY),
        ("asked again", 40, 1, Report.Status.READY),
        ("never made", 31, None, Report.Status.FAILED),
    ]:
        start = days_ago(created + 1)
        report = Report.objects.create(
            user=user, frequency="daily", timezone="UTC", period_start=start,
            period_end=start + timedelta(days=1), status=status, created_at=days_ago(created),
            ready_at=ready and days_ago(ready),
        )  # fmt: skip
        Report.objects.filter(pk=report.pk).update(updated_at=days_ago(ready or created))
        path = services.report_file(report.pk)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"%PDF-1.7")
        Path(f"{path.parent}/{report.pk}.abc.partial").write_bytes(b"%PDF")
        ReportRun.objects.create(
            frequency="daily", timezone="UTC", period_start=start,
            period_end=start + timedelta(days=1), created_at=report.created_at,
        )  # fmt: skip
        kept[name] = report.pk
    # when the pruning runs
    assert services.reports_prune() == 2
    # then the two made or last changed more than 30 days ago are gone with their files
    stay = sorted([kept["made 29 days ago"], kept["asked again"]])
    assert sorted(Report.objects.values_list("pk", flat=True)) == stay
    assert sorted(path.name for path in (tmp_path / "reports").iterdir()) == sorted(
        name for pk in stay for name in (f"{pk}.pdf", f"{pk}.abc.partial")
    )
    # and the dispatch records made more than 30 days ago with them
    assert list(ReportRun.objects.values_list("period_start", flat=True)) == [
        Report.objects.get(pk=kept["made 29 days ago"]).period_start
    ]


def test_a_render_past_its_memory_cap_fails_and_the_process_gets_its_memory_back():
    # Run in a process of its own: the cap is on the whole process's address space.
    probe = (
        "from reports.rendering import memory_capped\n"
        "import resource\n"
        "before = resource.getrlimit(resource.RLIMIT_AS)\n"
        "try:\n"
        "    with memory_capped(budget=64 * 1024 * 1024):\n"
        "        small = bytearray(16 * 1024 * 1024)\n"
        "        bytearray(256 * 1024 * 1024)\n"
        "    print('not capped')\n"
        "except MemoryError:\n"
        "    print('capped')\n"
        "assert resource.getrlimit(resource.RLIMIT_AS) == before\n"
        "print(len(bytearray(512 * 1024 * 1024)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=project_settings.BASE_DIR,
        env={"DJANGO_SETTINGS_MODULE": "config.settings", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["capped", str(512 * 1024 * 1024)]
