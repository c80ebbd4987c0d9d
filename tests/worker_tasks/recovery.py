"""Test-only task for recovering the tasks of a worker killed whole (jobs/recovery.py)."""

import os
import signal
import time

from celery import shared_task

from jobs.redis import redis_client
from tests.worker_tasks.platform import record


def hold_key(key: str) -> str:
    """While this key exists, `hold_then_count` runs of `key` keep running."""
    return f"test:hold:{key}"


@shared_task(name="tests.hold_then_count", bind=True, idempotent=True)
def hold_then_count(self, key: str, item: int, hold_seconds: float) -> None:
    """Records each run with the worker that runs it, holds while the test's hold is on (for at
    most `hold_seconds`), then records its effect: one per run that finished."""
    record("runs", key, f"{item}|{self.request.hostname}")
    deadline = time.monotonic() + hold_seconds
    while redis_client().exists(hold_key(key)) and time.monotonic() < deadline:
        time.sleep(0.1)
    record("effects", key, str(item))


@shared_task(name="tests.kill_own_worker_whole", idempotent=True)
def kill_own_worker_whole(key: str) -> None:
    """A poison message that takes its whole worker down: the main process, then its own pool
    process (run by a worker with one pool process, so no other is left behind)."""
    record("deliveries", key)
    os.kill(os.getppid(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)
