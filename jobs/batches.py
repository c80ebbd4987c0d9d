"""Batches: one fan-out of many items, chunked, counted in the database, with completion
callbacks enqueued exactly once (docs/batches.md).

A feature declares what one slice of its items means, then starts batches of that kind:

    @batch_handler("accounts.erase_rows", queue="default")
    def erase_rows(items: list[dict], batch: Batch) -> None: ...

    batch_start(kind="accounts.erase_rows", items=rows, owner=user,
                on_complete="accounts.send_erasure_receipt", callback_kwargs={"user_id": 7})

The items become BatchChunk rows in the caller's transaction; one message per chunk, published
after commit, runs `jobs.batch_chunk_run`. Each chunk that finishes moves its items into the
batch's counts in the transaction that marks it, and the one that completes the count enqueues
the callbacks through the outbox in that same transaction. Chords need a result backend and hang
when a member's message is lost; one message per item costs the broker and the worker a round
trip per item. Here the database is the only arbiter, and a lost message is published again by
`batches_sweep`.
"""

import contextlib
import itertools
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

import redis
from celery import Task
from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone
from kombu.exceptions import OperationalError

from config.celery import app
from jobs.deadletters import DeadLetterNotActionable, dead_letter_redrive
from jobs.models import Batch, BatchChunk, DeadLetter
from jobs.outbox import bounded_publishing_connection, enqueue, publish_circuit
from jobs.retry import NETWORK_ERRORS, RetryPolicy

logger = logging.getLogger(__name__)

T = TypeVar("T")

CHUNK_TASK = "jobs.batch_chunk_run"
# The chunk task's limits. A chunk is sized to run in seconds (JOBS_BATCH_CHUNK_SIZE); one still
# running after a minute is stuck, and its hard limit frees the worker and dead-letters it.
CHUNK_SOFT_TIME_LIMIT = 60
CHUNK_TIME_LIMIT = 90
# A handler's network hiccups (and its own TransientError) are retried; anything else fails the
# chunk at once. Waits capped at a minute, so the lease below stays a few minutes long.
CHUNK_RETRY = RetryPolicy(transient=NETWORK_ERRORS, max_retries=5, max_seconds=60)
# A pending chunk whose message is accounted for: published or started less than this long ago.
# A run lasts at most the hard time limit and its retry waits at most the retry cap, so a chunk
# neither published nor started within both has no message left anywhere, and the sweep
# publishes it again. A backlog longer than the lease costs one spare message per chunk per
# lease, which finds the chunk done and returns.
CHUNK_LEASE = timedelta(seconds=CHUNK_TIME_LIMIT + CHUNK_RETRY.max_seconds)
# Chunk rows are written in groups of about this many items: the caller holds one group in
# memory whatever the batch's size (flat at 100,000 items), and each INSERT carries a few
# hundred rows at most, well inside SQLite's and PostgreSQL's statement limits.
INSERT_GROUP_ITEMS = 10_000
# Chunks one sweep run publishes again, and batches it finishes: a run stays short, and a
# backlog of lost messages drains over successive runs.
SWEEP_LIMIT = 500


class BatchRejected(ValueError):
    """`batch_start` refused its input: an unknown kind or callback, an item that is not a JSON
    object. Raised before anything is written."""


@dataclass(frozen=True)
class BatchHandler:
    kind: str
    queue: str
    function: Callable[[list[dict], Batch], None]


_handlers: dict[str, BatchHandler] = {}


def batch_handler(kind: str, *, queue: str = "default") -> Callable:
    """Declare the function that processes one chunk of a `kind` of batch, on `queue`.

    The function gets the chunk's items and its batch. It must be idempotent, like every task:
    a chunk may run twice (a worker killed mid-chunk, a message published again by the sweep).
    Declare handlers in the app's tasks.py, which workers import, beside the app's tasks.
    """
    if queue not in settings.JOB_QUEUES:
        raise ValueError(f"batch handler {kind!r}: no queue {queue!r}")

    def register(function: Callable[[list[dict], Batch], None]) -> Callable:
        if kind in _handlers:
            raise ValueError(f"batch handler {kind!r} is registered twice")
        _handlers[kind] = BatchHandler(kind=kind, queue=queue, function=function)
        return function

    return register


def batch_handler_for(kind: str) -> BatchHandler:
    try:
        return _handlers[kind]
    except KeyError:
        raise BatchRejected(f"no batch handler for kind {kind!r}") from None


def batch_chunk_route(name: str, args, kwargs, options, task=None, **rest) -> dict | None:
    """A router of CELERY_TASK_ROUTES: a chunk's message goes to its handler's queue, however it
    is published (at the start, by the sweep, by a dead letter's re-drive through the outbox),
    because the message names its kind."""
    if name != CHUNK_TASK:
        return None
    handler = _handlers.get((kwargs or {}).get("kind"))
    return {"queue": handler.queue} if handler else None


# --- starting -------------------------------------------------------------------------------


def batch_start(
    *,
    kind: str,
    items: Iterable[dict],
    owner=None,
    on_success: Task | str | None = None,
    on_complete: Task | str | None = None,
    callback_kwargs: dict[str, Any] | None = None,
    chunk_size: int | None = None,
) -> Batch:
    """Start a batch of `items` (JSON objects) for the `kind`'s handler, in the caller's
    transaction; its chunks are published once that transaction commits.

    `items` is read once, a chunk (`chunk_size`, by default JOBS_BATCH_CHUNK_SIZE) at a time: a
    generator of 100,000 items never sits in memory whole. Once every item is done or failed for
    good, `on_complete(batch_id=…, **callback_kwargs)` is enqueued, and `on_success` too if none
    failed, each exactly once.
    """
    batch_handler_for(kind)
    callbacks = {
        "on_success": _callback_name(on_success),
        "on_complete": _callback_name(on_complete),
    }
    callback_kwargs = callback_kwargs or {}
    _json_checked(callback_kwargs, what="callback_kwargs")
    if "batch_id" in callback_kwargs:
        raise BatchRejected("callback_kwargs: batch_id is the batch's own, given to callbacks")
    chunk_size = chunk_size or settings.JOBS_BATCH_CHUNK_SIZE
    if chunk_size < 1:
        raise BatchRejected(f"chunk_size must be at least 1, not {chunk_size}")

    with transaction.atomic():
        batch = Batch.objects.create(
            kind=kind, owner=owner, callback_kwargs=callback_kwargs, **callbacks
        )
        batch.total = _chunks_write(batch=batch, items=items, chunk_size=chunk_size)
        Batch.objects.filter(pk=batch.pk).update(total=batch.total)
        if batch.total:
            transaction.on_commit(lambda: _batch_publish(batch=batch), robust=True)
        else:
            _batch_finish_if_complete(batch_id=batch.pk)  # nothing to wait for
    batch.refresh_from_db()
    return batch


def _callback_name(callback: Task | str | None) -> str:
    if callback is None:
        return ""
    name = callback if isinstance(callback, str) else callback.name
    if name not in app.tasks:
        raise BatchRejected(f"no task {name!r} to call back")
    return name


def _chunks_write(*, batch: Batch, items: Iterable[dict], chunk_size: int) -> int:
    """Write `items` as chunk rows, a group of rows per INSERT; returns how many items. Each
    group is built and written in a call of its own, so it is gone before the next is read:
    memory holds one group, never two."""
    chunks = enumerate(_slices(items, chunk_size))
    rows_per_insert = max(1, INSERT_GROUP_ITEMS // chunk_size)
    total = 0
    while written := _chunk_group_write(
        batch=batch, chunks=itertools.islice(chunks, rows_per_insert), first=total
    ):
        total += written
    return total


def _chunk_group_write(*, batch: Batch, chunks: Iterable[tuple[int, list]], first: int) -> int:
    rows = []
    written = 0
    for index, chunk_items in chunks:
        _items_checked(chunk_items, first=first + written)
        rows.append(BatchChunk(batch=batch, index=index, items=chunk_items, size=len(chunk_items)))
        written += len(chunk_items)
    BatchChunk.objects.bulk_create(rows)
    return written


def _slices(iterable: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(iterable)
    while piece := list(itertools.islice(iterator, size)):
        yield piece


def _items_checked(items: list, *, first: int) -> None:
    """Each item a JSON object, so that a bad item fails the caller now, with its position,
    rather than a worker later."""
    for position, item in enumerate(items, start=first):
        if not isinstance(item, dict):
            raise BatchRejected(f"item {position} is a {type(item).__name__}, not a dict")
    try:
        json.dumps(items, allow_nan=False)  # the whole chunk at once: one call, not one per item
    except (TypeError, ValueError):
        for position, item in enumerate(items, start=first):
            _json_checked(item, what=f"item {position}")
        raise


def _json_checked(value: Any, *, what: str) -> None:
    try:
        # allow_nan=False: NaN is not JSON, and PostgreSQL's jsonb refuses it.
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise BatchRejected(f"{what} is not JSON-serializable: {error}") from error


# --- publishing -----------------------------------------------------------------------------


def _batch_publish(*, batch: Batch) -> None:
    chunk_ids = (
        BatchChunk.objects.filter(batch=batch, status=BatchChunk.Status.PENDING)
        .order_by("index")
        .values_list("pk", flat=True)
        .iterator(chunk_size=2000)
    )
    # Closed here rather than when collected: publishing stops early when the broker fails, and
    # a half-read cursor must be closed while its database connection is still open.
    with contextlib.closing(chunk_ids):
        _chunks_publish((chunk_id, batch.kind) for chunk_id in chunk_ids)


def _chunks_publish(chunks: Iterable[tuple[int, str]]) -> int:
    """Publish a message for each (chunk id, kind), one broker connection for all; returns how
    many went out. Stops at the first broker failure: the chunk rows stay pending and the sweep
    publishes them once their lease lapses."""
    if not publish_circuit.allows_publishing():
        return 0  # the broker failed moments ago; waiting for it again helps nobody
    published = 0
    try:
        with bounded_publishing_connection() as connection:
            # As send_task makes one for a connection it is given; here one for the whole burst.
            producer = app.amqp.Producer(connection, auto_declare=False)
            for chunk_id, kind in chunks:
                app.send_task(
                    CHUNK_TASK,
                    kwargs={"chunk_id": chunk_id, "kind": kind},
                    # One id per chunk: a chunk published twice and failing both times leaves
                    # one dead letter, not two.
                    task_id=f"{CHUNK_TASK}:{chunk_id}",
                    producer=producer,
                    retry=False,  # the sweep is the retry
                    timeout=settings.JOBS_PUBLISH_TIMEOUT_SECONDS,
                    ignore_result=True,
                )
                published += 1
    except (OperationalError, OSError, redis.RedisError) as error:
        publish_circuit.record_failure()
        logger.warning(
            "batch chunks: publish failed after %d, the sweep publishes the rest: %r",
            published, error,
        )  # fmt: skip
    return published


# --- running --------------------------------------------------------------------------------


def batch_chunk_run(*, chunk_id: int) -> None:
    """Run one chunk's handler and count its items done. A chunk already done is not run
    again (a redelivered or duplicated message); a failed one is (a dead letter re-driven)."""
    chunk = BatchChunk.objects.select_related("batch").filter(pk=chunk_id).first()
    if chunk is None or chunk.status == BatchChunk.Status.DONE:
        return  # its batch was deleted, or this message is a duplicate
    handler = batch_handler_for(chunk.batch.kind)
    # Renews the chunk's lease: the sweep leaves a chunk that is running alone.
    BatchChunk.objects.filter(pk=chunk_id).update(
        attempts=F("attempts") + 1, started_at=timezone.now()
    )
    handler.function(chunk.items, chunk.batch)
    batch_chunk_complete(chunk_id=chunk_id)


def batch_chunk_complete(*, chunk_id: int) -> bool:
    """Mark the chunk done and count its items done, in one transaction; returns whether this
    call did it (False: the chunk was done already).

    Exactly once however many calls race: the chunk's status changes in a conditional UPDATE
    (only a row still pending, or failed, matches), and the counts move only when it changed a
    row. On PostgreSQL a second caller's UPDATE waits for the first's row lock, then finds the
    row done; on SQLite, transactions that write run one at a time (IMMEDIATE).
    """
    with transaction.atomic():
        batch_id, size = BatchChunk.objects.values_list("batch_id", "size").get(pk=chunk_id)
        chunk = BatchChunk.objects.filter(pk=chunk_id)
        done = {"status": BatchChunk.Status.DONE, "finished_at": timezone.now()}
        if chunk.filter(status=BatchChunk.Status.PENDING).update(**done):
            Batch.objects.filter(pk=batch_id).update(done=F("done") + size)
        elif chunk.filter(status=BatchChunk.Status.FAILED).update(**done):
            # A failed chunk that ran after all (its dead letter re-driven): its items move.
            Batch.objects.filter(pk=batch_id).update(
                done=F("done") + size, failed=F("failed") - size
            )
        else:
            return False
        _batch_finish_if_complete(batch_id=batch_id)
    return True


def batch_chunk_fail(*, chunk_id: int) -> bool:
    """Mark a chunk that failed for good (dead-lettered) failed and count its items failed;
    returns whether this call did it. A chunk done meanwhile (a duplicate message that
    succeeded) stays done."""
    with transaction.atomic():
        batch_id, size = BatchChunk.objects.values_list("batch_id", "size").get(pk=chunk_id)
        if not BatchChunk.objects.filter(pk=chunk_id, status=BatchChunk.Status.PENDING).update(
            status=BatchChunk.Status.FAILED, finished_at=timezone.now()
        ):
            return False
        Batch.objects.filter(pk=batch_id).update(failed=F("failed") + size)
        _batch_finish_if_complete(batch_id=batch_id)
    return True


def _batch_finish_if_complete(*, batch_id: int) -> bool:
    """Finish the batch if its counts are complete, enqueueing its callbacks in the caller's
    transaction; returns whether this call finished it. The status changes in a conditional
    UPDATE: of any number of callers, only the one whose UPDATE changed the row enqueues.

    - running, every item done: succeeded; on_success and on_complete.
    - running, every item done or failed: failed; on_complete.
    - failed, every item done (re-driven chunks succeeded): succeeded; on_success only, since
      on_complete fired when the batch first completed.
    """
    now = timezone.now()
    batch = Batch.objects.filter(pk=batch_id)
    running = batch.filter(status=Batch.Status.RUNNING)
    if running.filter(done=F("total")).update(status=Batch.Status.SUCCEEDED, finished_at=now):
        _callbacks_enqueue(batch_id=batch_id, on_success=True, on_complete=True)
        return True
    if running.filter(total=F("done") + F("failed")).update(
        status=Batch.Status.FAILED, finished_at=now
    ):
        _callbacks_enqueue(batch_id=batch_id, on_success=False, on_complete=True)
        return True
    if batch.filter(status=Batch.Status.FAILED, done=F("total")).update(
        status=Batch.Status.SUCCEEDED, finished_at=now
    ):
        _callbacks_enqueue(batch_id=batch_id, on_success=True, on_complete=False)
        return True
    return False


def _callbacks_enqueue(*, batch_id: int, on_success: bool, on_complete: bool) -> None:
    batch = Batch.objects.get(pk=batch_id)
    logger.info("batch %s %s: done=%d failed=%d", batch_id, batch.status, batch.done, batch.failed)
    names = [batch.on_success] * on_success + [batch.on_complete] * on_complete
    for name in filter(None, names):
        enqueue(app.tasks[name], batch_id=batch_id, **batch.callback_kwargs)


def batch_items_forget(*, batch_id: int) -> int:
    """Empty the items of a finished batch's chunks, for a batch whose items name what must not
    be kept once it is done (an account erasure's slices). Its counts stay. Returns how many
    chunks; a running batch keeps its items, which its chunks and re-drives still need."""
    return BatchChunk.objects.filter(
        batch_id=batch_id, batch__status=Batch.Status.SUCCEEDED
    ).update(items=[])


@dataclass(frozen=True)
class RedriveOutcome:
    redriven: int
    refused: list[str]


def batch_chunks_redrive(*, batch_ids: list[int], by: str = "") -> RedriveOutcome:
    """Run the failed chunks of these batches again, each by re-driving its dead letter through
    the dead-letter service: recorded on the letter, and refused for a letter acted on already.
    A chunk that succeeds then moves its items from failed to done (batch_chunk_complete)."""
    redriven, refused = 0, []
    failed_chunks = BatchChunk.objects.filter(
        batch_id__in=batch_ids, status=BatchChunk.Status.FAILED
    ).values_list("pk", flat=True)
    for chunk_id in failed_chunks:
        letter = (
            DeadLetter.objects.filter(
                task_name=CHUNK_TASK, kwargs__chunk_id=chunk_id, status=DeadLetter.Status.DEAD
            )
            .order_by("-last_failed_at")
            .first()
        )
        if letter is None:
            refused.append(f"chunk {chunk_id}: no dead letter waiting (discarded or re-driven)")
            continue
        try:
            dead_letter_redrive(dead_letter_id=letter.pk, by=by)
        except DeadLetterNotActionable as refusal:
            refused.append(f"chunk {chunk_id}: {refusal}")
            continue
        redriven += 1
    return RedriveOutcome(redriven=redriven, refused=refused)


# --- the sweep ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepReport:
    republished: int = 0
    finished: int = 0


def batches_sweep(*, now: datetime | None = None) -> SweepReport:
    """Publish again the pending chunks whose lease lapsed (their message was lost: a publish
    that failed, a broker that lost its data), and finish batches whose counts are complete but
    that are not finished.

    Each chunk is claimed before it is published, with a conditional UPDATE that renews its
    lease (only a row whose publish time is still the one read matches), so two sweeps never
    publish the same chunk. A chunk's counts and its batch's finish commit together, so no
    crash separates them; the second part is a net for counts changed outside these services
    (an operator correcting a batch by hand), at the cost of one query.
    """
    now = now or timezone.now()
    # While the broker is known to be down, claiming would only push the chunks' leases back.
    republished = _lapsed_chunks_publish(now=now) if publish_circuit.allows_publishing() else 0
    complete = Batch.objects.filter(
        Q(status=Batch.Status.RUNNING, total=F("done") + F("failed"))
        | Q(status=Batch.Status.FAILED, done=F("total"))
    ).values_list("pk", flat=True)[:SWEEP_LIMIT]
    finished = 0
    for batch_id in complete:
        with transaction.atomic():
            finished += _batch_finish_if_complete(batch_id=batch_id)
    if finished:
        logger.warning("batch sweep: finished %d batch(es) whose finish was lost", finished)
    return SweepReport(republished=republished, finished=finished)


def _lapsed_chunks_publish(*, now: datetime) -> int:
    lapsed = now - CHUNK_LEASE
    candidates = (
        BatchChunk.objects.filter(status=BatchChunk.Status.PENDING, published_at__lt=lapsed)
        .filter(Q(started_at__isnull=True) | Q(started_at__lt=lapsed))
        .order_by("published_at")
        .values_list("pk", "published_at", "batch__kind")[:SWEEP_LIMIT]
    )
    claimed = [
        (chunk_id, kind)
        for chunk_id, published_at, kind in candidates
        if BatchChunk.objects.filter(
            pk=chunk_id, status=BatchChunk.Status.PENDING, published_at=published_at
        ).update(published_at=now)
    ]
    if not claimed:
        return 0
    republished = _chunks_publish(claimed)
    logger.warning("batch sweep: %d chunk(s) lost, %d published again", len(claimed), republished)
    return republished
