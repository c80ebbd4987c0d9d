"""Read queries of the job platform: ordered rows and what they hold up, a batch's progress, and
what /metrics and the operator's page show of the outbox and the dead letters."""

import uuid
from dataclasses import dataclass
from datetime import datetime

from django.db.models import Count, Max, Min, Q, QuerySet

from jobs.models import Batch, DeadLetter, OutboxMessage


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


@dataclass(frozen=True)
class BatchProgress:
    id: int
    kind: str
    status: str
    total: int
    done: int
    failed: int
    pending: int
    progress: int


def batch_progress(*, batch_id: int) -> BatchProgress | None:
    """Where a batch stands, for an owning feature's API; None for a batch that does not exist.
    Read from the batch's counts, one row: cheap enough to poll."""
    batch = Batch.objects.filter(pk=batch_id).first()
    if batch is None:
        return None
    return BatchProgress(
        id=batch.pk,
        kind=batch.kind,
        status=batch.status,
        total=batch.total,
        done=batch.done,
        failed=batch.failed,
        pending=batch.total - batch.done - batch.failed,
        progress=batch.progress,
    )


@dataclass(frozen=True)
class OutboxBacklog:
    due: int
    oldest_due_at: datetime | None


def outbox_backlog(*, now: datetime) -> OutboxBacklog:
    """Rows due and not yet published, and the oldest one's due time. Only rows due: one delayed
    on purpose (a retry longer than a broker countdown) is not late before its time."""
    due = OutboxMessage.objects.filter(
        status=OutboxMessage.Status.PENDING, release_at__lte=now
    ).aggregate(count=Count("pk"), oldest=Min("release_at"))
    return OutboxBacklog(due=due["count"], oldest_due_at=due["oldest"])


def outbox_unpublishable_count() -> int:
    """Rows the relay gave up on, for a person to look at."""
    return OutboxMessage.objects.filter(status=OutboxMessage.Status.UNPUBLISHABLE).count()


def dead_letters_by_status() -> dict[str, int]:
    counted = dict(DeadLetter.objects.values_list("status").annotate(count=Count("pk")).order_by())
    return {status: counted.get(status, 0) for status in DeadLetter.Status.values}


def dead_letters_grouped(*, since: datetime) -> list[dict]:
    """Dead letters that failed since `since`, by task and exception, the most first: each a
    dict of task_name, exception_class, count and last (its latest failure)."""
    return list(
        DeadLetter.objects.filter(last_failed_at__gte=since)
        .values("task_name", "exception_class")
        .annotate(count=Count("pk"), last=Max("last_failed_at"))
        .order_by("-count", "task_name", "exception_class")
    )


def batches_running() -> QuerySet[Batch]:
    return Batch.objects.filter(status=Batch.Status.RUNNING)
