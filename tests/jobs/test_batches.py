"""Batches: chunked fan-outs counted in the database, callbacks enqueued exactly once, lost
messages recovered by the sweep, failed chunks re-driven, memory flat however many items."""

import math
import time
import tracemalloc
import uuid

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from config.celery import app
from jobs.batches import (
    CHUNK_LEASE,
    CHUNK_TASK,
    BatchRejected,
    batch_chunk_complete,
    batch_start,
    batches_sweep,
)
from jobs.models import Batch, BatchChunk, DeadLetter, OutboxMessage
from jobs.outbox import publish_circuit
from jobs.redis import redis_client
from jobs.selectors import batch_progress
from jobs.tasks import batch_chunk_run
from tests.services import at_the_same_moment, eventually
from tests.worker_tasks import batches as handlers
from tests.worker_tasks.platform import recorded


@pytest.fixture(autouse=True)
def _circuit_closed():
    # Each test starts with a process that has not seen the broker fail.
    publish_circuit.record_success()


def _items(key: str, count: int, **extra) -> list[dict]:
    return [{"key": key, "n": n, **extra} for n in range(count)]


def _start(key: str, *, kind: str = handlers.RECORD, items=None, **options) -> Batch:
    with transaction.atomic():
        return batch_start(
            kind=kind,
            items=items if items is not None else _items(key, 300),
            on_success=handlers.batch_succeeded,
            on_complete=handlers.batch_completed,
            callback_kwargs={"key": key},
            **options,
        )


def _items_processed(key: str) -> list[int]:
    return sorted(int(n) for n in redis_client().lrange(f"test:batch_items:{key}", 0, -1))


def _callbacks(key: str) -> tuple[int, int]:
    """How many times on_success and on_complete ran."""
    return len(recorded("batch_succeeded", key)), len(recorded("batch_completed", key))


def _callbacks_enqueued(batch: Batch) -> tuple[int, int]:
    def count(task) -> int:
        return OutboxMessage.objects.filter(task_name=task.name, kwargs__batch_id=batch.pk).count()

    return count(handlers.batch_succeeded), count(handlers.batch_completed)


def _broker_drained(broker_server) -> bool:
    """No message waiting in a queue, nor (on Redis, kombu's `unacked`) taken and not yet
    acknowledged."""
    waiting = any(broker_server.queue_length(queue) for queue in ("default", "maintenance"))
    return not waiting and not redis_client().hlen("unacked")


def test_a_batch_completes_and_its_callbacks_run_exactly_once(celery_worker):
    # given a batch of 300 items in chunks of 40 (the last chunk smaller)
    key = uuid.uuid4().hex
    batch = _start(key, chunk_size=40)
    assert batch.total == 300 and batch.chunks.count() == math.ceil(300 / 40)
    # when the worker runs it
    eventually(lambda: _callbacks(key) == (1, 1), timeout=30)
    # then every item was processed, the counts say so, and each callback ran once
    assert _items_processed(key) == list(range(300))
    batch.refresh_from_db()
    assert (batch.status, batch.done, batch.failed, batch.progress) == ("succeeded", 300, 0, 100)
    assert batch.finished_at is not None
    assert not batch.chunks.exclude(status=BatchChunk.Status.DONE).exists()
    assert _callbacks_enqueued(batch) == (1, 1)
    progress = batch_progress(batch_id=batch.pk)
    assert (progress.done, progress.failed, progress.pending, progress.progress) == (300, 0, 0, 100)


def test_a_chunk_whose_message_is_published_twice_counts_once(celery_worker, broker_server):
    # given a batch whose every chunk message is published a second time, as a relay or a
    # redelivery would, while the first ones run
    key = uuid.uuid4().hex
    batch = _start(key, chunk_size=50)
    for chunk_id in batch.chunks.values_list("pk", flat=True):
        batch_chunk_run.apply_async(kwargs={"chunk_id": chunk_id, "kind": batch.kind})
    # when all of them have run
    eventually(lambda: _callbacks(key) == (1, 1), timeout=30)
    eventually(lambda: _broker_drained(broker_server), timeout=30)
    # then every item counts once and the callbacks were enqueued and ran once
    batch.refresh_from_db()
    assert (batch.status, batch.done, batch.failed) == ("succeeded", 300, 0)
    assert set(_items_processed(key)) == set(range(300))
    assert _callbacks_enqueued(batch) == (1, 1)
    assert _callbacks(key) == (1, 1)


@pytest.mark.parametrize("same_chunk", [False, True], ids=["last-two-chunks", "one-chunk-twice"])
def test_chunks_completing_at_the_same_moment_finish_the_batch_once(
    no_worker_running, transactional_db, same_chunk
):
    # given a batch with two chunks left, whose messages no worker runs
    key = uuid.uuid4().hex
    batch = _start(key, items=_items(key, 20), chunk_size=10)
    first, second = batch.chunks.order_by("index").values_list("pk", flat=True)
    targets = [first, first] if same_chunk else [first, second]
    # when two threads complete them at the same instant
    outcomes = at_the_same_moment(
        *(lambda chunk_id=chunk_id: batch_chunk_complete(chunk_id=chunk_id) for chunk_id in targets)
    )
    # then each chunk counted once, and the callbacks were enqueued once
    assert sorted(outcomes) == ([False, True] if same_chunk else [True, True])
    batch.refresh_from_db()
    expected = ("running", 10) if same_chunk else ("succeeded", 20)
    assert (batch.status, batch.done) == expected
    assert _callbacks_enqueued(batch) == ((0, 0) if same_chunk else (1, 1))


def test_a_lost_chunk_message_is_published_again_by_the_sweep(
    no_worker_running, start_worker, broker_server
):
    # given a batch whose messages the broker lost before any worker took them
    key = uuid.uuid4().hex
    batch = _start(key, items=_items(key, 100), chunk_size=25)
    eventually(lambda: broker_server.queue_length("default") == 4)
    app.control.purge()
    # when a sweep runs before the chunks' lease lapsed, it leaves them alone
    assert batches_sweep().republished == 0
    # and once it lapsed, it publishes each chunk again, once however often it runs
    later = timezone.now() + CHUNK_LEASE + CHUNK_LEASE / 10
    assert batches_sweep(now=later).republished == 4
    assert batches_sweep(now=later).republished == 0
    # then a worker completes the batch
    start_worker()
    eventually(lambda: _callbacks(key) == (1, 1), timeout=30)
    batch.refresh_from_db()
    assert (batch.status, batch.done) == ("succeeded", 100)
    assert _items_processed(key) == list(range(100))


def test_the_sweep_leaves_a_chunk_that_is_running_alone(no_worker_running, transactional_db):
    # given a batch of two chunks published long ago, one of which a worker started just now
    batch = _start(uuid.uuid4().hex, items=_items("running", 20), chunk_size=10)
    app.control.purge()
    long_ago = timezone.now() - CHUNK_LEASE * 2
    batch.chunks.update(published_at=long_ago)
    running = batch.chunks.order_by("index").first()
    BatchChunk.objects.filter(pk=running.pk).update(started_at=timezone.now())
    # when the sweep runs
    report = batches_sweep()
    # then only the chunk nobody runs is published again
    assert report.republished == 1
    assert BatchChunk.objects.get(pk=running.pk).published_at == long_ago


def test_a_batch_started_while_the_broker_is_down_answers_at_once(
    no_worker_running, transactional_db, broker_server
):
    # given a broker that is down
    broker_server.stop()
    # when a batch starts
    started = time.monotonic()
    batch = _start(uuid.uuid4().hex, items=_items("down", 100), chunk_size=10)
    elapsed = time.monotonic() - started
    # then the caller waits one bounded publish attempt, not the broker client's retries, and the
    # chunks wait, pending, for the sweep
    assert elapsed < 2, elapsed
    assert batch.chunks.filter(status=BatchChunk.Status.PENDING).count() == 10


@pytest.fixture
def admin_client(client, transactional_db):
    admin = get_user_model().objects.create_superuser("ops@example.com", "correct horse battery")
    client.force_login(admin)
    return client


def test_a_chunk_failing_for_good_fails_the_batch_and_its_redrive_makes_it_succeed(
    celery_worker, admin_client
):
    # given a batch one of whose three chunks holds an item that fails it permanently
    key = uuid.uuid4().hex
    items = _items(key, 30)
    items[15]["poison"] = True
    batch = _start(key, kind=handlers.FAIL_UNLESS_ALLOWED, items=items, chunk_size=10)
    # when it runs: the poisoned chunk is dead-lettered and its items counted failed
    eventually(lambda: _callbacks(key) == (0, 1), timeout=30)
    batch.refresh_from_db()
    assert (batch.status, batch.done, batch.failed, batch.progress) == ("failed", 20, 10, 100)
    failed_chunk = batch.chunks.get(status=BatchChunk.Status.FAILED)
    assert failed_chunk.index == 1
    letter = DeadLetter.objects.get(task_name=CHUNK_TASK)
    assert letter.kwargs["chunk_id"] == failed_chunk.pk
    # and the admin lists the batch with its progress and failures
    listing = admin_client.get(reverse("admin:jobs_batch_changelist"), {"status": "failed"})
    assert listing.status_code == 200 and "100 %" in listing.content.decode()
    page = admin_client.get(reverse("admin:jobs_batch_change", args=[batch.pk]))
    chunks_url = reverse("admin:jobs_batchchunk_changelist")
    assert chunks_url in page.content.decode()
    chunks = admin_client.get(chunks_url, {"batch__id__exact": batch.pk, "status": "failed"})
    assert chunks.status_code == 200
    assert (
        reverse("admin:jobs_batchchunk_change", args=[failed_chunk.pk]) in chunks.content.decode()
    )
    # when the cause is fixed and an operator re-drives the failed chunks from the admin
    redis_client().set(f"test:allow:{key}", 1)
    response = admin_client.post(
        reverse("admin:jobs_batch_changelist"),
        {"action": "redrive_failed_chunks", "_selected_action": [batch.pk]},
        follow=True,
    )
    assert "1 chunk(s) re-driven." in response.content.decode()
    # then the chunk's items move from failed to done, the batch succeeds, on_success runs once
    # and on_complete, which ran when the batch first completed, does not run again
    eventually(lambda: _callbacks(key) == (1, 1), timeout=30)
    batch.refresh_from_db()
    assert (batch.status, batch.done, batch.failed) == ("succeeded", 30, 0)
    assert _items_processed(key) == list(range(30))
    letter.refresh_from_db()
    assert letter.status == DeadLetter.Status.REDRIVEN and letter.resolved_by == "ops@example.com"
    time.sleep(1)  # a second on_complete would come within a fraction of this
    assert _callbacks(key) == (1, 1) and _callbacks_enqueued(batch) == (1, 1)


def test_the_sweep_finishes_a_batch_whose_counts_are_complete(transactional_db, no_worker_running):
    # given a batch whose counts say every item is accounted for, but still running (counts
    # corrected by hand, say)
    key = uuid.uuid4().hex
    batch = _start(key, items=_items(key, 10), chunk_size=5)
    BatchChunk.objects.filter(batch=batch).update(status=BatchChunk.Status.DONE)
    Batch.objects.filter(pk=batch.pk).update(done=10)
    # when the sweep runs, twice
    reports = [batches_sweep(), batches_sweep()]
    # then the first finishes it and enqueues its callbacks, the second finds nothing
    assert [report.finished for report in reports] == [1, 0]
    batch.refresh_from_db()
    assert batch.status == Batch.Status.SUCCEEDED
    assert _callbacks_enqueued(batch) == (1, 1)


def test_an_empty_batch_succeeds_at_once(transactional_db, no_worker_running):
    batch = _start("empty", items=iter(()))
    assert (batch.status, batch.total, batch.progress) == ("succeeded", 0, 100)
    assert _callbacks_enqueued(batch) == (1, 1)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"kind": "tests.nobody_handles_this"}, "no batch handler for kind"),
        ({"items": [{"n": 0}, ["not", "a", "dict"]]}, "item 1 is a list, not a dict"),
        ({"items": [{"n": 0}, {"n": 1}, {"when": object()}]}, "item 2 is not JSON-serializable"),
        ({"items": [{"n": math.nan}]}, "item 0 is not JSON-serializable"),
        ({"on_success": "tests.no_such_task"}, "no task 'tests.no_such_task'"),
        ({"callback_kwargs": {"batch_id": 1}}, "batch_id is the batch's own"),
    ],
)
@pytest.mark.django_db
def test_bad_input_fails_clearly_at_the_start_and_writes_nothing(options, message):
    arguments = {"kind": handlers.RECORD, "items": [{"n": 0}], **options}
    with pytest.raises(BatchRejected, match=message):
        batch_start(**arguments)
    assert not Batch.objects.exists() and not BatchChunk.objects.exists()


def test_a_chunk_goes_to_its_handlers_queue_however_it_is_published():
    route = app.amqp.router.route({}, CHUNK_TASK, kwargs={"chunk_id": 1, "kind": handlers.NOOP})
    assert route["queue"].name == "maintenance"


def test_memory_stays_flat_however_many_items(transactional_db, no_worker_running):
    # given a batch's items produced by a generator, as a feature reading rows would
    def peak_bytes(count: int) -> int:
        items = ({"n": n, "payload": "x" * 40} for n in range(count))
        tracemalloc.start()
        try:
            with transaction.atomic():
                batch_start(kind=handlers.NOOP, items=items)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    # when batches of 10,000 and 100,000 items start (chunk rows written and published)
    small, large = peak_bytes(10_000), peak_bytes(100_000)
    # then the larger one's peak is about the smaller one's, not ten times it
    print(
        f"tracemalloc peak: {small / 1e6:.1f} MB for 10,000 items, {large / 1e6:.1f} MB for 100,000"
    )
    assert large < small * 1.25, (small, large)
    chunk_size = settings.JOBS_BATCH_CHUNK_SIZE
    assert Batch.objects.get(total=100_000).chunks.count() == math.ceil(100_000 / chunk_size)
