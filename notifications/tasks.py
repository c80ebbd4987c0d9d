"""Notifications' tasks: thin wrappers owning limits, retries and failure handling (their queue
comes from CELERY_TASK_ROUTES, by name: `notifications`)."""

from celery import shared_task

from jobs.base import failed_for_good
from jobs.ratelimit import rate_limit_or_defer
from jobs.retry import RetryPolicy
from notifications import services


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
    retry_policy=RetryPolicy(max_retries=5),
    on_failure=_push_failed_for_good,
    # A push service answers within PUSH_TIMEOUTS (15 s at most).
    soft_time_limit=30,
    time_limit=45,
)
def send_push(self, push_delivery_id: int, platform: str) -> None:
    # Each platform's service has its limit, shared by every worker (JOBS_RATE_LIMITS).
    rate_limit_or_defer(self, provider=platform)
    services.push_delivery_send(delivery_id=push_delivery_id)
