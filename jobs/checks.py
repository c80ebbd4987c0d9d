"""System checks: settings that would quietly break the delivery guarantees fail loudly."""

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register

from jobs.ratelimit import parse_rate


@register()
def visibility_timeout_outlasts_countdowns(app_configs, **kwargs) -> list[Error]:
    # Redis hands an unacknowledged message to another worker once the visibility timeout
    # passes. A countdown message waits unacknowledged in the worker, so any countdown longer
    # than the timeout is delivered again, and again (celery/celery#4400).
    timeout = settings.CELERY_VISIBILITY_TIMEOUT
    errors = []
    for name in ("JOBS_RETRY_MAX_SECONDS", "JOBS_MAX_BROKER_COUNTDOWN_SECONDS"):
        if getattr(settings, name) >= timeout:
            errors.append(
                Error(
                    f"{name} ({getattr(settings, name):g}s) must be shorter than "
                    f"CELERY_VISIBILITY_TIMEOUT ({timeout}s), or delayed messages run repeatedly.",
                    id="jobs.E001",
                )
            )
    for name, limit in _time_limits():
        if limit >= timeout:
            errors.append(
                Error(
                    f"{name}: time limit {limit:g}s must be shorter than CELERY_VISIBILITY_TIMEOUT "
                    f"({timeout}s): a late-acked task still running would be handed to a second "
                    "worker.",
                    id="jobs.E002",
                )
            )
    return errors


@register()
def rabbitmq_consumer_timeout_outlasts_held_deliveries(app_configs, **kwargs) -> list[Error]:
    # RabbitMQ cancels a consumer holding a delivery unacknowledged past its consumer_timeout,
    # and the task runs a second time elsewhere. With late acks a delivery is held while its task
    # runs, and before that while it waits prefetched behind another task: two time limits.
    from jobs.brokers import broker_is_rabbitmq

    if not broker_is_rabbitmq():
        return []
    timeout = settings.RABBITMQ_CONSUMER_TIMEOUT_SECONDS
    return [
        Error(
            f"{name}: twice its time limit ({2 * limit:g}s) must be shorter than "
            f"RABBITMQ_CONSUMER_TIMEOUT_SECONDS ({timeout}s, the server's consumer_timeout): "
            "RabbitMQ would hand a task still running or waiting to a second worker.",
            id="jobs.E005",
        )
        for name, limit in _time_limits()
        if 2 * limit >= timeout
    ]


@register()
def platform_dead_letters_a_poison_message_before_rabbitmq(app_configs, **kwargs) -> list[Error]:
    # Past its delivery limit RabbitMQ moves a message aside with nothing but its body; the
    # platform's own dead letter says which task killed its worker, and must come first.
    from jobs.brokers import BROKER_DELIVERY_LIMIT, BROKER_DELIVERY_LIMIT_MARGIN, broker_is_rabbitmq

    if (
        not broker_is_rabbitmq()
        or settings.JOBS_MAX_DELIVERIES + BROKER_DELIVERY_LIMIT_MARGIN <= BROKER_DELIVERY_LIMIT
    ):
        return []
    most = BROKER_DELIVERY_LIMIT - BROKER_DELIVERY_LIMIT_MARGIN
    return [
        Error(
            f"JOBS_MAX_DELIVERIES ({settings.JOBS_MAX_DELIVERIES}) must be at most {most}: "
            f"RabbitMQ's quorum queues dead-letter a message after {BROKER_DELIVERY_LIMIT} "
            "returns, before the platform could record it (jobs/brokers.py).",
            id="jobs.E006",
        )
    ]


def _project_tasks() -> dict:
    """Every registered task: each app's tasks.py is imported at start-up (jobs/apps.py)."""
    from config.celery import app

    return dict(app.tasks)


def _time_limits() -> list[tuple[str, float]]:
    """The default hard time limit, and every task's own where it sets one."""
    limits = [("CELERY_TASK_TIME_LIMIT", settings.CELERY_TASK_TIME_LIMIT)]
    for name, task in sorted(_project_tasks().items()):
        # Celery copies the default into every task that sets none: report only real overrides.
        own = getattr(task, "time_limit", None)
        if own and own != settings.CELERY_TASK_TIME_LIMIT:
            limits.append((name, own))
    return limits


@register()
def rate_limits_parse(app_configs, **kwargs) -> list[Error]:
    # A malformed limit would otherwise surface only in a worker, when a task first calls that
    # provider: as a permanent error, every such task dead-lettered.
    errors = []
    for provider, rate in settings.JOBS_RATE_LIMITS.items():
        try:
            parse_rate(rate)
        except ValueError as error:
            errors.append(Error(f"JOBS_RATE_LIMITS[{provider!r}]: {error}", id="jobs.E003"))
    return errors


@register()
def queues_come_from_routes(app_configs, **kwargs) -> list[Error]:
    # A queue in a task's decorator silently wins over CELERY_TASK_ROUTES: the routes would say
    # one thing and the messages do another. Queues are declared in one place, the routes.
    return [
        Error(
            f"{name}: declares queue {task.queue!r}; route it in CELERY_TASK_ROUTES instead",
            id="jobs.E004",
        )
        for name, task in sorted(_project_tasks().items())
        if getattr(task, "queue", None)
    ]


@register(Tags.security, deploy=True)
def metrics_need_a_token(app_configs, **kwargs) -> list[Warning]:
    if settings.METRICS_BEARER_TOKEN:
        return []
    return [
        Warning(
            "METRICS_BEARER_TOKEN is empty: anyone can read /metrics (queue, task and worker "
            "names, backlogs)",
            hint="Set it, and give Prometheus the same token (bearer_token in its scrape job).",
            id="jobs.W001",
        )
    ]
