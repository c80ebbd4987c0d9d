"""Reports: a person's schedule, the dispatch that beat runs, and the rendering of one report.

- `report_schedule_set`: off, daily, weekly or monthly, in an IANA timezone.
- `reports_dispatch(at=)`: what the periodic job runs (and `manage.py reports_dispatch`). For
  each group of subscribers sharing a frequency and a timezone, each period of theirs that ended
  within REPORT_CATCH_UP_HOURS before `at` is dispatched once: a `ReportRun` row (unique per
  group and period) and a batch over the group's subscribers, in id-ordered chunks, in one
  transaction. Two dispatchers at once, a dispatcher run again, or one that died half-way make
  no second run: the run row's unique key decides. A period that ended longer ago than that
  without a run (beat was down for longer) is skipped and logged, once.
- `report_request`: a report on demand, of the person's last ended period; asking again for the
  same period returns the same report.
- `report_render`: one report to PDF, stored under MEDIA_ROOT/reports/, then its email.

Exactly one report per (person, frequency, period): the batch's handler inserts with the
database's unique key, and only the insert that made the row enqueues its rendering.
"""

import logging
import os
import tempfile
from datetime import datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.emails import email_delivery_create
from accounts.models import EmailDelivery, User
from jobs.batches import batch_start
from jobs.outbox import enqueue
from reports import rendering
from reports.models import Frequency, Report, ReportRun, ReportSchedule
from reports.periods import Period, period_containing, periods_ended, timezone_checked
from reports.selectors import activity_in

logger = logging.getLogger(__name__)

DISPATCH_BATCH_KIND = "reports.dispatch"
# Subscribers per chunk of a dispatch: each is one insert and, for a new report, one outbox row;
# a chunk of 500 runs in well under a second.
DISPATCH_CHUNK = 500


class ReportRefused(Exception):
    """A schedule or request that cannot be carried out; the message says why."""


# --- the schedule ---------------------------------------------------------------------------


def report_schedule_of(*, user: User) -> ReportSchedule:
    """The person's schedule; "off" in UTC if they never set one (not saved)."""
    return ReportSchedule.objects.filter(user=user).first() or ReportSchedule(user=user)


def report_schedule_set(*, user: User, frequency: str, timezone_name: str) -> ReportSchedule:
    if frequency not in Frequency.values:
        raise ReportRefused(f"frequency must be one of {', '.join(Frequency.values)}.")
    try:
        timezone_checked(timezone_name)
    except ValueError as error:
        raise ReportRefused(str(error)) from error
    schedule, _ = ReportSchedule.objects.update_or_create(
        user=user, defaults={"frequency": frequency, "timezone": timezone_name}
    )
    return schedule


# --- dispatch -------------------------------------------------------------------------------


def reports_dispatch(*, at: datetime | None = None) -> int:
    """Dispatch every subscriber group's periods that ended within REPORT_CATCH_UP_HOURS before
    `at` (now by default) and have no run yet; returns how many runs it started."""
    at = at or timezone.now()
    catch_up = timedelta(hours=settings.REPORT_CATCH_UP_HOURS)
    groups = (
        ReportSchedule.objects.exclude(frequency=Frequency.OFF)
        .values_list("frequency", "timezone")
        .distinct()
        .order_by("frequency", "timezone")
    )
    started = 0
    for frequency, timezone_name in groups:
        try:
            started += _group_dispatch(frequency, timezone_name, at=at, catch_up=catch_up)
        except Exception:
            # One group that cannot be dispatched (a timezone this host's tz database lacks)
            # must not hold up the groups after it; it is logged, and tried again next run.
            logger.exception("reports: %s reports in %s not dispatched", frequency, timezone_name)
    return started


def _group_dispatch(frequency: str, timezone_name: str, *, at: datetime, catch_up) -> int:
    # One period before the window too: if it has no run, beat missed it for longer than the
    # catch-up allows, and that is said once, in the log and as a skipped run.
    recent = periods_ended(
        frequency=frequency, timezone=timezone_name, after=at - catch_up, until=at
    )
    _run_create(
        period_containing(at - catch_up, frequency=frequency, timezone=timezone_name).before(),
        skipped=True,
    )
    return sum(_run_create(period, skipped=False) for period in recent)


def _run_create(period: Period, *, skipped: bool) -> bool:
    """Create the group's run for the period, and start its batch unless skipped; False if the
    run exists already (another dispatcher, an earlier run of this one)."""
    from reports import tasks  # noqa: F401 (declares the batch's handler; it imports this module)

    try:
        with transaction.atomic():
            run = ReportRun.objects.create(
                frequency=period.frequency,
                timezone=period.timezone,
                period_start=period.start,
                period_end=period.end,
                skipped=skipped,
            )
            if skipped:
                logger.warning(
                    "reports: %s period %s to %s in %s not dispatched: it ended more than %s h "
                    "before the first dispatch that saw it (REPORT_CATCH_UP_HOURS)",
                    period.frequency,
                    period.start.isoformat(),
                    period.end.isoformat(),
                    period.timezone,
                    settings.REPORT_CATCH_UP_HOURS,
                )
                return False
            subscribers = (
                ReportSchedule.objects.filter(frequency=period.frequency, timezone=period.timezone)
                .order_by("user_id")
                .values_list("user_id", flat=True)
                .iterator(chunk_size=DISPATCH_CHUNK)
            )
            run.batch = batch_start(
                kind=DISPATCH_BATCH_KIND,
                items=({"run_id": run.pk, "user_id": user_id} for user_id in subscribers),
                chunk_size=DISPATCH_CHUNK,
            )
            ReportRun.objects.filter(pk=run.pk).update(batch=run.batch)
    except IntegrityError:
        return False
    return True


def reports_of_run_create(*, run_id: int, user_ids: list[int]) -> int:
    """A dispatch chunk: the run's period's report for each of these subscribers that has none,
    each rendering enqueued with the insert that made its row. Returns how many it made."""
    run = ReportRun.objects.get(pk=run_id)
    period = Period(
        frequency=run.frequency,
        timezone=run.timezone,
        start=run.period_start,
        end=run.period_end,
    )
    made = 0
    for user_id in user_ids:
        made += _report_create(user_id=user_id, period=period, on_demand=False) is not None
    return made


def _report_create(*, user_id: int, period: Period, on_demand: bool) -> Report | None:
    """The report, queued with its rendering; None if one exists for this period already."""
    from reports import tasks  # the task module imports this one

    try:
        with transaction.atomic():
            report = Report.objects.create(
                user_id=user_id,
                frequency=period.frequency,
                timezone=period.timezone,
                period_start=period.start,
                period_end=period.end,
                on_demand=on_demand,
            )
            enqueue(tasks.render_report, report_id=str(report.pk))
    except IntegrityError:
        return None
    return report


def report_request(*, user: User, frequency: str) -> tuple[Report, bool]:
    """A report of the person's last ended period of this frequency, in their schedule's
    timezone (UTC without one). Returns it and whether it was made now: asking again for the
    same period returns the one there is."""
    if frequency not in Frequency.values or frequency == Frequency.OFF:
        raise ReportRefused("frequency must be daily, weekly or monthly.")
    schedule = report_schedule_of(user=user)
    period = period_containing(
        timezone.now(), frequency=frequency, timezone=schedule.timezone
    ).before()
    made = _report_create(user_id=user.pk, period=period, on_demand=True)
    if made is not None:
        return made, True
    return Report.objects.get(user=user, frequency=frequency, period_start=period.start), False


# --- rendering ------------------------------------------------------------------------------


def report_file(report_id) -> Path:
    return Path(settings.MEDIA_ROOT) / "reports" / f"{report_id}.pdf"


def report_files_delete(report_id) -> None:
    """The report's PDF, and what a render cut short left of one (`<id>.*.partial`)."""
    path = report_file(report_id)
    path.unlink(missing_ok=True)
    for partial in path.parent.glob(f"{report_id}.*.partial"):
        partial.unlink(missing_ok=True)


def report_render(*, report_id: str) -> bool:
    """Render the report to its PDF and send its email; True once it is ready. A report ready
    already, or gone (erased, pruned), is left as it is: a delivery run twice renders once and
    emails once."""
    report = (
        Report.objects.filter(pk=report_id)
        .exclude(status__in=[Report.Status.READY, Report.Status.FAILED])
        .select_related("user")
        .first()
    )
    if report is None:
        return False
    if not Report.objects.filter(
        pk=report.pk, status__in=[Report.Status.QUEUED, Report.Status.RENDERING]
    ).update(status=Report.Status.RENDERING, progress=10):
        return False  # finished by another delivery since it was read
    period = Period(
        frequency=report.frequency,
        timezone=report.timezone,
        start=report.period_start,
        end=report.period_end,
    )
    activity = activity_in(user_id=report.user_id, period=period)
    Report.objects.filter(pk=report.pk).update(progress=40)
    rendered = rendering.pdf_render(
        template="reports/report.html",
        context={
            "period": period,
            "email": report.user.email,
            "activity": activity,
            "bars": rendering.bars_per_day(activity.uploads_per_day, activity.days),
            "chart_width": rendering.CHART_WIDTH,
            "chart_height": rendering.CHART_HEIGHT,
            "made_at": timezone.now(),
        },
    )
    path = report_file(report.pk)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written whole under a name of this delivery's own, then renamed: a reader never sees half
    # a PDF, and two deliveries at once never write into one file.
    descriptor, partial = tempfile.mkstemp(
        dir=path.parent, prefix=f"{report.pk}.", suffix=".partial"
    )
    with os.fdopen(descriptor, "wb") as file:
        file.write(rendered.pdf)
    os.replace(partial, path)
    with transaction.atomic():
        if not Report.objects.filter(pk=report.pk, status=Report.Status.RENDERING).update(
            status=Report.Status.READY,
            progress=100,
            pdf_bytes=len(rendered.pdf),
            ready_at=timezone.now(),
        ):
            if not Report.objects.filter(pk=report.pk).exists():
                # Erased (or pruned) while it rendered: its erasure looked for the file before
                # it was written, so the file goes here, or nobody would ever remove it.
                path.unlink(missing_ok=True)
            return False  # another delivery finished it first, or it was erased meanwhile
        attachment = _attachment_of(report, size=len(rendered.pdf))
        email_delivery_create(
            kind=EmailDelivery.Kind.REPORT_READY,
            recipient=report.user.email,
            user=report.user,
            context={
                "report": report,
                "period": period,
                "attachment": attachment,
                "retention_days": settings.REPORT_RETENTION_DAYS,
            },
            attachment=attachment,
        )
    return True


def _attachment_of(report: Report, *, size: int) -> str:
    """The PDF goes with the email when it is small enough; a link to it otherwise."""
    if size > settings.REPORT_ATTACH_MAX_BYTES:
        return ""
    return str(report_file(report.pk).relative_to(settings.MEDIA_ROOT))


def report_fail(*, report_id: str, reason: str) -> None:
    Report.objects.filter(pk=report_id).exclude(status=Report.Status.READY).update(
        status=Report.Status.FAILED, error=reason[:2000]
    )


def reports_prune(*, now: datetime | None = None) -> int:
    """Delete reports older than REPORT_RETENTION_DAYS, their files first."""
    cutoff = (now or timezone.now()) - timedelta(days=settings.REPORT_RETENTION_DAYS)
    old = list(Report.objects.filter(created_at__lt=cutoff).values_list("pk", flat=True)[:1000])
    for report_id in old:
        report_files_delete(report_id)
    return Report.objects.filter(pk__in=old).delete()[0]
