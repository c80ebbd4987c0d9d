"""Periodic work declared in code and synced into django-celery-beat's schedule.

Each app registers its periodic jobs at the bottom of its tasks.py, beside the tasks they run:

    periodic_job_register(PeriodicJob(name="reports.weekly", task="reports.send_weekly",
                                      schedule=crontab(minute=0, hour=6, day_of_week=1),
                                      expires_seconds=3600))

`manage.py sync_periodic_tasks` (run after every `migrate`) writes them into the tables beat
reads. The rows it owns carry NAME_PREFIX: it creates and updates them, and disables (never
deletes) those whose job left the code. Rows an operator made in the admin are never touched.
"""

import json
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta

from celery.schedules import crontab
from django.conf import settings
from django.db import transaction
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

from config.celery import app

logger = logging.getLogger(__name__)

# Marks the rows the sync owns, visibly in the admin's list, so that it can disable the ones whose
# job was removed from the code without ever touching a row an operator created by hand.
NAME_PREFIX = "code:"
DESCRIPTION = (
    "Declared in code and written by `manage.py sync_periodic_tasks`: edits made here are "
    "overwritten at the next deploy; change the code instead."
)
# Largest unit first, so the admin says "every 1 day" rather than "every 86400 seconds".
_INTERVAL_UNITS = (
    (IntervalSchedule.DAYS, 86_400),
    (IntervalSchedule.HOURS, 3_600),
    (IntervalSchedule.MINUTES, 60),
    (IntervalSchedule.SECONDS, 1),
)


@dataclass(frozen=True)
class PeriodicJob:
    """One task beat sends on a schedule.

    `expires_seconds` is required: a message still queued after it (workers down, a backlog) is
    dropped instead of running late, and the next run does the work on fresh data. It is rounded
    up to whole seconds, the unit django-celery-beat stores.
    """

    name: str
    task: str
    schedule: timedelta | crontab
    expires_seconds: float
    queue: str | None = None
    kwargs: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (
            not isinstance(self.expires_seconds, int | float)
            or not 0 < self.expires_seconds < math.inf
        ):
            raise ValueError(f"periodic job {self.name!r} needs an expiry: finite seconds above 0")
        if isinstance(self.schedule, timedelta):
            seconds = self.schedule.total_seconds()
            if seconds < 1 or seconds != int(seconds):
                raise ValueError(f"periodic job {self.name!r}: an interval is whole seconds, >= 1")
        elif not isinstance(self.schedule, crontab):
            raise TypeError(f"periodic job {self.name!r}: schedule is a timedelta or a crontab")
        if self.queue is not None and self.queue not in settings.JOB_QUEUES:
            raise ValueError(f"periodic job {self.name!r}: no queue {self.queue!r}")
        json.dumps(self.kwargs)  # raises TypeError now rather than at the first send
        name_length = PeriodicTask._meta.get_field("name").max_length
        if len(NAME_PREFIX + self.name) > name_length:
            raise ValueError(f"periodic job {self.name!r}: name too long for django-celery-beat")


@dataclass(frozen=True)
class PeriodicSyncReport:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    disabled: int = 0


_registry: dict[str, PeriodicJob] = {}


def periodic_job_register(job: PeriodicJob, /) -> PeriodicJob:
    """Declare `job`; the next sync writes it. A name registered twice is a mistake and raises."""
    if job.name in _registry:
        raise ValueError(f"periodic job {job.name!r} is registered twice")
    _registry[job.name] = job
    return job


def periodic_jobs_sync(*, jobs: Iterable[PeriodicJob] | None = None) -> PeriodicSyncReport:
    """Make the code-owned rows of beat's schedule match `jobs`, in one transaction.

    `jobs` is the complete set (by default every registered job, after importing every app's
    tasks module so that none is missing): an owned row without a job is disabled. Running it
    again changes nothing, so beat is not told to reload its schedule.
    """
    if jobs is None:
        app.loader.import_default_modules()
        jobs = _registry.values()
    jobs = list(jobs)
    unknown = sorted({job.task for job in jobs} - set(app.tasks))
    if unknown:
        # A typo would have beat send messages that no worker can run.
        raise ValueError(f"periodic jobs name tasks that do not exist: {', '.join(unknown)}")

    created = updated = unchanged = disabled = 0
    with transaction.atomic():
        owned = {
            row.name: row
            for row in PeriodicTask.objects.filter(name__startswith=NAME_PREFIX)
            # SQLite's LIKE ignores case: "Code:..." typed in the admin is not ours.
            if row.name.startswith(NAME_PREFIX)
        }
        for job in jobs:
            name = NAME_PREFIX + job.name
            wanted = _row_fields(job)
            row = owned.pop(name, None)
            if row is None:
                PeriodicTask.objects.create(name=name, **wanted)
                logger.info("periodic task %s created", name)
                created += 1
            elif all(getattr(row, column) == value for column, value in wanted.items()):
                unchanged += 1
            else:
                for column, value in wanted.items():
                    setattr(row, column, value)
                row.save()
                logger.info("periodic task %s updated", name)
                updated += 1
        for row in owned.values():
            if row.enabled:
                row.enabled = False
                row.save()
                logger.info("periodic task %s disabled: no longer declared in code", row.name)
                disabled += 1
    return PeriodicSyncReport(
        created=created, updated=updated, unchanged=unchanged, disabled=disabled
    )


def _row_fields(job: PeriodicJob) -> dict:
    """Every column that decides what beat sends; an owned row is reset to exactly this."""
    interval = crontab_row = None
    if isinstance(job.schedule, timedelta):
        interval = _interval_row(job.schedule)
    else:
        crontab_row = CrontabSchedule.from_schedule(job.schedule)  # an existing row, or unsaved
        if crontab_row.pk is None:
            crontab_row.save()
    return {
        "task": job.task,
        "interval_id": interval.pk if interval else None,
        "crontab_id": crontab_row.pk if crontab_row else None,
        "solar_id": None,
        "clocked_id": None,
        "args": "[]",
        "kwargs": json.dumps(job.kwargs, sort_keys=True),
        "queue": job.queue,
        "exchange": None,
        "routing_key": None,
        "headers": "{}",
        "priority": None,
        "expires": None,
        "expire_seconds": math.ceil(job.expires_seconds),
        "one_off": False,
        "start_time": None,
        "enabled": True,
        "description": DESCRIPTION,
    }


def _interval_row(every: timedelta) -> IntervalSchedule:
    seconds = int(every.total_seconds())
    count, period = next(
        (seconds // size, period) for period, size in _INTERVAL_UNITS if seconds % size == 0
    )
    # filter().first(), not get_or_create(): the admin lets operators create duplicates.
    existing = IntervalSchedule.objects.filter(every=count, period=period).order_by("pk").first()
    return existing or IntervalSchedule.objects.create(every=count, period=period)
