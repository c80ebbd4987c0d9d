"""Tasks the benchmarks publish. Only the workers a benchmark starts load them
(`--include bench.tasks`); production workers never do."""

import time

from celery import Task, shared_task

from jobs.batches import batch_handler
from jobs.models import Batch
from jobs.redis import redis_client


def _started(run: str, enqueued_at: float) -> None:
    """Say when the task started: push "<enqueued_at> <started_at>" onto the run's list. Both
    are time.time() values; the caller and the worker share one machine's clock."""
    started_at = time.time()
    redis_client().rpush(f"bench:{run}", f"{enqueued_at!r} {started_at!r}")


@shared_task(name="bench.noop")
def noop(run: str, enqueued_at: float) -> None:
    """A no-op on the platform's base task, as most of the project's tasks are declared."""
    _started(run, enqueued_at)


@shared_task(name="bench.noop_idempotent", idempotent=True)
def noop_idempotent(run: str, enqueued_at: float) -> None:
    """The same on the platform's base task, idempotent: late ack and the delivery count."""
    _started(run, enqueued_at)


@shared_task(name="bench.noop_plain_celery", base=Task)
def noop_plain_celery(run: str, enqueued_at: float) -> None:
    """The same on Celery's own Task: the baseline of what the platform adds to each task."""
    _started(run, enqueued_at)


@shared_task(name="bench.noop_plain_celery_late_ack", base=Task, acks_late=True)
def noop_plain_celery_late_ack(run: str, enqueued_at: float) -> None:
    """The same on Celery's own Task with late ack, as the platform's idempotent tasks are
    acknowledged: what the platform adds beyond the acknowledgement's timing."""
    _started(run, enqueued_at)


@shared_task(name="bench.hold", bind=True, idempotent=True)
def hold(self, run: str, key: str, seconds: float) -> None:
    """Say which worker started it and when (a list per run: "<hostname> <started_at>"), then
    hold its pool process while `key` exists, for at most `seconds`."""
    redis_client().rpush(f"bench:{run}", f"{self.request.hostname} {time.time()!r}")
    deadline = time.monotonic() + seconds
    while redis_client().exists(key) and time.monotonic() < deadline:
        time.sleep(0.05)


@shared_task(name="bench.step", idempotent=True)
def step(run: str, key: str, seconds: float) -> None:
    """A step of some work of `key` that takes `seconds`: pushes "<key> <started_at> <ended_at>"
    (time.time() values) onto the run's list. Idempotent, as an ordered task must be."""
    started_at = time.time()
    time.sleep(seconds)
    redis_client().rpush(f"bench:{run}", f"{key} {started_at!r} {time.time()!r}")


# --- bench/batches.py: the same no-op fan-out as a batch, one message per item, a group, a chord


def _finished(run: str) -> None:
    redis_client().rpush(f"bench:{run}", repr(time.time()))


@batch_handler("bench.noop")
def noop_chunk(items: list[dict], batch: Batch) -> None:
    """A batch's no-op: the chunk's items are counted by the platform, nothing else happens."""


@shared_task(name="bench.batch_finished", idempotent=True)
def batch_finished(batch_id: int, run: str) -> None:
    """A batch's on_complete: says when the last item was accounted for."""
    _finished(run)


@shared_task(name="bench.item_noop")
def item_noop(run: str, total: int) -> None:
    """One item's no-op on the platform's base task. Counting the items is the one thing it
    does: the task that counts the last one says when the fan-out finished."""
    if redis_client().incr(f"bench:count:{run}") == total:
        _finished(run)


# A chord's header must store its results: the chord counts them to know when to call back.
@shared_task(name="bench.item_noop_result", ignore_result=False)
def item_noop_result() -> None:
    """One item's no-op in a chord's header."""


@shared_task(name="bench.chord_finished")
def chord_finished(results: list, run: str) -> None:
    """A chord's callback, called with every header task's result."""
    _finished(run)
