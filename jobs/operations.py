"""What the operator's page (/admin/operations/, jobs/admin.py) shows, read when it is opened
from the same sources as /metrics: the broker (bounded, jobs/metrics.py), Redis (heartbeats,
canaries, beat) and the database (outbox, dead letters, batches, stuck jobs).

Each source is read on its own, and one that fails leaves its part of the page saying why while
the rest is shown: the page is needed most when something is down.
"""

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import redis
from django.conf import settings
from django.utils import timezone

from jobs.beat import beat_lock_holder
from jobs.canary import canary_ages
from jobs.heartbeats import beat_heartbeat_age, worker_heartbeat_ages, worker_heartbeats
from jobs.metrics import broker_figures_bounded, stuck_jobs_counted
from jobs.models import Batch
from jobs.selectors import (
    OutboxBacklog,
    batches_running,
    dead_letters_by_status,
    dead_letters_grouped,
    outbox_backlog,
    outbox_unpublishable_count,
)

# Dead letters are grouped over this window: what broke today, not the history.
DEAD_LETTER_WINDOW = timedelta(hours=24)


@dataclass(frozen=True)
class QueueState:
    name: str
    # None where the source did not answer (or, for the oldest age, a queue that is empty or a
    # broker that cannot show it).
    length: int | None
    oldest_age: float | None
    consumers: int | None
    canary_age: float | None


@dataclass(frozen=True)
class WorkerState:
    name: str
    queues: list[str]
    heartbeat_age: float | None


@dataclass(frozen=True)
class Overview:
    queues: list[QueueState]
    workers: list[WorkerState]
    # The error of a source that did not answer; "" when it did.
    broker_error: str
    redis_error: str
    beat_age: float | None
    beat_holder: str | None
    outbox: OutboxBacklog
    outbox_oldest_age: float | None
    outbox_unpublishable: int
    dead_letters_waiting: int
    dead_letter_groups: list[dict]
    dead_letters_since: datetime
    stuck: dict[str, int]
    batches: list[Batch] = field(default_factory=list)


@dataclass(frozen=True)
class _RedisState:
    workers: dict[str, list[str]] = field(default_factory=dict)
    heartbeat_ages: dict[str, float] = field(default_factory=dict)
    canary_ages: dict[str, float] = field(default_factory=dict)
    beat_age: float | None = None
    beat_holder: str | None = None
    error: str = ""


def operations_overview() -> Overview:
    now = timezone.now()
    broker = broker_figures_bounded()
    state = _redis_state()
    queues = [
        QueueState(
            name=queue,
            length=broker.lengths.get(queue) if broker.up else None,
            oldest_age=broker.oldest_ages.get(queue) if broker.up else None,
            consumers=None
            if state.error
            else sum(queue in queues for queues in state.workers.values()),
            canary_age=state.canary_ages.get(queue),
        )
        for queue in settings.JOB_QUEUES
    ]
    workers = [
        WorkerState(name=name, queues=queues, heartbeat_age=state.heartbeat_ages.get(name))
        for name, queues in sorted(state.workers.items())
    ]
    backlog = outbox_backlog(now=now)
    since = now - DEAD_LETTER_WINDOW
    return Overview(
        queues=queues,
        workers=workers,
        broker_error="" if broker.up else broker.error,
        redis_error=state.error,
        beat_age=state.beat_age,
        beat_holder=state.beat_holder,
        outbox=backlog,
        outbox_oldest_age=(now - backlog.oldest_due_at).total_seconds()
        if backlog.oldest_due_at
        else None,
        outbox_unpublishable=outbox_unpublishable_count(),
        dead_letters_waiting=dead_letters_by_status()["dead"],
        dead_letter_groups=dead_letters_grouped(since=since),
        dead_letters_since=since,
        stuck=stuck_jobs_counted(),
        batches=list(batches_running().order_by("created_at")[:50]),
    )


def _redis_state() -> _RedisState:
    try:
        workers = worker_heartbeats()
        return _RedisState(
            workers=workers,
            heartbeat_ages=worker_heartbeat_ages(sorted(workers)),
            canary_ages=canary_ages(),
            beat_age=beat_heartbeat_age(),
            beat_holder=beat_lock_holder(),
        )
    except redis.RedisError as error:
        return _RedisState(error=f"{type(error).__name__}: {error}")
