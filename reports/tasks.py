"""Reports' tasks: thin wrappers owning limits, retries and failure handling (their queue comes
from CELERY_TASK_ROUTES, by name: `reports`)."""

from datetime import timedelta

from celery import shared_task
from celery.schedules import crontab

from jobs.base import failed_for_good
from jobs.batches import batch_handler
from jobs.models import Batch
from jobs.periodic import PeriodicJob, periodic_job_register
from jobs.retry import RetryPolicy
from reports import rendering, services


def _fail_report(task, error, task_id, args, kwargs, einfo) -> None:
    report_id = kwargs.get("report_id")
    if report_id is not None and failed_for_good(task, error):
        services.report_fail(report_id=report_id, reason="The report could not be made.")


@shared_task(
    name="reports.render_report",
    idempotent=True,
    # Disk hiccups are worth retrying; a page that cannot be laid out is not.
    retry_policy=RetryPolicy(transient=(OSError,), max_retries=3),
    on_failure=_fail_report,
    # A month of a busy account renders in a few seconds; a minute means something is wrong.
    soft_time_limit=60,
    time_limit=90,
)
def render_report(report_id: str) -> None:
    with rendering.memory_capped():
        services.report_render(report_id=report_id)


@batch_handler(services.DISPATCH_BATCH_KIND, queue="reports")
def reports_of_run_create(items: list[dict], batch: Batch) -> None:
    for run_id in {item["run_id"] for item in items}:
        services.reports_of_run_create(
            run_id=run_id, user_ids=[item["user_id"] for item in items if item["run_id"] == run_id]
        )


@shared_task(name="reports.maintenance_dispatch", idempotent=True)
def maintenance_dispatch() -> int:
    return services.reports_dispatch()


@shared_task(name="reports.maintenance_sweep", idempotent=True)
def maintenance_sweep() -> int:
    return services.reports_stalled_sweep()


@shared_task(name="reports.maintenance_prune", idempotent=True)
def maintenance_prune() -> int:
    return services.reports_prune()


periodic_job_register(
    PeriodicJob(
        name="reports.dispatch",
        task=maintenance_dispatch.name,
        # Every 15 minutes: periods end at local midnights, and some timezones sit a quarter or
        # half an hour off the hour (Asia/Kathmandu, Asia/Kolkata); a report comes within 15
        # minutes of its period's end. A run with nothing due reads the distinct groups only.
        schedule=crontab(minute="*/15"),
        # A run still queued when the next is due would only repeat it.
        expires_seconds=14 * 60,
    )
)
periodic_job_register(
    PeriodicJob(
        name="reports.sweep",
        task=maintenance_sweep.name,
        # Every five minutes: a deadline is an hour away, and a run with nothing stalled is one
        # query on a partial index of the unfinished reports.
        schedule=timedelta(minutes=5),
        expires_seconds=4 * 60,
    )
)
periodic_job_register(
    PeriodicJob(
        name="reports.prune",
        task=maintenance_prune.name,
        schedule=timedelta(hours=1),
        expires_seconds=50 * 60,
    )
)
