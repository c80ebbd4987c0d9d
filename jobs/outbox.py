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

`enqueue(task, ordering_key="user:42", **kwargs)` also keeps the order of one key's tasks: a row
with a key is published only once every earlier row of that key has finished, and the worker that
finishes one publishes the next (docs/ordering.md).
"""

import contextlib
import dataclasses
import enum
import inspect
import logging
import os
import threading
import time
import uuid
from datetime import timedelta
from typing import Any

from celery import Task
from celery.exceptions import QueueNotFound
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Exists, F, OuterRef, Q, Subquery
from django.utils import timezone
from kombu import Connection
from kombu.exceptions import OperationalError

from config.celery import app
from jobs.models import OutboxMessage
from jobs.redis import redis_circuit
from jobs.request_ids import current_request_id, request_id_held
from jobs.retry import DEFAULT_BACKOFF
from jobs.selectors import ordering_message_unfinished

logger = logging.getLogger(__name__)

# A publisher owns a row for this long; after it, the relay assumes the publisher died.
# Longer than any publish takes, short enough that a lost task waits seconds, not minutes.
CLAIM_SECONDS = 30
# Rows one relay run publishes; a backlog drains over successive runs instead of one huge one.
RELAY_BATCH = 500
# The headers an ordered row's message carries, so that the worker finishing it knows which row
# to mark finished and which key's next row to publish. Unordered messages carry neither, and
# cost the worker nothing for ordering.
ORDERED_ROW_HEADER = "jobs_outbox_row"
ORDERING_KEY_HEADER = "jobs_ordering_key"


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


def enqueue(task: Task, /, *, ordering_key: str | None = None, **kwargs: Any) -> OutboxMessage:
    """Run `task(**kwargs)` once the current transaction commits; never lost, even if the broker
    is down right now. Arguments must be JSON values (ids, not model instances).

    With an `ordering_key` (`"user:42"`), the task starts only after every task enqueued earlier
    with the same key has finished, on whichever worker; tasks of other keys, and unordered
    ones, run alongside. A task of the key that fails for good holds the key up until its dead
    letter is re-driven (it runs again in its place) or discarded (the key moves on).
    """
    if ordering_key is None:
        return _outbox_write(task, kwargs=kwargs, delay=None)
    _refuse_unless_orderable(task)
    with transaction.atomic():  # the key's lock is held until the caller's transaction ends
        return _outbox_write(
            task, kwargs=kwargs, delay=None, place=_ordering_place_take(ordering_key)
        )


class TaskCannotBeOrdered(ValueError):
    """`enqueue(..., ordering_key=...)` of a task whose message could end without it running
    and without a dead letter: its key would wait for it forever, silently."""


def _refuse_unless_orderable(task: Task) -> None:
    if not getattr(task, "idempotent", False):
        # An early-acked message lost with its worker is never run again: a late-acked one
        # comes back and runs again.
        raise TaskCannotBeOrdered(f"{task.name} is not idempotent (idempotent=True)")
    if task.expires is not None:
        # An expired message is acknowledged without running.
        raise TaskCannotBeOrdered(f"{task.name} declares expires={task.expires!r}")


def enqueue_in(delay: timedelta, task: Task, /, **kwargs: Any) -> OutboxMessage:
    """Like `enqueue`, but not before `delay` has passed. Short delays become broker
    countdowns; long ones wait in the database, because Redis would redeliver a message held
    longer than its visibility timeout over and over."""
    return _outbox_write(task, kwargs=kwargs, delay=delay)


def enqueue_retry(
    task: Task,
    /,
    *,
    task_id: str,
    retries: int,
    delay: timedelta,
    args: tuple | list,
    kwargs: dict[str, Any],
    ordered_message_id: str | None = None,
) -> OutboxMessage:
    """The retry of a running task that could not be published (the broker failed with the
    task): kept like any durable message, under the task's id and its retry count."""
    if ordered_message_id:
        # An ordered task's own row waits for its retry, still the head of its key: a new row
        # would go behind the very rows that wait for this task.
        OutboxMessage.objects.filter(pk=ordered_message_id).update(
            status=OutboxMessage.Status.PENDING,
            task_id=task_id,
            retries=retries,
            release_at=timezone.now() + delay,
            claimed_until=None,
        )
        return OutboxMessage.objects.get(pk=ordered_message_id)
    with transaction.atomic():
        return _outbox_write(
            task,
            kwargs=task_kwargs(task, args, kwargs),
            delay=delay,
            task_id=task_id,
            retries=retries,
        )


def task_kwargs(task: Task, args: tuple | list, kwargs: dict[str, Any]) -> dict[str, Any]:
    """A call's arguments as keywords, the only kind an outbox row keeps. The project's
    messages carry keywords only; a retry or dead letter of a message that carried positional
    ones (a caller's `delay(upload_id)`, an earlier release's canvas) would otherwise run
    without them."""
    return dict(inspect.signature(task.run).bind_partial(*args, **kwargs).arguments)


def _outbox_write(
    task: Task,
    *,
    kwargs: dict,
    delay: timedelta | None,
    task_id: str = "",
    retries: int = 0,
    place: "OrderingPlace | None" = None,
) -> OutboxMessage:
    now = timezone.now()
    stays_in_database = (
        delay is not None and delay.total_seconds() > settings.JOBS_MAX_BROKER_COUNTDOWN_SECONDS
    ) or (place is not None and not place.is_head)  # published by its predecessor's worker
    message = OutboxMessage.objects.create(
        task_name=task.name,
        kwargs=kwargs,
        queue=getattr(task, "queue", None) or "",
        task_id=task_id,
        retries=retries,
        # Due when the delay ends, whichever path publishes it: if the publish after commit
        # fails, the relay still does not run a delayed task early.
        release_at=now + delay if delay else now,
        # Held by this process until it publishes on commit; the relay keeps off meanwhile.
        claimed_until=None if stays_in_database else now + timedelta(seconds=CLAIM_SECONDS),
        ordering_key=place.ordering_key if place else "",
        ordering_position=place.position if place else None,
        request_id=current_request_id() or "",
    )
    if not stays_in_database:
        countdown = delay.total_seconds() if delay else None
        transaction.on_commit(
            lambda: outbox_publish(message=message, countdown=countdown), robust=True
        )
    return message


@dataclasses.dataclass(frozen=True)
class OrderingPlace:
    """Where a new row of an ordering key goes: after the key's last row, and whether it is the
    head of the key (nothing of the key unfinished before it), hence published at once."""

    ordering_key: str
    position: int
    is_head: bool


def _ordering_place_take(ordering_key: str) -> OrderingPlace:
    """The next place of the key, under the key's lock (held until the transaction ends): the
    place taken is the order in which the rows commit, and a worker finishing the key's last row
    meanwhile either sees this row once committed, and publishes it, or finished before, and
    this row is the head. Rows finish in the order of their places, so nothing of the key is
    unfinished if its last row is finished (or gone: pruned, long finished)."""
    _ordering_key_lock(ordering_key)
    last = (
        OutboxMessage.objects.filter(ordering_key=ordering_key)
        .order_by("-ordering_position")
        .values("ordering_position", "finished_at")
        .first()
    )
    return OrderingPlace(
        ordering_key=ordering_key,
        position=last["ordering_position"] + 1 if last else 1,
        is_head=last is None or last["finished_at"] is not None,
    )


def _ordering_key_lock(ordering_key: str) -> None:
    """Serialise, until the transaction ends, the writers of one key: those taking a place and
    those marking a row finished. SQLite needs nothing: the project's transactions there are
    IMMEDIATE, so every writer already holds the database's one write lock from its BEGIN.
    PostgreSQL takes a transaction-level advisory lock on the key, blocking no other key."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [ordering_key])


@dataclasses.dataclass(frozen=True)
class OrderedRun:
    """What a worker about to run an ordered row's task reads of its key, in one query: whether
    the row is finished already (a message delivered again: acknowledged unrun) and the row
    after it, which the worker publishes the moment the task finishes."""

    finished: bool
    successor: OutboxMessage | None


def ordered_run_start(*, message_id: str, ordering_key: str) -> OrderedRun:
    """The row and its successor: the key's first two unfinished rows from the row's place on.
    The row is finished if it is not the first of them (or is gone: a row pruned is long
    finished). A message of a finished row comes back when its worker died between marking it
    finished and acknowledging it, or when the relay published it twice; it must not run while
    the key's next task may be running already."""
    position = OutboxMessage.objects.filter(pk=message_id).values("ordering_position")
    rows = list(
        ordering_message_unfinished()
        .filter(ordering_key=ordering_key, ordering_position__gte=Subquery(position))
        .order_by("ordering_position")[:2]
    )
    if not rows or str(rows[0].pk) != message_id:
        return OrderedRun(finished=True, successor=None)
    return OrderedRun(finished=False, successor=rows[1] if len(rows) > 1 else None)


def ordered_message_finished(
    *, message_id: str, ordering_key: str, successor: OutboxMessage | None = None
) -> None:
    """The task of an ordered row finished (it succeeded, or a person discarded its dead
    letter): publish the key's next row, then mark this row finished and the next one published,
    in one write transaction.

    `successor` is the next row as read when the task started. Nobody else publishes it
    meanwhile: the relay publishes only a key's head, and until the mark commits this row is the
    head. Should the worker die between the publish and the mark, its message comes back and the
    task runs again (it is idempotent), as when it dies between the mark and the acknowledgement.
    A row enqueued while the task ran (or without a `successor`, the next row), or a successor
    the broker refused, is claimed under the key's lock once this row is marked, and published
    after commit or left to the relay."""
    due = (
        successor is not None
        and successor.status == OutboxMessage.Status.PENDING
        and successor.release_at <= timezone.now()
    )
    finished = OutboxMessage.objects.filter(pk=message_id, finished_at__isnull=True)
    if due and outbox_send(message=successor) is Published.YES:
        # Without the key's lock: the successor, unfinished, stays the head whatever is enqueued
        # meanwhile, and the enqueuer's row goes behind it.
        now = timezone.now()
        with transaction.atomic():
            finished.update(finished_at=now, claimed_until=None)
            _published_mark(successor, now=now)
        return
    with transaction.atomic():
        _ordering_key_lock(ordering_key)
        finished.update(finished_at=timezone.now(), claimed_until=None)
        head = _ordering_head_claim(ordering_key=ordering_key)
    if head is not None and not (due and head == successor):  # just refused: the relay's now
        outbox_publish(message=head)


def _ordering_head_claim(*, ordering_key: str) -> OutboxMessage | None:
    """The key's head (its first unfinished row), claimed, if it waits to be published and is
    due; None when there is nothing to publish or someone else holds the row."""
    head = (
        ordering_message_unfinished()
        .filter(ordering_key=ordering_key)
        .order_by("ordering_position")
        .first()
    )
    if (
        head is None
        or head.status != OutboxMessage.Status.PENDING
        or head.release_at > timezone.now()
        or not _claim(head.pk)
    ):
        return None
    return head


def ordered_message_redrive(message: OutboxMessage) -> OutboxMessage:
    """Run a dead-lettered ordered row again in its own place, ahead of the rest of its key. It
    goes out under a new task id: should it fail again, that is a new dead letter for a person,
    not the re-driven one (a decision on a letter is taken once)."""
    now = timezone.now()
    message.status = OutboxMessage.Status.PENDING
    message.task_id = str(uuid.uuid4())
    message.retries = 0
    message.row_failures = 0
    message.release_at = now
    message.claimed_until = now + timedelta(seconds=CLAIM_SECONDS)
    message.save(
        update_fields=[
            "status", "task_id", "retries", "row_failures", "release_at", "claimed_until",
        ]
    )  # fmt: skip
    transaction.on_commit(lambda: outbox_publish(message=message), robust=True)
    return message


def ordered_message_discard(message: OutboxMessage) -> None:
    """Let the key of a dead-lettered ordered row move on without it, once the transaction
    that discards its dead letter commits."""
    transaction.on_commit(
        lambda: ordered_message_finished(
            message_id=str(message.pk), ordering_key=message.ordering_key
        ),
        robust=True,
    )


class Published(enum.Enum):
    YES = "published"
    ROW_FAILED = "this row could not be published; it is retried later or dead-lettered"
    BROKER_DOWN = "the broker failed; nothing more can be published for now"


def outbox_publish(*, message: OutboxMessage, countdown: float | None = None) -> Published:
    """Publish one claimed row and mark it published. Never raises: a failure leaves the row
    pending (claim released) for the relay, which is the whole point of the outbox."""
    outcome = outbox_send(message=message, countdown=countdown)
    if outcome is Published.YES:
        _mark_published(message)
    return outcome


def outbox_send(*, message: OutboxMessage, countdown: float | None = None) -> Published:
    """`outbox_publish` without marking the row published: for a caller that marks it in a
    transaction of its own."""
    if not publish_circuit.allows_publishing() or _broker_is_a_redis_that_just_failed():
        _release_claim(message, error="skipped: broker failed moments ago")
        return Published.BROKER_DOWN
    try:
        _publishing_connection.send(message=message, countdown=countdown)
    except Exception as error:
        if not _is_broker_failure(error):
            _row_failed(message, error)
            return Published.ROW_FAILED
        publish_circuit.record_failure()
        logger.warning("outbox publish of %s failed, the relay will retry: %r", message.id, error)
        _release_claim(message, error=repr(error))
        return Published.BROKER_DOWN
    publish_circuit.record_success()
    return Published.YES


def _broker_is_a_redis_that_just_failed() -> bool:
    # The platform's Redis client (abuse limits, rate limits) failed moments ago, and the broker
    # is that same Redis: a request that already waited for it once should not wait again.
    return redis_circuit.is_open and settings.CELERY_BROKER_URL == settings.REDIS_URL


class _PublishingConnection(threading.local):
    """One broker connection per thread for outbox publishes, with every wait bounded by
    JOBS_PUBLISH_TIMEOUT_SECONDS: connecting, each socket read and write, and no reconnect
    loop. The app's shared connections have longer socket timeouts (a worker's consumer needs
    them) and retry connecting, which cost a request ~6 s with the broker down and 5 s with a
    broker that accepts and never answers; kombu's Redis transport ignores a publish `timeout`.
    A connection that failed is dropped, and the next publish connects afresh."""

    connection: Connection | None = None
    pid: int | None = None

    def send(self, *, message: OutboxMessage, countdown: float | None) -> None:
        kept = self.connection is not None and self.pid == os.getpid()
        try:
            self._send(message=message, countdown=countdown)
        except Exception as error:
            if not (kept and _is_broker_failure(error)):
                raise
            # A connection kept from an earlier publish may have died with a broker restarted
            # since, which says nothing about the broker now: one attempt on a fresh connection,
            # bounded like the first, decides.
            self._send(message=message, countdown=countdown)

    def _send(self, *, message: OutboxMessage, countdown: float | None) -> None:
        connection = self._connection()
        try:
            # Under the row's own request id, or none: never that of whoever publishes it (the
            # relay, another key's worker, an operator re-driving in the admin).
            with request_id_held(message.request_id or None):
                self._publish(message=message, countdown=countdown, connection=connection)
        except Exception:
            self._drop()
            raise

    def _publish(
        self, *, message: OutboxMessage, countdown: float | None, connection: Connection
    ) -> None:
        app.send_task(
            message.task_name,
            headers=_ordering_headers(message),
            kwargs=message.kwargs,
            task_id=message.celery_task_id,
            retries=message.retries,
            queue=message.queue or None,
            countdown=countdown,
            connection=connection,
            # No kombu retry loop: the relay is the retry, and the caller is a waiting user.
            retry=False,
            timeout=settings.JOBS_PUBLISH_TIMEOUT_SECONDS,
            # send_task does not read the task's setting; without it, publishing would first
            # subscribe to the result channel, which blocks for seconds when Redis is down.
            ignore_result=getattr(app.tasks.get(message.task_name), "ignore_result", True),
        )

    def _connection(self) -> Connection:
        # Per process too: a connection inherited across fork shares its socket with the parent.
        if self.connection is None or self.pid != os.getpid():
            self.connection = bounded_publishing_connection()
            self.pid = os.getpid()
        return self.connection

    def _drop(self) -> None:
        if self.connection is not None:
            with contextlib.suppress(Exception):  # it already failed; closing may fail too
                self.connection.collect()
            self.connection = None


_publishing_connection = _PublishingConnection()


def bounded_publishing_connection() -> Connection:
    """A broker connection whose every wait is bounded by JOBS_PUBLISH_TIMEOUT_SECONDS
    (connecting, each socket read and write), with no reconnect loop: for publishes a caller
    waits for, which something durable (the outbox relay, the batches' sweep) retries. Pass
    `timeout=JOBS_PUBLISH_TIMEOUT_SECONDS` to each publish too: it bounds the wait for
    RabbitMQ's confirmation."""
    bound = settings.JOBS_PUBLISH_TIMEOUT_SECONDS
    return app.connection_for_write(
        connect_timeout=bound,
        transport_options={
            **app.conf.broker_transport_options,
            "socket_timeout": bound,
            "socket_connect_timeout": bound,
            "max_retries": 0,
        },
    )


def _ordering_headers(message: OutboxMessage) -> dict[str, str] | None:
    if not message.ordering_key:
        return None
    return {ORDERED_ROW_HEADER: str(message.pk), ORDERING_KEY_HEADER: message.ordering_key}


def _is_broker_failure(error: Exception) -> bool:
    """The broker is down, hung or unreachable, as opposed to this one row being unpublishable
    (its queue no longer exists, its arguments cannot be serialized): only the first stops the
    relay and opens the circuit."""
    connection = app.connection_for_write()
    broker_errors = (
        OperationalError,
        OSError,
        *connection.connection_errors,
        *connection.channel_errors,
    )
    return isinstance(error, broker_errors) and not isinstance(error, QueueNotFound)


def _row_failed(message: OutboxMessage, error: Exception) -> None:
    """This row could not be published though the broker answered. Try it again later, each time
    twice as late, so it never holds up the rows behind it; after
    JOBS_OUTBOX_MAX_PUBLISH_ATTEMPTS, dead-letter it: a person re-drives it (through a new row)
    once the cause is fixed, or discards it."""
    from jobs.deadletters import dead_letter_record  # it imports this module

    attempts = message.row_failures + 1
    logger.error("outbox row %s cannot be published (attempt %d): %r", message.id, attempts, error)
    failed = {
        "claimed_until": None,
        "publish_attempts": F("publish_attempts") + 1,
        "row_failures": attempts,
        "last_error": repr(error)[:2000],
    }
    with transaction.atomic():
        pending = OutboxMessage.objects.filter(pk=message.pk, status=OutboxMessage.Status.PENDING)
        if attempts >= settings.JOBS_OUTBOX_MAX_PUBLISH_ATTEMPTS:
            pending.update(status=OutboxMessage.Status.UNPUBLISHABLE, **failed)
            dead_letter_record(
                task_name=message.task_name,
                task_id=message.celery_task_id,
                args=(),
                kwargs=message.kwargs,
                queue=message.queue,
                error=error,
                attempts=attempts,
            )
            return
        backoff = DEFAULT_BACKOFF.wait_seconds(retries_so_far=attempts)
        pending.update(release_at=timezone.now() + timedelta(seconds=backoff), **failed)


def _mark_published(message: OutboxMessage) -> None:
    with transaction.atomic():
        if connection.vendor == "postgresql":
            # This commit need not wait for the disk: if a crash loses it, the row just stays
            # pending and the relay publishes it again after CLAIM_SECONDS, a duplicate every
            # task already tolerates. It halves the outbox's cost per task (bench/queue.py).
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL synchronous_commit TO OFF")
        _published_mark(message, now=timezone.now())


def _published_mark(message: OutboxMessage, *, now) -> None:
    OutboxMessage.objects.filter(pk=message.pk).update(
        status=OutboxMessage.Status.PUBLISHED, published_at=now, claimed_until=None
    )


def _release_claim(message: OutboxMessage, *, error: str) -> None:
    OutboxMessage.objects.filter(pk=message.pk, status=OutboxMessage.Status.PENDING).update(
        claimed_until=None, publish_attempts=F("publish_attempts") + 1, last_error=error[:2000]
    )


def outbox_relay(*, batch: int = RELAY_BATCH) -> int:
    """Publish due pending rows whose claim is free or expired; returns how many went out.

    Two relays never publish the same row: each claims a row with one conditional UPDATE just
    before publishing it (only a row whose claim is free or expired matches), so a row claimed
    by one relay is skipped by the other even on SQLite, which lacks SELECT ... FOR UPDATE SKIP
    LOCKED. Each claim runs from its own moment, not the run's start: a slow run's later rows
    are held as long as its first ones.
    """
    # Of an ordering key, only its head: the rows behind it wait for it to finish. Being the
    # head, once true, stays true until the row finishes (rows finish in order, and new ones go
    # behind), so a relay that read it a moment ago still publishes the right row; two relays at
    # once both see that one head, and its claim lets only one of them publish it.
    waits_for_an_earlier_row = Exists(
        ordering_message_unfinished().filter(
            ordering_key=OuterRef("ordering_key"),
            ordering_position__lt=OuterRef("ordering_position"),
        )
    )
    due = (
        OutboxMessage.objects.filter(
            status=OutboxMessage.Status.PENDING,
            release_at__lte=timezone.now(),
            finished_at__isnull=True,
        )
        .exclude(claimed_until__gt=timezone.now())
        .filter(Q(ordering_key="") | ~waits_for_an_earlier_row)
        .order_by("release_at")
        .values_list("pk", flat=True)[:batch]
    )
    published = 0
    for pk in list(due):
        if not _claim(pk):
            continue  # another relay (or the enqueuing request, or a finishing worker) holds it
        outcome = outbox_publish(message=OutboxMessage.objects.get(pk=pk))
        if outcome is Published.BROKER_DOWN:
            break  # stop: the rest stay pending for the next run
        published += outcome is Published.YES
    if published:
        logger.info("outbox relay published %d message(s)", published)
    return published


def _claim(pk) -> bool:
    """Hold a pending row for CLAIM_SECONDS from now, if nobody holds it: one conditional UPDATE,
    so of two publishers at once exactly one gets it, on SQLite as on PostgreSQL."""
    now = timezone.now()
    return bool(
        OutboxMessage.objects.filter(pk=pk, status=OutboxMessage.Status.PENDING)
        .exclude(claimed_until__gt=now)
        .update(claimed_until=now + timedelta(seconds=CLAIM_SECONDS))
    )


def outbox_prune(*, older_than: timedelta | None = None) -> int:
    """Delete published rows past the retention period; pending rows are never pruned, nor are
    ordered rows not finished yet (a dead-lettered one holds its key up until a person acts)."""
    older_than = older_than or timedelta(days=settings.JOBS_OUTBOX_RETENTION_DAYS)
    deleted, _ = (
        OutboxMessage.objects.filter(
            status=OutboxMessage.Status.PUBLISHED, published_at__lt=timezone.now() - older_than
        )
        .filter(Q(ordering_key="") | Q(finished_at__isnull=False))
        .delete()
    )
    return deleted
