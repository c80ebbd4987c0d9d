"""What the sweeps for lost messages share: when a status row's message counts as lost, and
queuing it again once per claim.

A row (an email, a push) waits `queued` while its task's message lives in the broker or a
worker. A broker that lost its messages (an in-memory Redis restarted) leaves such rows queued
for good; the sweep of their app queues them again once they have not moved for longer than a
live message can wait, and only while their queue holds nothing (a backlog is not a loss).
"""

from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet

from jobs.ratelimit import RESERVATION_HORIZON_SECONDS

# Beyond the longest a live message can wait, before a row counts as lost.
LOST_MARGIN = timedelta(hours=1)


def lost_after(task) -> timedelta:
    """How long a queued row of a rate-limited `task` may stay unmoved while its message still
    lives. The task books a rate-limit slot up to the limiter's horizon ahead without touching
    the row, may miss it and book as far again, and may be refused a slot beyond the horizon and
    retried, each wait capped by JOBS_RETRY_MAX_SECONDS. Meanwhile its message sits in a worker
    or the broker's delayed queues, which the queue's count does not show."""
    policy = task.retry_policy
    longest_retry = policy.max_seconds or settings.JOBS_RETRY_MAX_SECONDS
    longest_wait = 2 * RESERVATION_HORIZON_SECONDS + policy.retries_allowed * longest_retry
    return timedelta(seconds=longest_wait) + LOST_MARGIN


def lost_rows_requeue(
    still_lost: QuerySet,
    rows: Iterable[tuple],
    *,
    now: datetime,
    requeue: Callable[..., None],
) -> int:
    """Queue again each of `rows` (`pk, updated_at, *rest`) that is still as it was read (in
    `still_lost`, unmoved since): claimed by moving its `updated_at` to `now`, and `requeue(pk,
    *rest)` enqueued in the claim's transaction. Two sweeps at once queue each row once.
    Returns how many it queued again."""
    queued_again = 0
    for pk, updated_at, *rest in rows:
        with transaction.atomic():
            if still_lost.filter(pk=pk, updated_at=updated_at).update(updated_at=now):
                requeue(pk, *rest)
                queued_again += 1
    return queued_again


def interrupted_rows_mark_unknown(
    sending: QuerySet, rows: Iterable[tuple], *, now: datetime, **fields
) -> list:
    """Mark `unknown` (with `fields`) each of `rows` (`pk, updated_at`) still `sending` and
    unmoved since it was read: its worker died mid-send, then its message was lost, so nothing
    will settle it, and the provider may have it. Returns the pks it marked."""
    marked = []
    for pk, updated_at in rows:
        if sending.filter(pk=pk, updated_at=updated_at).update(updated_at=now, **fields):
            marked.append(pk)
    return marked
