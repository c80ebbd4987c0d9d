"""Task counters and histograms, kept in Redis by every process that publishes or runs a task,
and read by /metrics (jobs/metrics.py) at scrape time.

Why Redis rather than prometheus_client's own counters: those live in one process. A web
process that serves /metrics knows nothing of the workers; Prometheus's multiprocess mode shares
files between the processes of one host only, and scraping every worker host needs each to
serve HTTP and be discovered. Here every pool process of every worker, on any host, adds to one
hash (HINCRBY, atomic), and any web process reads the same totals. Nothing is lost when a worker
restarts; a Redis restart without persistence resets them, which Prometheus reads as a counter
reset (rate() and increase() handle it).

One hash, fields `<metric>|<task name>[|<label>]`: a run adds to it in one pipelined round
trip when it ends, a publish in one when it has gone out. A histogram is kept as one field per
bucket (the observations that fell in it, not cumulative), its count and its sum; /metrics adds
the buckets up.
"""

import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime

import redis

from jobs.redis import redis_client

logger = logging.getLogger(__name__)

COUNTERS_KEY = "jobs:metrics:tasks"
# The header every message carries its publish time in (Unix seconds, the publisher's clock),
# stamped by every publish (jobs/metrics.py): a retry or a deferral, published anew, is stamped
# anew.
PUBLISHED_AT_HEADER = "jobs_published_at"

# Upper bounds, in seconds. A run: from a few milliseconds (an email handed to the outbox) to
# minutes (a report, an erasure's slice).
RUNTIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# A wait in the queue: from nothing to an hour of backlog.
QUEUE_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)

# How a run ended (jobs.base.PlatformTask) -> the counter it adds to; the other outcomes (a
# deferral, a redelivered duplicate skipped) are only received.
OUTCOME_COUNTERS = {"success": "succeeded", "failure": "failed", "retry": "retried"}


@dataclass(frozen=True)
class Histogram:
    name: str
    buckets: tuple[float, ...]


RUNTIME = Histogram("runtime", RUNTIME_BUCKETS)
QUEUE_WAIT = Histogram("queue_wait", QUEUE_WAIT_BUCKETS)


def task_sent_count(task_name: str) -> None:
    _add({f"sent|{task_name}": 1})


def task_run_count(
    task_name: str,
    *,
    outcome: str,
    runtime: float,
    queue_wait: float | None,
    exception: str = "",
) -> None:
    """One run of a task ended: received, its outcome, how long it ran and waited."""
    counts = {f"received|{task_name}": 1}
    counter = OUTCOME_COUNTERS.get(outcome)
    if counter == "failed":
        counts[f"failed|{task_name}|{exception}"] = 1
    elif counter:
        counts[f"{counter}|{task_name}"] = 1
    # The run time of runs that did their work: a deferral or a skipped duplicate returns in
    # milliseconds, and counting those would pull every quantile towards nothing.
    sums = _observed(counts, RUNTIME, task_name, runtime) if counter else {}
    if queue_wait is not None:
        sums.update(_observed(counts, QUEUE_WAIT, task_name, queue_wait))
    _add(counts, sums)


def due_at(headers: dict, eta: str | None) -> float | None:
    """When a message became due (Unix seconds): its publish time, or its ETA if later (a
    countdown, a retry's backoff, a rate limit's slot: waits on purpose, not backlog). None for
    a message without a publish time."""
    published_at = headers.get(PUBLISHED_AT_HEADER)
    if not isinstance(published_at, int | float):
        return None
    if eta:
        with contextlib.suppress(TypeError, ValueError):
            return max(published_at, datetime.fromisoformat(eta).timestamp())
    return published_at


def queue_wait_of(request, *, started_at: float) -> float | None:
    """Seconds the message waited in its queue, once due, before this run began."""
    due = due_at(request.headers or {}, request.eta)
    return None if due is None else max(0.0, started_at - due)


def rate_limit_deferral_count(provider: str) -> None:
    _add({f"deferrals|{provider}": 1})


def _observed(counts: dict, histogram: Histogram, task_name: str, value: float) -> dict:
    bucket = next((bound for bound in histogram.buckets if value <= bound), "+Inf")
    counts[f"{histogram.name}_bucket|{task_name}|{bucket}"] = 1
    counts[f"{histogram.name}_count|{task_name}"] = 1
    return {f"{histogram.name}_sum|{task_name}": value}


def _add(counts: dict[str, int], sums: dict[str, float] | None = None) -> None:
    # A counter lost while Redis is away is a figure a little low, never a task failing for it.
    with contextlib.suppress(redis.RedisError):
        pipeline = redis_client().pipeline(transaction=False)
        for field, amount in counts.items():
            pipeline.hincrby(COUNTERS_KEY, field, amount)
        for field, amount in (sums or {}).items():
            pipeline.hincrbyfloat(COUNTERS_KEY, field, amount)
        pipeline.execute()


def counters_read() -> dict[str, float]:
    """Every field of the counters' hash; raises redis.RedisError."""
    return {
        field.decode(): float(value)
        for field, value in redis_client().hgetall(COUNTERS_KEY).items()
    }
