"""Read queries of the job platform."""

import uuid

from django.db.models import Q, QuerySet

from jobs.models import OutboxMessage


def ordering_message_unfinished() -> QuerySet[OutboxMessage]:
    """Ordered rows whose task has not finished: pending, published and running or waiting for a
    retry, or dead-lettered. Each holds up the rows of its key behind it."""
    return OutboxMessage.objects.exclude(ordering_key="").filter(finished_at__isnull=True)


def ordered_message_of_task(*, task_id: str) -> OutboxMessage | None:
    """The unfinished ordered row whose message ran as `task_id` (a dead letter's task id), or
    None for a task that was not ordered. The row id is the task id, unless the row went out
    under an id of its own (a retry kept in the outbox, a re-drive)."""
    try:
        row_id = uuid.UUID(task_id)
    except ValueError:
        matches_task = Q(task_id=task_id)
    else:
        matches_task = Q(task_id=task_id) | Q(task_id="", pk=row_id)
    return ordering_message_unfinished().filter(matches_task).first()


def ordering_messages_held_up(*, message: OutboxMessage) -> int:
    """How many rows of the message's key wait behind it."""
    return (
        ordering_message_unfinished()
        .filter(ordering_key=message.ordering_key, ordering_position__gt=message.ordering_position)
        .count()
    )
