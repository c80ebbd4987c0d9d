"""Test-only batch handlers and callbacks. Items carry the test's key; what ran is recorded in
Redis (tests.worker_tasks.platform.record), where the test process reads it."""

from celery import shared_task

from jobs.batches import batch_handler
from jobs.models import Batch
from jobs.redis import redis_client
from jobs.retry import PermanentError
from tests.worker_tasks.platform import record

RECORD = "tests.batch_record"
FAIL_UNLESS_ALLOWED = "tests.batch_fail_unless_allowed"
NOOP = "tests.batch_noop"


@batch_handler(RECORD)
def record_items(items: list[dict], batch: Batch) -> None:
    """Records each item's number under its key."""
    redis_client().rpush(f"test:batch_items:{items[0]['key']}", *(item["n"] for item in items))


@batch_handler(FAIL_UNLESS_ALLOWED)
def fail_unless_allowed(items: list[dict], batch: Batch) -> None:
    """A chunk holding an item marked `poison` fails permanently until the test allows it."""
    key = items[0]["key"]
    if any(item.get("poison") for item in items) and not redis_client().get(f"test:allow:{key}"):
        raise PermanentError("a poisoned item")
    record_items(items, batch)


@batch_handler(NOOP, queue="maintenance")
def noop(items: list[dict], batch: Batch) -> None:
    """Does nothing, on a queue of its own kind: for routing and for memory measurements."""


@shared_task(name="tests.batch_succeeded", idempotent=True)
def batch_succeeded(batch_id: int, key: str) -> None:
    record("batch_succeeded", key, str(batch_id))


@shared_task(name="tests.batch_completed", idempotent=True)
def batch_completed(batch_id: int, key: str) -> None:
    record("batch_completed", key, str(batch_id))
