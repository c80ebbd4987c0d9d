"""/metrics: Prometheus text for an operator, the same whichever web process answers.

Every figure is read at scrape time from where the truth lives, never counted inside one web
process, so two web processes (or ten) give the same answer and a restart loses nothing:

- the broker: each queue's length (`celery_queue_length{queue_name}`, celery-exporter's name)
  and, on Redis, the age of its oldest message (`jobs_queue_oldest_message_age_seconds`), from
  the publish time each message carries in a header (PUBLISHED_AT_HEADER, stamped when any
  process publishes). RabbitMQ tells a queue's length to a passive declare, but shows no message
  without delivering it (which would count against the quorum queue's delivery limit), so the
  age is absent there. Read through a BoundedProbe (jobs/probes.py): a scrape waits
  METRICS_BROKER_TIMEOUT at most, and a broker that hangs shows as `jobs_broker_up 0` with the
  queue figures absent, not as a scrape that hangs.
- Redis: the workers' heartbeats (`celery_worker_up{hostname}`, `celery_active_worker_count`)
  and beat's (`jobs_beat_last_tick_age_seconds`), on the Redis server's clock.
- the database: dead letters by status, the outbox's rows due and the oldest one's wait,
  running batches and their items, and each app's user-visible jobs past their deadline
  (`jobs_stuck{job}`), from the queries the apps register in their metrics.py
  (`stuck_jobs_register`).
"""

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import redis
from celery import signals
from django.conf import settings
from django.db import DatabaseError
from django.db.models import Count, Sum
from django.utils import timezone
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from jobs.brokers import broker_is_rabbitmq, messages_waiting_in
from jobs.canary import canary_ages
from jobs.counters import (
    PUBLISHED_AT_HEADER,
    QUEUE_WAIT,
    RUNTIME,
    Histogram,
    counters_read,
    due_at,
    task_sent_count,
)
from jobs.heartbeats import beat_heartbeat_age, worker_heartbeats
from jobs.probes import BoundedProbe, Call, calls_awaited
from jobs.selectors import batches_running, dead_letters_by_status, outbox_backlog

logger = logging.getLogger(__name__)


@signals.before_task_publish.connect
def _stamp_publish_time(sender=None, headers=None, **details) -> None:
    # Every publish, from the web, a worker, beat or the outbox relay: a dictionary write. Set,
    # not defaulted: a retry or a deferral carries its first message's headers, and waits anew.
    if headers is not None:
        headers[PUBLISHED_AT_HEADER] = time.time()


@signals.after_task_publish.connect
def _count_sent(sender=None, **details) -> None:
    # After the broker took it: a publish that failed (and waits in the outbox) is not sent yet.
    task_sent_count(sender)


# --- the broker -----------------------------------------------------------------------------


@dataclass(frozen=True)
class BrokerFigures:
    up: bool
    lengths: dict[str, int] = field(default_factory=dict)
    # Queue -> seconds since its oldest waiting message was published; only queues that hold
    # one with a publish time (Redis).
    oldest_ages: dict[str, float] = field(default_factory=dict)
    error: str = ""


def broker_figures() -> BrokerFigures:
    if broker_is_rabbitmq():
        return BrokerFigures(up=True, lengths=messages_waiting_in(settings.JOB_QUEUES))
    return _redis_broker_figures()


def _redis_broker_figures() -> BrokerFigures:
    """Each queue's length and its oldest message, in one round trip. kombu pushes on the
    left of a queue's list and takes from the right: the oldest message is the last one (a
    message a worker gave back, restored to the right, is next too). Messages carry no
    priority here, so each queue is its one list (kombu's priority steps stay empty)."""
    client = _redis_broker_client()
    pipeline = client.pipeline(transaction=False)
    for queue in settings.JOB_QUEUES:
        pipeline.llen(queue)
        pipeline.lindex(queue, -1)
    answers = pipeline.execute()
    now = time.time()
    lengths, ages = {}, {}
    for index, queue in enumerate(settings.JOB_QUEUES):
        lengths[queue] = answers[2 * index]
        due = _due_at(answers[2 * index + 1])
        if due is not None:
            ages[queue] = max(0.0, now - due)
    return BrokerFigures(up=True, lengths=lengths, oldest_ages=ages)


_redis_broker_clients: dict[str, redis.Redis] = {}


def _redis_broker_client() -> redis.Redis:
    # Timeouts of its own, shorter than a scrape: the broker's connection options are made for
    # workers, which may wait.
    url = settings.CELERY_BROKER_URL
    if url not in _redis_broker_clients:
        _redis_broker_clients[url] = redis.Redis.from_url(
            url,
            socket_timeout=settings.METRICS_BROKER_TIMEOUT,
            socket_connect_timeout=settings.METRICS_BROKER_TIMEOUT,
        )
    return _redis_broker_clients[url]


def _due_at(raw: bytes | None) -> float | None:
    """When the message became due: a retry given back by a worker during a deploy waits in
    the list for its ETA, and is not late before it."""
    if raw is None:
        return None
    try:
        headers = json.loads(raw)["headers"]
        return due_at(headers, headers.get("eta"))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None  # not a Celery message


BROKER_PROBE = BoundedProbe(
    "broker",
    broker_figures,
    failed=lambda error: BrokerFigures(up=False, error=f"{type(error).__name__}: {error}"),
    # Prometheus scrapes every 15 s or so; two web processes scraped together read once each.
    cache_seconds=lambda: 1.0,
    thread_prefix="metrics",
)


def broker_figures_bounded() -> BrokerFigures:
    """The broker's figures, or `up=False` once METRICS_BROKER_TIMEOUT passed without them."""
    pending = BROKER_PROBE.result_or_call()
    calls_awaited([pending], timeout=settings.METRICS_BROKER_TIMEOUT)
    if not isinstance(pending, Call):
        return pending
    if pending.future.done():
        return pending.future.result()
    return BrokerFigures(up=False, error=f"no answer within {settings.METRICS_BROKER_TIMEOUT}s")


# --- user-visible jobs past their deadline ---------------------------------------------------

_stuck_jobs: dict[str, Callable[[], int]] = {}


def stuck_jobs_register(job: str, count: Callable[[], int]) -> None:
    """Declare how many of a kind of user-visible job are past their deadline now (uploads,
    reports, erasures): a query on an index, called on every scrape. Apps call it in their
    metrics.py, which the jobs app imports at start-up."""
    if job in _stuck_jobs:
        raise ValueError(f"stuck jobs {job!r} are registered twice")
    _stuck_jobs[job] = count


def stuck_jobs_counted() -> dict[str, int]:
    return {job: count() for job, count in sorted(_stuck_jobs.items())}


# --- the collector --------------------------------------------------------------------------


class PlatformCollector(Collector):
    def describe(self) -> list[Metric]:
        # Without it, registering would call collect() to learn the names: queries to the
        # database and the broker at start-up, before migrations have even run.
        return []

    def collect(self) -> Iterator[Metric]:
        yield from self._broker()
        # Each source on its own: one that is down leaves its figures out (and says so in its
        # *_up gauge), never the whole scrape, which the operator needs most just then.
        try:
            redis_figures = [*self._heartbeats(), *self._tasks()]
        except redis.RedisError as error:
            logger.warning("metrics: no figures from Redis: %r", error)
            redis_figures = []
        yield _gauge(
            "jobs_redis_up", "Whether Redis answered this scrape.", int(bool(redis_figures))
        )
        yield from redis_figures
        try:
            database_figures = list(self._database())
        except DatabaseError as error:
            logger.warning("metrics: no figures from the database: %r", error)
            database_figures = []
        yield _gauge(
            "jobs_database_up",
            "Whether the database answered this scrape.",
            int(bool(database_figures)),
        )
        yield from database_figures

    def _tasks(self) -> Iterator[Metric]:
        fields = counters_read()
        counters = {
            name: CounterMetricFamily(f"celery_task_{name}", documentation, labels=["name"])
            for name, documentation in (
                ("sent", "Task messages published."),
                ("received", "Task runs that ended, whatever their outcome."),
                ("succeeded", "Task runs that succeeded."),
                ("retried", "Task runs that failed and were retried."),
            )
        }
        failed = CounterMetricFamily(
            "celery_task_failed",
            "Task runs that failed for good (dead-lettered), by exception.",
            labels=["name", "exception"],
        )
        deferrals = CounterMetricFamily(
            "jobs_rate_limit_deferrals",
            "Task runs deferred to their slot of a provider's rate limit.",
            labels=["provider"],
        )
        for key, value in fields.items():
            metric, _, labels = key.partition("|")
            if metric in counters:
                counters[metric].add_metric([labels], value)
            elif metric == "failed":
                failed.add_metric(labels.split("|", 1), value)
            elif metric == "deferrals":
                deferrals.add_metric([labels], value)
        yield from counters.values()
        yield failed
        yield deferrals
        yield _histogram(fields, RUNTIME, "celery_task_runtime_seconds", "Seconds a task run took.")
        yield _histogram(
            fields,
            QUEUE_WAIT,
            "jobs_task_queue_wait_seconds",
            "Seconds a message waited in its queue before its run began, from its publish "
            "or its ETA (countdowns, retries and rate-limit slots are waits on purpose).",
        )

    def _broker(self) -> Iterator[Metric]:
        figures = broker_figures_bounded()
        if not figures.up:
            logger.warning("metrics: the broker's figures are missing: %s", figures.error)
        yield _gauge("jobs_broker_up", "Whether the broker answered this scrape.", int(figures.up))
        length = GaugeMetricFamily(
            "celery_queue_length", "Messages waiting in the queue.", labels=["queue_name"]
        )
        for queue, count in figures.lengths.items():
            length.add_metric([queue], count)
        yield length
        age = GaugeMetricFamily(
            "jobs_queue_oldest_message_age_seconds",
            "Seconds since the oldest message waiting in the queue was published (Redis).",
            labels=["queue_name"],
        )
        for queue, seconds in figures.oldest_ages.items():
            age.add_metric([queue], seconds)
        yield age

    def _heartbeats(self) -> Iterator[Metric]:
        workers = worker_heartbeats()
        beat_age = beat_heartbeat_age()
        # Only live workers: a dead one's record expires, and its name with it. Alert on the
        # count and on each queue's consumers, not on a worker's series going to 0.
        up = GaugeMetricFamily(
            "celery_worker_up", "A worker whose heartbeat is fresh.", labels=["hostname"]
        )
        for name in sorted(workers):
            up.add_metric([name], 1)
        yield up
        yield _gauge("celery_active_worker_count", "Workers with a fresh heartbeat.", len(workers))
        consumers = GaugeMetricFamily(
            "jobs_queue_consumers",
            "Workers with a fresh heartbeat that consume the queue (0: its work waits).",
            labels=["queue_name"],
        )
        for queue in settings.JOB_QUEUES:
            consumers.add_metric([queue], sum(queue in queues for queues in workers.values()))
        yield consumers
        beat = GaugeMetricFamily(
            "jobs_beat_last_tick_age_seconds",
            "Seconds since beat last ticked; no sample when beat never did (or an hour ago).",
        )
        if beat_age is not None:
            beat.add_metric([], beat_age)
        yield beat
        canary = GaugeMetricFamily(
            "jobs_canary_age_seconds",
            "Seconds since a canary sent by beat last came back from the queue through a worker "
            "(+Inf: none has since Redis started).",
            labels=["queue_name"],
        )
        for queue, age in canary_ages().items():
            canary.add_metric([queue], age)
        yield canary

    def _database(self) -> Iterator[Metric]:
        letters = GaugeMetricFamily(
            "jobs_dead_letters", "Dead letters, by status.", labels=["status"]
        )
        for status, count in dead_letters_by_status().items():
            letters.add_metric([status], count)
        yield letters

        now = timezone.now()
        backlog = outbox_backlog(now=now)
        yield _gauge("jobs_outbox_pending", "Outbox rows due and not yet published.", backlog.due)
        oldest = backlog.oldest_due_at
        yield _gauge(
            "jobs_outbox_oldest_pending_age_seconds",
            "Seconds the oldest outbox row due has waited to be published (0: none).",
            (now - oldest).total_seconds() if oldest else 0.0,
        )

        running = batches_running().aggregate(
            count=Count("pk"), total=Sum("total"), done=Sum("done"), failed=Sum("failed")
        )
        yield _gauge("jobs_batches_running", "Batches not yet finished.", running["count"])
        items = GaugeMetricFamily(
            "jobs_batch_items", "Items of the running batches, by state.", labels=["state"]
        )
        done, failed = running["done"] or 0, running["failed"] or 0
        items.add_metric(["done"], done)
        items.add_metric(["failed"], failed)
        items.add_metric(["waiting"], (running["total"] or 0) - done - failed)
        yield items

        stuck = GaugeMetricFamily(
            "jobs_stuck",
            "User-visible jobs past their deadline, by kind (their sweep acts on them).",
            labels=["job"],
        )
        for job, count in stuck_jobs_counted().items():
            stuck.add_metric([job], count)
        yield stuck


def _histogram(
    fields: dict[str, float], histogram: Histogram, name: str, documentation: str
) -> HistogramMetricFamily:
    """The histogram's buckets per task, added up as Prometheus counts them (each bucket holds
    the observations at or below its bound)."""
    family = HistogramMetricFamily(name, documentation, labels=["name"])
    prefix = f"{histogram.name}_count|"
    for key in fields:
        if not key.startswith(prefix):
            continue
        task = key[len(prefix) :]
        cumulative, buckets = 0.0, []
        for bound in histogram.buckets:
            cumulative += fields.get(f"{histogram.name}_bucket|{task}|{bound}", 0.0)
            buckets.append((str(float(bound)), cumulative))
        # Every observation: the stored count, not the buckets added up, so observations of
        # bounds since changed still count.
        buckets.append(("+Inf", fields[key]))
        family.add_metric(
            [task], buckets=buckets, sum_value=fields.get(f"{histogram.name}_sum|{task}", 0.0)
        )
    return family


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)
