import uuid
from datetime import datetime, timedelta

from django.conf import settings
from django.db import models
from django.utils.timezone import now

from reports.periods import DAILY, MONTHLY, WEEKLY, Period


class Frequency(models.TextChoices):
    OFF = "off", "off"
    DAILY = DAILY, "daily"
    WEEKLY = WEEKLY, "weekly"
    MONTHLY = MONTHLY, "monthly"


# A report's length: a schedule's frequencies, without "off".
REPORT_FREQUENCIES = [choice for choice in Frequency.choices if choice[0] != Frequency.OFF]


class ReportSchedule(models.Model):
    """How often a person wants a report of their activity, and in which timezone their days
    begin. No row is the same as "off"."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="report_schedule"
    )
    frequency = models.CharField(max_length=10, choices=Frequency.choices, default=Frequency.OFF)
    timezone = models.CharField(max_length=64, default="UTC")
    # When the frequency or the timezone last changed: the schedule sends the reports of the
    # periods that end after it, not of one that ended before the person chose it.
    since = models.DateTimeField(default=now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [
            # The dispatcher's question: who is subscribed at this frequency, in id order?
            models.Index(fields=["frequency", "user"], name="reports_schedule_subscribed"),
        ]

    def __str__(self) -> str:
        return f"{self.frequency} in {self.timezone}"


def report_deadline() -> datetime:
    """When a report neither ready nor failed by then counts as stalled: the periodic sweep
    (reports.services.reports_stalled_sweep) queues its rendering again, or fails it."""
    return now() + timedelta(seconds=settings.REPORT_PROGRESS_DEADLINE_SECONDS)


class OfOnePeriod(models.Model):
    """A row about one period of one length in one timezone."""

    frequency = models.CharField(max_length=10, choices=REPORT_FREQUENCIES)
    timezone = models.CharField(max_length=64)
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()

    class Meta:
        abstract = True

    @property
    def period(self) -> Period:
        return Period(
            frequency=self.frequency,
            timezone=self.timezone,
            start=self.period_start,
            end=self.period_end,
        )


class Report(OfOnePeriod):
    """One report of one person's activity over one period: exactly one per person, length and
    period (a unique constraint, not a check), however often or concurrently it is asked for.

    The id is a random UUID: it appears in URLs, so it must not be guessable or countable.
    """

    class Status(models.TextChoices):
        QUEUED = "queued", "queued"
        RENDERING = "rendering", "rendering"
        READY = "ready", "ready"
        FAILED = "failed", "failed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="reports"
    )
    # Asked for by the person (POST /api/v1/reports), rather than sent by their schedule.
    on_demand = models.BooleanField(default=False)
    # When the person last asked for it to be made (made, or queued again after it failed): what
    # REPORT_REQUESTS_PER_DAY counts.
    requested_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    progress = models.PositiveSmallIntegerField(default=0)
    error = models.TextField(blank=True)
    pdf_bytes = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=now, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)
    ready_at = models.DateTimeField(null=True, blank=True)
    # Moved forward when it is queued and when a render starts; past it, a report still queued
    # or rendering has lost its message (a broker that lost it, a worker killed before Redis
    # recorded it as unacknowledged).
    deadline = models.DateTimeField(default=report_deadline)
    # Times the sweep queued its rendering again; past REPORT_MAX_RESUMES it fails it.
    resumes = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["-period_start", "-created_at"]
        constraints = [
            # With the timezone: two zones' periods can start at one instant and end at others
            # (Europe/Paris and Africa/Lagos on the day Paris moves its clocks).
            models.UniqueConstraint(
                fields=["user", "frequency", "timezone", "period_start"],
                name="reports_one_per_period",
            ),
        ]
        indexes = [
            models.Index(fields=["user", "-period_start"], name="reports_user_recent"),
            # The allowance's question: how many did this person ask for in the last day?
            models.Index(fields=["user", "requested_at"], name="reports_user_requested"),
            # The pruning's: which were made, or last changed unmade, before the cutoff?
            models.Index(fields=["ready_at"], name="reports_ready_at"),
            models.Index(
                fields=["updated_at"],
                condition=models.Q(ready_at__isnull=True),
                name="reports_unmade_updated",
            ),
            # The sweep's question: which unfinished reports are past their deadline?
            models.Index(
                fields=["deadline"],
                condition=models.Q(status__in=["queued", "rendering"]),
                name="reports_unfinished_due",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.frequency} report {self.pk} ({self.status})"


class ReportRun(OfOnePeriod):
    """One dispatch of one period to one group of subscribers (a frequency and a timezone): the
    unique key that makes a period's dispatch happen once, however many dispatchers run, and
    the record that a period was skipped (it ended longer than REPORT_CATCH_UP_HOURS before any
    dispatch saw it)."""

    skipped = models.BooleanField(default=False)
    batch = models.ForeignKey("jobs.Batch", null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(default=now)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["frequency", "timezone", "period_start"], name="reports_run_once"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.frequency} {self.period_start:%Y-%m-%d} in {self.timezone}"
