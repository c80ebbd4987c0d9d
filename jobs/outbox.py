"""Durable enqueue: the transactional outbox.

`enqueue(task, **kwargs)` writes an OutboxMessage in the caller's transaction and publishes it
once that transaction commits. Three things can go wrong and none loses the task:

- the transaction rolls back: the row is gone with it, and nothing is published;
- the broker is down at commit: the request still answers quickly (publishing is bounded by
  JOBS_PUBLISH_TIMEOUT_SECONDS), the row stays pending, and the relay publishes it later;
- the process dies between commit and publish: its claim on the row expires and the relay
  publishes it.

A message may be published twice (the relay cannot know whether a publish whose confirmation was
lost reached the broker), which is why every task is idempotent and the row id is the task id.
"""

import logging
import threading
import time
from datetime import timedelta
from typing import Any

from celery import Task
from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from config.celery import app
from jobs.models import OutboxMessage

logger = logging.getLogger(__name__)

# A publisher owns a row for this long; after it, the relay assumes the publisher died.
# Longer than any publish takes, short enough that a lost task waits seconds, not minutes.
CLAIM_SECONDS = 30
# Rows one relay run publishes; a backlog drains over successive runs instead of one huge one.
RELAY_BATCH = 500


class _PublishCircuit:
    """Remembers, per process, that the broker just failed, so the requests that follow skip
    the doomed attempt and answer at once; the relay publishes their rows instead."""

    def __init__(self) -> None:
        self._open_until = 0.0
        self._lock = threading.Lock()

    def allows_publishing(self) -> bool:
        return time.monotonic() >= self._open_until

    def record_failure(self) -> None:
        with self._lock:
            self._open_until = time.monotonic() + settings.JOBS_PUBLISH_BACKOFF_SECONDS

    def record_success(self) -> None:
        self._open_until = 0.0


publish_circuit = _PublishCircuit()


def enqueue(task: Task, /, **kwargs: Any) -> OutboxMessage:
    """Run `task(**kwargs)` once the current transaction commits; never lost, even if the broker
    is down right now. Arguments must be JSON values (ids, not model instances)."""
    return _outbox_write(task, kwargs=kwargs, delay=None)


def enqueue_in(delay: timedelta, task: Task, /, **kwargs: Any) -> OutboxMessage:
    """Like `enqueue`, but not before `delay` has passed. Short delays become broker
    countdowns; long ones wait in the database, because Redis would redeliver a message held
    longer than its visibility timeout over and over."""
    return _outbox_write(task, kwargs=kwargs, delay=delay)


def _outbox_write(task: Task, *, kwargs: dict, delay: timedelta | None) -> OutboxMessage:
    now = timezone.now()
    stays_in_database = delay is not None and (
        delay.total_seconds() > settings.JOBS_MAX_BROKER_COUNTDOWN_SECONDS
    )
    message = OutboxMessage.objects.create(
        task_name=task.name,
        kwargs=kwargs,
        queue=getattr(task, "queue", None) or "",
        # Due when the delay ends, whichever path publishes it: if the publish after commit
        # fails, the relay still does not run a delayed task early.
        release_at=now + delay if delay else now,
        # Held by this process until it publishes on commit; the relay keeps off meanwhile.
        claimed_until=None if stays_in_database else now + timedelta(seconds=CLAIM_SECONDS),
    )
    if not stays_in_database:
        countdown = delay.total_seconds() if delay else None
        transaction.on_commit(
            lambda: outbox_publish(message=message, countdown=countdown), robust=True
        )
    return message


def outbox_publish(*, message: OutboxMessage, countdown: float | None = None) -> bool:
    """Publish one claimed row and mark it published. Never raises: a failure leaves the row
    pending (claim released) for the relay, which is the whole point of the outbox."""
    if not publish_circuit.allows_publishing():
        _release_claim(message, error="skipped: broker failed moments ago")
        return False
    try:
        app.send_task(
            message.task_name,
            kwargs=message.kwargs,
            task_id=str(message.id),
            queue=message.queue or None,
            countdown=countdown,
            # No kombu retry loop: the relay is the retry, and the caller is a waiting user.
            retry=False,
            # Bounds the wait for the broker's socket in the request (kombu's default is none).
            timeout=settings.JOBS_PUBLISH_TIMEOUT_SECONDS,
            # send_task does not read the task's setting; without it, publishing would first
            # subscribe to the result channel, which blocks for seconds when Redis is down.
            ignore_result=getattr(app.tasks.get(message.task_name), "ignore_result", True),
        )
    except Exception as error:  # any broker failure: connection, timeout, protocol
        publish_circuit.record_failure()
        logger.warning("outbox publish of %s failed, the relay will retry: %r", message.id, error)
        _release_claim(message, error=repr(error))
        return False
    publish_circuit.record_success()
    _mark_published(message)
    return True


def _mark_published(message: OutboxMessage) -> None:
    with transaction.atomic():
        if connection.vendor == "postgresql":
            # This commit need not wait for the disk: if a crash loses it, the row just stays
            # pending and the relay publishes it again after CLAIM_SECONDS, a duplicate every
            # task already tolerates. It halves the outbox's cost per task (bench/queue.py).
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL synchronous_commit TO OFF")
        OutboxMessage.objects.filter(pk=message.pk).update(
            status=OutboxMessage.Status.PUBLISHED, published_at=timezone.now(), claimed_until=None
        )


def _release_claim(message: OutboxMessage, *, error: str) -> None:
    OutboxMessage.objects.filter(pk=message.pk, status=OutboxMessage.Status.PENDING).update(
        claimed_until=None, publish_attempts=F("publish_attempts") + 1, last_error=error[:2000]
    )


def outbox_relay(*, batch: int = RELAY_BATCH) -> int:
    """Publish due pending rows whose claim is free or expired; returns how many went out.

    Two relays never publish the same row: each claims its batch with one conditional UPDATE
    per row (only a row whose claim is still free matches), so a row claimed by one relay is
    skipped by the other even on SQLite, which lacks SELECT ... FOR UPDATE SKIP LOCKED.
    """
    now = timezone.now()
    due = (
        OutboxMessage.objects.filter(status=OutboxMessage.Status.PENDING, release_at__lte=now)
        .exclude(claimed_until__gt=now)
        .order_by("release_at")
        .values_list("pk", flat=True)[:batch]
    )
    published = 0
    claim_until = now + timedelta(seconds=CLAIM_SECONDS)
    for pk in list(due):
        claimed = (
            OutboxMessage.objects.filter(pk=pk, status=OutboxMessage.Status.PENDING)
            .exclude(claimed_until__gt=now)
            .update(claimed_until=claim_until)
        )
        if not claimed:
            continue  # another relay (or the enqueuing request) holds it
        message = OutboxMessage.objects.get(pk=pk)
        if not outbox_publish(message=message):
            break  # the broker is down: stop, the rest stay pending for the next run
        published += 1
    if published:
        logger.info("outbox relay published %d message(s)", published)
    return published


def outbox_prune(*, older_than: timedelta | None = None) -> int:
    """Delete published rows past the retention period; pending rows are never pruned."""
    older_than = older_than or timedelta(days=settings.JOBS_OUTBOX_RETENTION_DAYS)
    deleted, _ = OutboxMessage.objects.filter(
        status=OutboxMessage.Status.PUBLISHED, published_at__lt=timezone.now() - older_than
    ).delete()
    return deleted
