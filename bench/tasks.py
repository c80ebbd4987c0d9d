"""Tasks the benchmarks publish. Only the workers a benchmark starts load them
(`--include bench.tasks`); production workers never do."""

import time

from celery import shared_task

from jobs.redis import redis_client


@shared_task(name="bench.noop")
def noop(run: str, enqueued_at: float) -> None:
    """Does nothing but say when it started: pushes "<enqueued_at> <started_at>" onto the run's
    list. Both are time.time() values; the caller and the worker share one machine's clock."""
    started_at = time.time()
    redis_client().rpush(f"bench:{run}", f"{enqueued_at!r} {started_at!r}")
