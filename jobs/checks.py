"""System checks: settings that would quietly break the delivery guarantees fail loudly."""

from django.conf import settings
from django.core.checks import Error, register

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
    if settings.CELERY_TASK_TIME_LIMIT >= timeout:
        errors.append(
            Error(
                f"CELERY_TASK_TIME_LIMIT ({settings.CELERY_TASK_TIME_LIMIT}s) must be shorter than "
                f"CELERY_VISIBILITY_TIMEOUT ({timeout}s): a late-acked task still running would be "
                "handed to a second worker.",
                id="jobs.E002",
            )
        )
    return errors


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
