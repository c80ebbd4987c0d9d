"""Notifications' tasks: thin wrappers owning limits, retries and failure handling (their queue
comes from CELERY_TASK_ROUTES, by name: `notifications`, and `maintenance` for the periodic
ones)."""

from datetime import timedelta

from celery import shared_task
from celery.schedules import crontab

from jobs.base import failed_for_good
from jobs.batches import batch_handler, batch_items_forget
from jobs.models import Batch
from jobs.periodic import PeriodicJob, periodic_job_register
from jobs.ratelimit import rate_limit_or_defer
from jobs.retry import PROVIDER_RETRIES, RetryPolicy
from notifications import announcements, services


def _push_failed_for_good(task, error, task_id, args, kwargs, einfo) -> None:
    if failed_for_good(task, error):
        services.push_delivery_give_up(
            delivery_id=kwargs["push_delivery_id"], reason=f"{type(error).__name__}: {error}"
        )


@shared_task(
    name="notifications.send_push",
    bind=True,
    idempotent=True,
    # The providers classify every answer (notifications/providers.py); a busy service says
    # when to come back, and is not asked sooner.
    retry_policy=RetryPolicy(max_retries=PROVIDER_RETRIES),
    on_failure=_push_failed_for_good,
    # Each exchange ends within PUSH_TIMEOUTS (15 s at most), and a send makes four at most:
    # FCM's token exchange and message, both once more when the access token had expired.
    soft_time_limit=75,
    time_limit=90,
)
def send_push(self, push_delivery_id: int, platform: str) -> None:
    # Each platform's service has its limit, shared by every worker (JOBS_RATE_LIMITS).
    rate_limit_or_defer(self, provider=platform)
    services.push_delivery_send(delivery_id=push_delivery_id)


@shared_task(name="notifications.announcement_delivered", idempotent=True)
def announcement_delivered(batch_id: int) -> None:
    # Every chunk succeeded: its items, the ids of everyone it went to, are kept no longer.
    batch_items_forget(batch_id=batch_id)


@batch_handler(announcements.ANNOUNCEMENT_BATCH_KIND, queue="notifications")
def announcement_deliver(items: list[dict], batch: Batch) -> None:
    announcements.announcement_deliver(
        batch_id=batch.pk, user_ids=[item["user_id"] for item in items]
    )


@shared_task(name="notifications.maintenance_sweep", idempotent=True)
def maintenance_sweep() -> int:
    return services.push_deliveries_sweep()


@shared_task(name="notifications.maintenance_prune", idempotent=True)
def maintenance_prune() -> int:
    return services.notifications_prune()


periodic_job_register(
    PeriodicJob(
        name="notifications.sweep",
        task=maintenance_sweep.name,
        # Every ten minutes: a delivery counts as lost after hours (push_lost_after), and a run
        # with nothing to do is two queries on a partial index of the queued deliveries.
        schedule=timedelta(minutes=10),
        expires_seconds=9 * 60,
    )
)
periodic_job_register(
    PeriodicJob(
        name="notifications.prune",
        task=maintenance_prune.name,
        # Hourly, at minute 47 (off the full hour when everyone's cron jobs start): each run
        # deletes a bounded number, so that it stays short, and 24 of them a day keep up with
        # an announcement to every account.
        schedule=crontab(minute=47),
        expires_seconds=50 * 60,
    )
)
