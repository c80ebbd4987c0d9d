"""Reports: a person's schedule, the dispatch that beat runs, and the rendering of one report.

- `report_schedule_set`: off, daily, weekly or monthly, in an IANA timezone.
- `reports_dispatch(at=)`: what the periodic job runs (and `manage.py reports_dispatch`). For
  each group of subscribers sharing a frequency and a timezone, each period of theirs that ended
  within REPORT_CATCH_UP_HOURS before `at` is dispatched once: a `ReportRun` row (unique per
  group and period) and a batch over the group's subscribers, in id-ordered chunks, in one
  transaction. Two dispatchers at once, a dispatcher run again, or one that died half-way make
  no second run: the run row's unique key decides. A period that ended longer ago than that
  without a run (beat was down for longer) is skipped and logged, once.
- `report_request`: a report on demand, of the person's last ended period or of the one holding
  a given day; asking again for the same period returns the same report (and queues a failed
  one again).
- `report_render`: one report to PDF, stored under MEDIA_ROOT/reports/, then its email.
- `reports_stalled_sweep`: queues again the reports whose message was lost; `reports_prune`
  deletes the old ones.

Exactly one report per (person, frequency, period): the batch's handler inserts with the
database's unique key, and only the insert that made the row enqueues its rendering.
"""

import logging
import os
import tempfile
from datetime import date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from accounts.models import EmailDelivery, User
from jobs.batches import batch_start
from jobs.brokers import queue_drained
from jobs.outbox import enqueue
from notifications.models import Kind
from notifications.services import NotificationEmail, notification_send
from reports import rendering
from reports.models import Frequency, Report, ReportRun, ReportSchedule, report_deadline
from reports.periods import (
    Period,
    period_containing,
    periods_ended,
    timezone_checked,
    timezone_names,
)
from reports.selectors import activity_in

logger = logging.getLogger(__name__)

DISPATCH_BATCH_KIND = "reports.dispatch"
# Subscribers per chunk of a dispatch: each is one insert and, for a new report, one outbox row;
# a chunk of 500 runs in well under a second.
DISPATCH_CHUNK = 500
# Reports the sweep and the pruning handle per query.
SWEEP_BATCH = 500
PRUNE_BATCH = 1000
# Batches of pruning per run: up to 50,000 reports an hour, more than a day's dispatches make
# for a service of that size, so a backlog (after a retention cut) shrinks run by run.
PRUNE_BATCHES_PER_RUN = 50
# Periods a dispatch records as missed, at most, when beat was down for long: the log says how
# long the gap was; a row for each of a year of days would say nothing more.
MISSED_RECORDED = 31
# The queue the renders wait in (CELERY_TASK_ROUTES: reports.*).
RENDER_QUEUE = "reports"
# A rendered PDF is read by the web server's user too (nginx, through X-Accel-Redirect), as the
# upload files are; mkstemp would make it the worker's alone.
PDF_FILE_MODE = 0o644


class ReportRefused(Exception):
    """A schedule or request that cannot be carried out; the message says why."""


class TooManyReportRequests(ReportRefused):
    """The person asked for REPORT_REQUESTS_PER_DAY new reports in the last 24 hours."""

    def __init__(self, wait_seconds: int) -> None:
        super().__init__(
            f"You asked for {settings.REPORT_REQUESTS_PER_DAY} reports in the last 24 hours; "
            "ask again later."
        )
        self.wait_seconds = wait_seconds


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
    with transaction.atomic():
        schedule = ReportSchedule.objects.select_for_update().filter(user=user).first()
        if schedule is None:
            return ReportSchedule.objects.create(
                user=user, frequency=frequency, timezone=timezone_name
            )
        if (schedule.frequency, schedule.timezone) != (frequency, timezone_name):
            # A new schedule: its first report is of the first period that ends from now on.
            schedule.frequency, schedule.timezone = frequency, timezone_name
            schedule.since = timezone.now()
            schedule.save()
    return schedule


# --- dispatch -------------------------------------------------------------------------------


def reports_dispatch(*, at: datetime | None = None, back_fill: bool = False) -> int:
    """Dispatch every subscriber group's periods that ended within REPORT_CATCH_UP_HOURS before
    `at` (now by default) and have no run yet; returns how many runs it started.

    `back_fill` (an operator's `reports_dispatch --at`) also dispatches the periods in that
    window that an earlier dispatch skipped, for having seen them too late."""
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
            started += _group_dispatch(
                frequency, timezone_name, at=at, catch_up=catch_up, back_fill=back_fill
            )
        except Exception:
            # One group that cannot be dispatched (a timezone this host's tz database lacks)
            # must not hold up the groups after it; it is logged, and tried again next run.
            logger.exception("reports: %s reports in %s not dispatched", frequency, timezone_name)
    return started


def _group_dispatch(
    frequency: str, timezone_name: str, *, at: datetime, catch_up: timedelta, back_fill: bool
) -> int:
    recent = periods_ended(
        frequency=frequency, timezone=timezone_name, after=at - catch_up, until=at
    )
    _missed_record(frequency, timezone_name, before=at - catch_up)
    return sum(
        _run_create(period, skipped=False) or (back_fill and _skipped_run_dispatch(period))
        for period in recent
    )


def _missed_record(frequency: str, timezone_name: str, *, before: datetime) -> None:
    """Record as skipped, and log, the group's periods that ended before the catch-up window
    with no run: beat missed them for longer than the catch-up allows. Those since the group's
    last run (the last MISSED_RECORDED of them), or, for a group that never had one, the period
    just before the window."""
    last_end = (
        ReportRun.objects.filter(frequency=frequency, timezone=timezone_name)
        .order_by("-period_start")
        .values_list("period_end", flat=True)
        .first()
    )
    if last_end is None:
        missed = [period_containing(before, frequency=frequency, timezone=timezone_name).before()]
    else:
        # Bounded below, so that a group whose last run is years old walks a month of periods.
        since = max(last_end, before - timedelta(days=31 * MISSED_RECORDED))
        missed = periods_ended(
            frequency=frequency, timezone=timezone_name, after=since, until=before
        )[-MISSED_RECORDED:]
    for period in missed:
        _run_create(period, skipped=True)


def _run_create(period: Period, *, skipped: bool) -> bool:
    """Create the group's run for the period, and start its batch unless skipped; False if the
    run exists already (another dispatcher, an earlier run of this one)."""
    if ReportRun.objects.filter(
        frequency=period.frequency, timezone=period.timezone, period_start=period.start
    ).exists():
        # Most runs find their periods dispatched: asked first, so that the unique key below
        # decides only races, and PostgreSQL does not log a refused insert every 15 minutes.
        return False
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
            _run_batch_start(run)
    except IntegrityError:
        return False
    return True


def _skipped_run_dispatch(period: Period) -> bool:
    """Dispatch the period whose run was skipped; False if it was not (or is dispatched by
    another back-fill already): the update that clears `skipped` is the claim."""
    with transaction.atomic():
        run = (
            ReportRun.objects.select_for_update()
            .filter(
                frequency=period.frequency,
                timezone=period.timezone,
                period_start=period.start,
                skipped=True,
            )
            .first()
        )
        if run is None:
            return False
        ReportRun.objects.filter(pk=run.pk).update(skipped=False)
        logger.info(
            "reports: %s period %s to %s in %s back-filled",
            period.frequency,
            period.start.isoformat(),
            period.end.isoformat(),
            period.timezone,
        )
        _run_batch_start(run)
    return True


def _run_batch_start(run: ReportRun) -> None:
    """Start the batch over the run's group of subscribers, in the caller's transaction."""
    from reports import tasks  # noqa: F401 (declares the batch's handler; it imports this module)

    subscribers = (
        _subscribed_to(run)
        .order_by("user_id")
        .values_list("user_id", flat=True)
        .iterator(chunk_size=DISPATCH_CHUNK)
    )
    batch = batch_start(
        kind=DISPATCH_BATCH_KIND,
        items=({"run_id": run.pk, "user_id": user_id} for user_id in subscribers),
        chunk_size=DISPATCH_CHUNK,
    )
    ReportRun.objects.filter(pk=run.pk).update(batch=batch)


def _subscribed_to(run: ReportRun):
    """The schedules the run's period is for: of its frequency and timezone, chosen before the
    period ended, of accounts that can still log in (not being erased)."""
    return ReportSchedule.objects.filter(
        frequency=run.frequency,
        timezone=run.timezone,
        since__lt=run.period_end,
        user__is_active=True,
    )


def reports_of_run_create(*, run_id: int, user_ids: list[int]) -> int:
    """A dispatch chunk: the run's period's report for each of these subscribers that has none,
    each rendering enqueued with the insert that made its row. Returns how many it made.

    The chunk's people were subscribed when the run started; asked again here, since a person
    may have changed their schedule, or begun their account's erasure, since."""
    run = ReportRun.objects.get(pk=run_id)
    period = run.period
    still = _subscribed_to(run).filter(user_id__in=user_ids).values_list("user_id", flat=True)
    made = 0
    for user_id in sorted(still):
        made += _report_create(user_id=user_id, period=period, on_demand=False) is not None
    return made


def _report_create(*, user_id: int, period: Period, on_demand: bool) -> Report | None:
    """The report, queued with its rendering; None if one exists for this period already, or
    the account is being erased."""
    from reports import tasks  # the task module imports this one

    try:
        with transaction.atomic():
            if not _active_account_locked(user_id):
                return None
            report = Report.objects.create(
                user_id=user_id,
                frequency=period.frequency,
                timezone=period.timezone,
                period_start=period.start,
                period_end=period.end,
                on_demand=on_demand,
                requested_at=timezone.now() if on_demand else None,
            )
            enqueue(tasks.render_report, report_id=str(report.pk))
    except IntegrityError:
        return None
    return report


def _active_account_locked(user_id: int) -> bool:
    """Whether the account can still log in, its row locked until the caller's transaction
    ends. An erasure's start locks it too, then turns it inactive and cancels its reports: a
    report is made, or made ready, before that, or not at all."""
    # FOR NO KEY UPDATE: it waits for the erasure's FOR UPDATE, not for rows that merely refer
    # to the account.
    return (
        User.objects.select_for_update(no_key=True)
        .filter(pk=user_id, is_active=True)
        .values_list("pk", flat=True)
        .first()
        is not None
    )


def report_request(*, user: User, frequency: str, day: date | None = None) -> tuple[Report, bool]:
    """A report of the period of this frequency holding `day` (by default the last one that
    ended), in the person's schedule's timezone (UTC without one). Returns it and whether it was
    made now: asking again for the same period returns the one there is, and queues it again if
    it failed."""
    if frequency not in Frequency.values or frequency == Frequency.OFF:
        raise ReportRefused("frequency must be daily, weekly or monthly.")
    zone = report_schedule_of(user=user).timezone
    if zone not in timezone_names():
        # Chosen when this host's tz database had it; a server on an older one lacks it.
        raise ReportRefused(f"Your timezone {zone!r} is not known here; choose it again.")
    now = timezone.now()
    if day is None:
        period = period_containing(now, frequency=frequency, timezone=zone).before()
    else:
        period = _period_asked(user, day, frequency=frequency, timezone_name=zone, now=now)
    the_period = {"user": user, "frequency": frequency, "timezone": zone}
    with transaction.atomic():
        # The account's row, locked: two requests at once count one after the other.
        if not _active_account_locked(user.pk):
            raise ReportRefused("This account is being deleted.")
        existing = Report.objects.filter(**the_period, period_start=period.start).first()
        if existing is not None and existing.status != Report.Status.FAILED:
            return existing, False
        _request_allowance_check(user, now=now)
        if existing is not None:
            # Made again from scratch, and counted as asked for: a report that keeps failing
            # costs a render each time.
            _report_queue_again(
                existing.pk, resumes_now=0, status=Report.Status.FAILED, requested_at=now
            )
            existing.refresh_from_db()
            return existing, False
        made = _report_create(user_id=user.pk, period=period, on_demand=True)
    if made is not None:
        return made, True
    # Made by the schedule's dispatch at the same moment.
    return Report.objects.get(**the_period, period_start=period.start), False


def _period_asked(
    user: User, day: date, *, frequency: str, timezone_name: str, now: datetime
) -> Period:
    zone = ZoneInfo(timezone_name)
    if day > now.astimezone(zone).date() or day < user.date_joined.astimezone(zone).date():
        # Before the account there is nothing to report (and far-off years would overflow).
        raise ReportRefused("Give a day between the day you signed up and today.")
    period = period_containing(
        datetime.combine(day, time(12), tzinfo=zone), frequency=frequency, timezone=timezone_name
    )
    if period.end > now:
        raise ReportRefused(
            f"That {frequency} period has not ended yet; it ends on {period.last_day}."
        )
    return period


def _request_allowance_check(user: User, *, now: datetime) -> None:
    window = timedelta(days=1)
    recent = list(
        Report.objects.filter(user=user, requested_at__gt=now - window)
        .order_by("-requested_at")
        .values_list("requested_at", flat=True)[: settings.REPORT_REQUESTS_PER_DAY]
    )
    if len(recent) >= settings.REPORT_REQUESTS_PER_DAY:
        # Free again when the oldest of those leaves the window.
        free_at = recent[-1] + window
        raise TooManyReportRequests(wait_seconds=int((free_at - now).total_seconds()) + 1)


def _report_queue_again(
    report_id, *, resumes_now: int, requested_at: datetime | None = None, **still
) -> bool:
    """Queue the report's rendering again if it still matches `still` (its status, say);
    False if it moved on meanwhile. `requested_at`: a person asked for it."""
    from reports import tasks  # the task module imports this one

    asked = {"requested_at": requested_at} if requested_at else {}
    with transaction.atomic():
        if not Report.objects.filter(pk=report_id, **still).update(
            status=Report.Status.QUEUED,
            progress=0,
            error="",
            resumes=resumes_now,
            deadline=report_deadline(),
            updated_at=timezone.now(),
            **asked,
        ):
            return False
        enqueue(tasks.render_report, report_id=str(report_id))
    return True


# --- rendering ------------------------------------------------------------------------------


def report_file(report_id) -> Path:
    return Path(settings.MEDIA_ROOT) / "reports" / f"{report_id}.pdf"


def report_files_delete(report_id) -> None:
    """The report's PDF, and what a render cut short left of one (`<id>.*.partial`)."""
    path = report_file(report_id)
    path.unlink(missing_ok=True)
    for partial in path.parent.glob(f"{report_id}.*.partial"):
        partial.unlink(missing_ok=True)


# What a render may start from: queued; rendering (a delivery of it died mid-way, and this is
# its message again, redelivered, or queued again by the sweep); failed (a person re-drove its
# dead letter). Two deliveries at once both render; only one makes it ready and emails.
RENDERABLE = [Report.Status.QUEUED, Report.Status.RENDERING, Report.Status.FAILED]


def report_render(*, report_id: str) -> bool:
    """Render the report to its PDF and send its email; True once it is ready. A report ready
    already, or gone (erased, pruned), is left as it is: a delivery run twice renders once and
    emails once."""
    report = (
        Report.objects.filter(pk=report_id, status__in=RENDERABLE, user__is_active=True)
        .select_related("user")
        .first()
    )
    if report is None:
        return False
    if not Report.objects.filter(pk=report.pk, status__in=RENDERABLE).update(
        status=Report.Status.RENDERING,
        progress=10,
        error="",
        deadline=report_deadline(),
        updated_at=timezone.now(),
    ):
        return False  # finished by another delivery since it was read
    period = report.period
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
    os.fchmod(descriptor, PDF_FILE_MODE)
    with os.fdopen(descriptor, "wb") as file:
        file.write(rendered.pdf)
    os.replace(partial, path)
    with transaction.atomic():
        made_ready = _active_account_locked(report.user_id) and Report.objects.filter(
            pk=report.pk, status=Report.Status.RENDERING
        ).update(
            status=Report.Status.READY,
            progress=100,
            pdf_bytes=len(rendered.pdf),
            ready_at=timezone.now(),
        )
        if not made_ready:
            if not Report.objects.filter(pk=report.pk, status=Report.Status.READY).exists():
                # Cancelled (its account's erasure began), failed or erased while it rendered:
                # nobody will record this file, and an erasure looked for it before it was
                # written, so it goes here.
                path.unlink(missing_ok=True)
            return False
        attachment = _attachment_of(report, size=len(rendered.pdf))
        notification_send(
            user=report.user,
            kind=Kind.REPORT_READY,
            title=f"Your {report.frequency} activity report is ready",
            body=f"{_days_of(period)}, in {period.timezone}.",
            data={"report_id": str(report.pk)},
            email=NotificationEmail(
                kind=EmailDelivery.Kind.REPORT_READY,
                context={
                    "report": report,
                    "period": period,
                    "attachment": attachment,
                    "retention_days": settings.REPORT_RETENTION_DAYS,
                },
                attachment=attachment,
            ),
        )
    # What renders of it cut short left (a killed process): any render still running finds the
    # report ready when it tries to record it.
    for leftover in path.parent.glob(f"{report.pk}.*.partial"):
        leftover.unlink(missing_ok=True)
    return True


def _days_of(period: Period) -> str:
    if period.first_day == period.last_day:
        return f"{period.first_day:%d %B %Y}"
    return f"{period.first_day:%d %B %Y} to {period.last_day:%d %B %Y}"


def _attachment_of(report: Report, *, size: int) -> str:
    """The PDF goes with the email when it is small enough; a link to it otherwise."""
    if size > settings.REPORT_ATTACH_MAX_BYTES:
        return ""
    return str(report_file(report.pk).relative_to(settings.MEDIA_ROOT))


def reports_of_account_cancel(*, user_id: int) -> int:
    """As an account's erasure starts (its row locked): fail its reports still to be made. A
    render of one running meanwhile finds it failed, and removes what it wrote. Returns how
    many."""
    return Report.objects.filter(
        user_id=user_id, status__in=[Report.Status.QUEUED, Report.Status.RENDERING]
    ).update(status=Report.Status.FAILED, error="The account is being deleted.")


def report_fail(*, report_id: str, reason: str) -> None:
    Report.objects.filter(pk=report_id).exclude(status=Report.Status.READY).update(
        status=Report.Status.FAILED, error=reason[:2000]
    )


def reports_stalled(*, now: datetime | None = None) -> QuerySet[Report]:
    """Reports still queued or rendering past their deadline: what the sweep acts on, and
    /metrics counts."""
    return Report.objects.filter(
        status__in=[Report.Status.QUEUED, Report.Status.RENDERING],
        deadline__lt=now or timezone.now(),
    )


def reports_stalled_sweep(*, now: datetime | None = None) -> int:
    """Queue again the reports still queued or rendering past their deadline, oldest first (the
    periodic `reports.sweep`), or fail those queued again REPORT_MAX_RESUMES times already.
    Returns how many it queued again or failed."""
    now = now or timezone.now()
    stalled = list(
        reports_stalled(now=now)
        .order_by("deadline")
        .values_list("pk", "status", "resumes")[:SWEEP_BATCH]
    )
    drained = None
    acted = 0
    for report_id, status, resumes in stalled:
        # Acted on only as it was read: a render that started since has moved its deadline on.
        still = {"status": status, "resumes": resumes, "deadline__lt": now}
        if status == Report.Status.QUEUED:
            if drained is None:
                drained = queue_drained(RENDER_QUEUE)
            if not drained:
                # Its message may be one of those still waiting (a large dispatch, a queue
                # without a worker): looked at again later, with nothing counted against it.
                Report.objects.filter(pk=report_id, **still).update(deadline=report_deadline())
                continue
        if resumes < settings.REPORT_MAX_RESUMES:
            if _report_queue_again(report_id, resumes_now=resumes + 1, **still):
                logger.warning("report %s stalled, queued again (%d)", report_id, resumes + 1)
                acted += 1
        elif Report.objects.filter(pk=report_id, **still).update(
            status=Report.Status.FAILED,
            error="It could not be made; ask for it again, and if it fails again, contact support.",
        ):
            logger.warning("report %s stalled after %d resumes, failed", report_id, resumes)
            acted += 1
    return acted


def reports_prune(*, now: datetime | None = None) -> int:
    """Delete reports made more than REPORT_RETENTION_DAYS ago (and those never made, last
    changed as long ago), their files first, and the dispatch records as old; returns how many
    reports it deleted."""
    cutoff = (now or timezone.now()) - timedelta(days=settings.REPORT_RETENTION_DAYS)
    old_ones = Report.objects.filter(
        Q(ready_at__lt=cutoff) | Q(ready_at__isnull=True, updated_at__lt=cutoff)
    ).order_by()  # in no order: each slice walks the indexes, and sorts nothing
    deleted = 0
    for _ in range(PRUNE_BATCHES_PER_RUN):
        old = list(old_ones.values_list("pk", flat=True)[:PRUNE_BATCH])
        if not old:
            break
        for report_id in old:
            report_files_delete(report_id)
        deleted += Report.objects.filter(pk__in=old).delete()[0]
    ReportRun.objects.filter(created_at__lt=cutoff).delete()
    return deleted
