"""Tasks the benchmarks publish. Only the workers a benchmark starts load them
(`--include bench.tasks`); production workers never do."""

import time

from celery import Task, shared_task

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
