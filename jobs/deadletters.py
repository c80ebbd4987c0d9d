"""Dead letters: tasks that will not succeed by themselves, kept for a person to act on."""

import logging
import traceback as traceback_module
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from config.celery import app
from jobs.models import DeadLetter, OutboxMessage
from jobs.outbox import (
    enqueue,
    ordered_message_discard,
    ordered_message_redrive,
    task_kwargs,
)
from jobs.selectors import ordered_message_of_task

logger = logging.getLogger(__name__)


def dead_letter_record(
    *,
    task_name: str,
    task_id: str,
    args: list | tuple,
    kwargs: dict[str, Any],
    queue: str,
    error: BaseException,
    attempts: int,
) -> DeadLetter:
    """Record (or update, for a task id seen before) a task that failed for good."""
    now = timezone.now()
    formatted = "".join(traceback_module.format_exception(error))
    details = {
        "task_name": task_name,
        "args": list(args),
        "kwargs": kwargs,
        "queue": queue,
        "exception_class": f"{type(error).__module__}.{type(error).__qualname__}",
        "exception_message": str(error)[:5000],
        "traceback": formatted[-20000:],
        "attempts": attempts,
        "last_failed_at": now,
    }
    # The same task id can fail again (its message redelivered, or published twice by the
    # relay): one row, updated. A letter someone already re-drove or discarded keeps that
    # status: a decision is taken once, and the same failure does not ask for it again.
    letter, _ = DeadLetter.objects.update_or_create(
        task_id=task_id,
        defaults=details,
        create_defaults={**details, "first_failed_at": now, "status": DeadLetter.Status.DEAD},
    )
    logger.error(
        "dead letter %s: task=%s id=%s attempts=%d error=%s",
        letter.pk, task_name, task_id, attempts, letter.exception_class,
    )  # fmt: skip
    return letter


def dead_letter_redrive(*, dead_letter_id: int, by: str = "") -> OutboxMessage:
    """Run the task again with its original arguments, through the outbox (so a re-drive
    during a broker outage is not lost either). Recorded on the dead letter.

    A task of an ordering key runs again in its own place, ahead of the tasks of its key that
    waited for it, not behind them."""
    with transaction.atomic():
        letter = DeadLetter.objects.select_for_update().get(pk=dead_letter_id)
        if letter.status != DeadLetter.Status.DEAD:
            raise DeadLetterNotActionable(f"dead letter {letter.pk} is already {letter.status}")
        retention = timedelta(days=settings.JOBS_IDEMPOTENCY_KEY_RETENTION_DAYS)
        if letter.first_failed_at < timezone.now() - retention:
            raise DeadLetterNotActionable(
                f"dead letter {letter.pk} is older than {retention.days} days: the keys that keep "
                "its effects from happening twice are gone. Discard it, or act by hand."
            )
        task = app.tasks.get(letter.task_name)
        if task is None:
            raise DeadLetterNotActionable(
                f"dead letter {letter.pk}: this release has no task {letter.task_name!r}"
            )
        kwargs = task_kwargs(task, letter.args, letter.kwargs)
        if getattr(task, "before_redrive", None) is not None:
            try:
                task.before_redrive(**kwargs)
            except DeadLetterNotActionable as refused:
                raise DeadLetterNotActionable(f"dead letter {letter.pk}: {refused}") from None
        ordered = ordered_message_of_task(task_id=letter.task_id)
        if ordered is not None:
            message = ordered_message_redrive(ordered)
        else:
            message = enqueue(task, **kwargs)
        letter.status = DeadLetter.Status.REDRIVEN
        letter.redriven_at = timezone.now()
        letter.redrive_count += 1
        letter.resolved_by = by
        letter.save(update_fields=["status", "redriven_at", "redrive_count", "resolved_by"])
    return message


def dead_letter_discard(*, dead_letter_id: int, by: str = "") -> None:
    """Give the task up. A task of an ordering key lets the tasks of its key that waited for it
    run."""
    with transaction.atomic():
        letter = DeadLetter.objects.select_for_update().get(pk=dead_letter_id)
        if letter.status != DeadLetter.Status.DEAD:
            raise DeadLetterNotActionable(f"dead letter {letter.pk} is already {letter.status}")
        ordered = ordered_message_of_task(task_id=letter.task_id)
        if ordered is not None:
            ordered_message_discard(ordered)
        letter.status = DeadLetter.Status.DISCARDED
        letter.resolved_by = by
        letter.save(update_fields=["status", "resolved_by"])


class DeadLetterNotActionable(Exception):
    """Re-drive or discard of a dead letter that was already re-driven or discarded."""
