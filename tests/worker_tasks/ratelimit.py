"""Test-only tasks behind the global rate limit (jobs/ratelimit.py).

Each records, on Redis's clock (one clock for every worker process), every run with the
reservation its message carried, and when it really called its provider, so a test can measure
the runs and calls of several workers together.
"""

import json

from celery import Task, shared_task

from jobs.ratelimit import RESERVATION_HEADER, rate_limit_or_defer
from jobs.redis import redis_client


@shared_task(name="tests.call_rate_limited_provider", bind=True, idempotent=True)
def call_rate_limited_provider(self: Task, key: str) -> None:
    """Records every run (deferred or not), then, once the limit lets it through, the call."""
    client = redis_client()
    reservation = (self.request.headers or {}).get(RESERVATION_HEADER)
    client.rpush(
        f"test:ratelimit:runs:{key}", json.dumps({"id": self.request.id, "slot": reservation})
    )
    rate_limit_or_defer(self, provider="test")
    seconds, microseconds = client.time()
    call = {
        "at_us": seconds * 1_000_000 + microseconds,
        "id": self.request.id,
        "worker": self.request.hostname,
        "retries": self.request.retries,
        "slot": reservation,
    }
    client.rpush(f"test:ratelimit:calls:{key}", json.dumps(call))


def runs(key: str) -> list[dict]:
    return [json.loads(run) for run in redis_client().lrange(f"test:ratelimit:runs:{key}", 0, -1)]


def calls(key: str) -> list[dict]:
    return [
        json.loads(call) for call in redis_client().lrange(f"test:ratelimit:calls:{key}", 0, -1)
    ]


@shared_task(name="tests.kill_own_worker_behind_the_limit", bind=True, idempotent=True)
def kill_own_worker_behind_the_limit(self: Task, key: str) -> None:
    """A poison message behind the rate limit: each delivery that gets its slot kills its pool
    process; one that finds its slot over (the pool was restarting) is deferred first."""
    import os
    import signal

    redis_client().rpush(f"test:ratelimit:runs:{key}", json.dumps({"id": self.request.id}))
    rate_limit_or_defer(self, provider="test")
    redis_client().rpush(f"test:ratelimit:calls:{key}", json.dumps({"id": self.request.id}))
    os.kill(os.getpid(), signal.SIGKILL)
