"""A fan-out of no-op items four ways: the platform's batch (jobs/batches.py), one message per
item (`delay()` each), a Celery group of the same per-item tasks, and a chord of them.

Starts its own redis-server, database (a SQLite file in a temporary folder, or DATABASE_URL)
and `celery worker`, then prints, for each way and number of items: the time the caller spends
enqueueing, items per second from the first enqueue to the last item done, the broker's memory
peak (Redis `used_memory` above its level before the run) and the enqueuing process's memory
growth (its peak resident set above its level just before enqueueing). Then the batch's items per
second by chunk size, which is how JOBS_BATCH_CHUNK_SIZE was chosen. It asserts nothing: timings
belong to the machine they were taken on.

    .venv/bin/python bench/batches.py [--sizes 10000,100000] [--chunk-sizes 10,50,100,500]
"""

import sys
from pathlib import Path

if Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    # `python bench/batches.py` puts bench/ first on sys.path, where bench/queue.py would shadow
    # the standard library's `queue`, which Celery and kombu import. The repository root goes
    # there instead, so `config`, `jobs` and `bench.tasks` import as they do in the worker.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse
import json
import platform
import resource
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass

import celery
import django
import redis

from bench import support
from tests import processes

DEFAULT_SIZES = (10_000, 100_000)
# A chord stores every header task's result in Redis and counts them there; at 100,000 items the
# results alone hold the broker's memory for a day (CELERY_RESULT_EXPIRES) and the run takes
# minutes more than a group, to show what is clear at 10,000 already. Above this, no chord.
CHORD_MAX_ITEMS = 10_000
# Items for the chunk-size sweep: enough that the smallest chunks make thousands of messages.
KNEE_ITEMS = 20_000
DEFAULT_CHUNK_SIZES = (10, 25, 50, 100, 250, 500, 1000, 2000)
# The Procfile's worker at its default size.
WORKER_CONCURRENCY = 2
# Items each way runs once before anything is timed: pool processes forked, connections open.
WARM_UP_ITEMS = 500
# How often the broker's memory is sampled while a fan-out runs.
BROKER_SAMPLE_SECONDS = 0.05
# A fan-out slower than this, plus a margin, is stuck: the slowest way drains ~250 items/s here.
STUCK_SECONDS = 120.0
MIN_ITEMS_PER_SECOND = 50
WAYS = ("batch", "message per item", "group", "chord")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)))
    parser.add_argument("--chunk-sizes", default=",".join(map(str, DEFAULT_CHUNK_SIZES)))
    # Internal: the enqueuing process, started once per measurement so that its memory peak is
    # its own, not one an earlier way left in a shared process.
    parser.add_argument("--enqueue", choices=WAYS, help=argparse.SUPPRESS)
    parser.add_argument("--items", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--chunk-size", type=int, default=0, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.enqueue:
        _enqueue(arguments.enqueue, items=arguments.items, run=arguments.run,
                 chunk_size=arguments.chunk_size)  # fmt: skip
        return
    sizes = [int(size) for size in arguments.sizes.split(",")]
    chunk_sizes = [int(size) for size in arguments.chunk_sizes.split(",") if size]

    database_given = support.database_given()
    with (
        support.scratch_folder(prefix="celery-saas-bench-") as workdir,
        processes.RedisServer(workdir=workdir) as redis_server,
    ):
        support.django_setup(redis_url=redis_server.url, workdir=workdir)
        worker = support.Worker(
            name_prefix="bench",
            logfile=workdir / "worker.log",
            concurrency=WORKER_CONCURRENCY,
            # No pool process recycling: a recycle stalls the task handed to the departing
            # process for seconds, which would land on one way at random.
            options=["--include", "bench.tasks", "--max-tasks-per-child", str(10**9)],
        )
        with worker:
            _run(
                sizes=sizes,
                chunk_sizes=chunk_sizes,
                broker=redis_server.client(),
                worker=worker,
                arguments=sys.argv[1:],
                database_given=database_given,
            )


@dataclass(frozen=True)
class Measured:
    enqueue_seconds: float
    items_per_second: float
    broker_peak_bytes: int
    enqueuer_growth_bytes: int


def _run(
    *,
    sizes: list[int],
    chunk_sizes: list[int],
    broker: redis.Redis,
    worker: support.Worker,
    arguments: list[str],
    database_given: bool,
) -> None:
    from django.conf import settings

    _print_header(arguments=arguments, database_given=database_given)
    for way in WAYS:
        _measure(way, items=WARM_UP_ITEMS, broker=broker, worker=worker)

    print(
        f"{'items':>8}  {'way':18}{'enqueue (s)':>12}{'items/s':>10}{'vs per item':>13}"
        f"{'broker peak (MB)':>18}{'enqueuer +MB':>14}"
    )
    for items in sizes:
        results = {
            way: _measure(way, items=items, broker=broker, worker=worker)
            for way in WAYS
            if way != "chord" or items <= CHORD_MAX_ITEMS
        }
        per_item = results["message per item"].items_per_second
        for way, result in results.items():
            print(
                f"{items:>8}  {way:18}{result.enqueue_seconds:>12.2f}"
                f"{result.items_per_second:>10.0f}{result.items_per_second / per_item:>12.1f}x"
                f"{result.broker_peak_bytes / 1e6:>18.1f}"
                f"{result.enqueuer_growth_bytes / 1e6:>14.1f}"
            )
        if "chord" not in results:
            print(
                f"{items:>8}  {'chord':18}  skipped: above {CHORD_MAX_ITEMS} items (see the script)"
            )
        print()
    print(f"batch ({settings.JOBS_BATCH_CHUNK_SIZE} items per chunk) against one message per item:")
    print("target: at least 5x the items/s, the enqueuer's memory flat (see the table)")
    print()

    if chunk_sizes:
        print(f"the batch by chunk size, {KNEE_ITEMS} items")
        print(f"{'chunk size':>10}{'messages':>10}{'enqueue (s)':>13}{'items/s':>10}")
        for chunk_size in chunk_sizes:
            result = _measure(
                "batch", items=KNEE_ITEMS, broker=broker, worker=worker, chunk_size=chunk_size
            )
            messages = -(-KNEE_ITEMS // chunk_size)
            print(
                f"{chunk_size:>10}{messages:>10}{result.enqueue_seconds:>13.2f}"
                f"{result.items_per_second:>10.0f}"
            )
        print()
    # Other processes' load moves every figure; the header gave it at the start.
    print(f"load average {support.load_average()} at the end")


def _measure(
    way: str, *, items: int, broker: redis.Redis, worker: support.Worker, chunk_size: int = 0
) -> Measured:
    """Enqueue `items` one `way` from a process of its own, and wait for the last one."""
    run = uuid.uuid4().hex
    baseline = broker.info("memory")["used_memory"]
    sampler = _PeakSampler(broker, floor=baseline)
    sampler.start()
    try:
        child = subprocess.run(
            [sys.executable, __file__, "--enqueue", way, "--items", str(items), "--run", run,
             "--chunk-size", str(chunk_size)],
            capture_output=True, text=True, cwd=processes.REPO_ROOT,
        )  # fmt: skip
        if child.returncode:
            raise RuntimeError(f"enqueueing failed:\n{child.stdout}{child.stderr}")
        enqueued = json.loads(child.stdout.strip().splitlines()[-1])
        # Short waits: the client's socket timeout is shorter than a long fan-out.
        deadline = time.monotonic() + STUCK_SECONDS + items / MIN_ITEMS_PER_SECOND
        while (popped := broker.blpop([f"bench:{run}"], timeout=1)) is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {way} of {items} items is stuck:\n{worker.log_tail()}")
    finally:
        sampler.stop()
    finished_at = float(popped[1])
    _forget(broker, run)
    return Measured(
        enqueue_seconds=enqueued["seconds"],
        items_per_second=items / (finished_at - enqueued["started_at"]),
        broker_peak_bytes=sampler.peak - baseline,
        enqueuer_growth_bytes=enqueued["growth_bytes"],
    )


class _PeakSampler(threading.Thread):
    """The highest Redis `used_memory` seen while it runs, at least `floor` (the level before):
    a run shorter than a sample, or memory that only fell, peaks at no growth, not below it."""

    def __init__(self, broker: redis.Redis, *, floor: int) -> None:
        super().__init__(daemon=True)
        self.broker = broker
        self.peak = floor
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.wait(BROKER_SAMPLE_SECONDS):
            self.peak = max(self.peak, self.broker.info("memory")["used_memory"])

    def stop(self) -> None:
        self._stopped.set()
        self.join()


def _forget(broker: redis.Redis, run: str) -> None:
    """Delete the run's keys, and the results a chord stored, so that the next run's broker
    figure starts from the same level."""
    broker.delete(f"bench:{run}", f"bench:count:{run}")
    for pattern in ("celery-task-meta-*", "celery-task-group-*", "chord-unlock-*"):
        keys = list(broker.scan_iter(pattern, count=1000))
        for start in range(0, len(keys), 1000):
            broker.delete(*keys[start : start + 1000])


# --- the enqueuing process ---------------------------------------------------------------------


def _enqueue(way: str, *, items: int, run: str, chunk_size: int) -> None:
    """Enqueue, then print one JSON line: when it started, how long it took, and how far the
    process's resident set grew past its peak before (Django, Celery and connections loaded)."""
    django.setup()
    from celery import chord, group
    from django.db import connection, transaction

    from bench.tasks import batch_finished, chord_finished, item_noop, item_noop_result
    from config.celery import app
    from jobs.batches import batch_start

    connection.ensure_connection()
    with app.producer_or_acquire() as producer:
        producer.connection.ensure_connection()
    before = _peak_rss_bytes()
    started_at = time.time()
    if way == "batch":
        with transaction.atomic():
            batch_start(
                kind="bench.noop",
                items=({"n": n} for n in range(items)),
                on_complete=batch_finished,
                callback_kwargs={"run": run},
                chunk_size=chunk_size or None,
            )
    elif way == "message per item":
        for _ in range(items):
            item_noop.delay(run=run, total=items)
    elif way == "group":
        group(item_noop.s(run=run, total=items) for _ in range(items)).apply_async()
    else:
        chord(item_noop_result.s() for _ in range(items))(chord_finished.s(run=run))
    seconds = time.time() - started_at
    growth = _peak_rss_bytes() - before
    print(json.dumps({"started_at": started_at, "seconds": seconds, "growth_bytes": growth}))


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux counts KiB


# --- output --------------------------------------------------------------------------------


def _print_header(*, arguments: list[str], database_given: bool) -> None:
    from django.conf import settings

    support.print_run_header(
        title="A fan-out of no-op items: a batch, one message per item, a group, a chord",
        script="bench/batches.py",
        arguments=arguments,
        database_given=database_given,
    )
    print(
        f"versions    Python {platform.python_version()}, Celery {celery.__version__}, "
        f"Django {django.__version__}, redis-server {support.redis_server_version()}"
    )
    print(
        f"worker      one, prefork, concurrency {WORKER_CONCURRENCY}, prefetch multiplier "
        f"{settings.CELERY_WORKER_PREFETCH_MULTIPLIER}, all queues, no process recycling"
    )
    print(
        f"method      each way enqueued from a process of its own, after a warm-up of "
        f"{WARM_UP_ITEMS} items; batch: {settings.JOBS_BATCH_CHUNK_SIZE} items per chunk"
    )
    print("            items/s: first enqueue -> last item done (a batch's on_complete; the")
    print("                     per-item task that counts the last item; a chord's callback)")
    print("            broker peak: Redis used_memory above its level before the run")
    print("            enqueuer +MB: the enqueuing process's peak RSS above its peak before")
    print()


if __name__ == "__main__":
    support.run(main)
