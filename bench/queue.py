"""Plain Celery `delay()` against the durable `jobs.outbox.enqueue()`, for no-op tasks; and
what the platform's base task costs each task against Celery's own.

Starts its own redis-server, database (a SQLite file in a temporary folder, or DATABASE_URL)
and `celery worker`, then prints two tables: enqueue rate, enqueue-to-start latency and drain
rate of both paths, their ratios, and whether the durable path meets its targets; and the drain
rate of the same no-op declared on Celery's Task and on the platform's base task (plain and
idempotent), all published with `delay()`. It asserts nothing: timings belong to the machine
they were taken on.

    .venv/bin/python bench/queue.py [--tasks 2000]
"""

import sys
from pathlib import Path

# `python bench/queue.py` puts bench/ first on sys.path, where this file would shadow the
# standard library's `queue`, which Celery and kombu import. The repository root goes there
# instead, so `config`, `jobs` and `bench.tasks` import as they do in the worker.
sys.path.pop(0)  # this file's folder (with `python -m`, the working directory)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import platform
import time
import uuid
from collections.abc import Callable

import celery
import django
import kombu
import redis

from bench import support
from tests import processes

DEFAULT_TASKS = 2000
# Enough for both pool processes to have run tasks, and for the broker and database connections
# to be open, before anything is timed.
WARM_UP_TASKS = 200
# Backlogs per path, taking turns with the other path: load from other processes on the machine
# drifts over seconds, and five turns spread it over both paths instead of favouring one.
ROUNDS = 5
# The Procfile's worker at its default size.
WORKER_CONCURRENCY = 2
# The targets for the durable path.
MAX_EXTRA_MS_PER_TASK = 2.0
MIN_DRAIN_RATIO = 0.8
# The platform's base task may cost each task at most a quarter of plain Celery's drain rate.
MIN_BASE_TASK_DRAIN_RATIO = 0.8
# A no-op starts within milliseconds; one that has not started after this long (or a backlog
# that made no progress for this long) means the worker is stuck, not slow.
STUCK_SECONDS = 30.0

Publish = Callable[[str], None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tasks", type=int, default=DEFAULT_TASKS, help=f"tasks per measurement ({DEFAULT_TASKS})"
    )
    tasks = parser.parse_args().tasks
    if tasks < 2:
        parser.error("--tasks must be at least 2: a drain rate needs two starts")

    database_given = support.database_given()
    with (
        support.scratch_folder(prefix="celery-saas-bench-") as workdir,
        processes.RedisServer(workdir=workdir) as redis_server,
    ):
        support.django_setup(redis_url=redis_server.url, workdir=workdir)
        _forget_bench_rows()  # left by a killed earlier run on the same DATABASE_URL
        with _worker(logfile=workdir / "worker.log") as worker:
            try:
                measure = Measure(worker=worker, broker=redis_server.client())
                _run(tasks=tasks, measure=measure, database_given=database_given)
            finally:
                _forget_bench_rows()


def _run(*, tasks: int, measure: "Measure", database_given: bool) -> None:
    from django.db import connection, transaction
    from django.test.utils import CaptureQueriesContext

    from bench.tasks import (
        noop,
        noop_idempotent,
        noop_plain_celery,
        noop_plain_celery_late_ack,
    )
    from jobs.outbox import enqueue

    def plain(run: str) -> None:
        # Outside any transaction: inside one, the project's base task defers the publish to
        # on_commit, which is no longer the plain baseline.
        noop.delay(run=run, enqueued_at=time.time())

    def durable(run: str) -> None:
        enqueued_at = time.time()  # the request's transaction starts here
        with transaction.atomic():
            enqueue(noop, run=run, enqueued_at=enqueued_at)

    paths = {"plain": plain, "durable": durable}
    _print_header(tasks=tasks, database_given=database_given)
    for _ in range(WARM_UP_TASKS):
        for publish in paths.values():
            measure.latency(publish)
    with CaptureQueriesContext(connection) as queries:
        measure.latency(durable)

    # The two paths take turns, task by task for the latency and round by round for the
    # backlogs, so load that comes and goes on the machine weighs on both alike.
    latencies = {name: [] for name in paths}
    for _ in range(tasks):
        for name, publish in paths.items():
            latencies[name].append(measure.latency(publish))
    publish_seconds, drain_rates = _backlogs(measure, paths, tasks=tasks)
    results = {
        name: {
            "enqueue_rate": tasks / publish_seconds[name],
            "ms_per_enqueue": publish_seconds[name] / tasks * 1000,
            "p50_ms": support.percentile(latencies[name], 50) * 1000,
            "p99_ms": support.percentile(latencies[name], 99) * 1000,
            "drain_rate": drain_rates[name],
        }
        for name in paths
    }
    _print_results(results, statements=[query["sql"] for query in queries.captured_queries])

    # The same no-op on three bases, all published alike: only what runs around it differs.
    bases = {
        "Celery's Task": noop_plain_celery,
        "Celery's Task, late ack": noop_plain_celery_late_ack,
        "platform": noop,
        "platform, idempotent": noop_idempotent,
    }
    base_paths = {
        name: (lambda run, task=task: task.delay(run=run, enqueued_at=time.time()))
        for name, task in bases.items()
    }
    for publish in base_paths.values():
        for _ in range(WARM_UP_TASKS // 10):
            measure.latency(publish)
    _, base_rates = _backlogs(measure, base_paths, tasks=tasks)
    _print_base_results(base_rates)


def _backlogs(
    measure: "Measure", paths: dict[str, Publish], *, tasks: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Each path's seconds publishing `tasks` tasks in backlogs, and its drain rate (tasks/s).
    The paths take turns round by round, so load that comes and goes on the machine weighs on
    all alike."""
    publish_seconds = dict.fromkeys(paths, 0.0)
    drain_seconds = dict.fromkeys(paths, 0.0)
    drained = dict.fromkeys(paths, 0)
    for turn, size in enumerate(_round_sizes(tasks)):
        for name in list(paths)[:: 1 if turn % 2 == 0 else -1]:
            published_in, drained_in = measure.backlog(paths[name], size)
            publish_seconds[name] += published_in
            drain_seconds[name] += drained_in
            # Between a round's first and last start lie size - 1 whole tasks; the last one's
            # own run is a no-op's, too short to count.
            drained[name] += size - 1
    return publish_seconds, {name: drained[name] / drain_seconds[name] for name in paths}


def _round_sizes(tasks: int) -> list[int]:
    """`tasks` split into ROUNDS backlogs of at least two tasks (a drain needs two starts)."""
    rounds = min(ROUNDS, tasks // 2)
    return [tasks // rounds + (1 if turn < tasks % rounds else 0) for turn in range(rounds)]


class Measure:
    """The measurements. The no-op task reports its start into a Redis list named after the
    measurement's run, which this process reads."""

    def __init__(self, *, worker: support.Worker, broker: redis.Redis) -> None:
        from bench.tasks import noop
        from config.celery import app

        self.worker = worker
        self.broker = broker
        # The queue the no-ops go to, which the worker stops consuming while a backlog builds.
        self.queue = app.amqp.router.route({}, noop.name)["queue"].name

    def latency(self, publish: Publish) -> float:
        """Seconds from the caller starting to enqueue one task to the worker starting it,
        with nothing else in flight: the path's own latency, not time queued behind others."""
        run = uuid.uuid4().hex
        publish(run)
        popped = self.broker.blpop([f"bench:{run}"], timeout=STUCK_SECONDS)
        if popped is None:
            raise RuntimeError(f"a task did not start:\n{self.worker.log_tail()}")
        enqueued_at, started_at = (float(stamp) for stamp in popped[1].split())
        return started_at - enqueued_at

    def backlog(self, publish: Publish, count: int) -> tuple[float, float]:
        """Publish `count` tasks while the worker consumes nothing, then let it drain them.

        Returns the seconds publishing took (each task its own call, as requests make them)
        and the seconds from the first task's start to the last one's. The backlog is complete
        before the first task starts, so the drain times the worker alone, not the publisher.
        """
        run = uuid.uuid4().hex
        self.worker.pause(self.queue)
        try:
            started = time.perf_counter()
            for _ in range(count):
                publish(run)
            publish_seconds = time.perf_counter() - started
            if self.broker.llen(f"bench:{run}"):
                raise RuntimeError("the worker ran tasks while paused: the drain is not measurable")
        finally:
            self.worker.resume(self.queue)
        starts = sorted(started_at for _, started_at in self._records(run, count))
        return publish_seconds, starts[-1] - starts[0]

    def _records(self, run: str, count: int) -> list[tuple[float, float]]:
        key = f"bench:{run}"
        done, progress_at = 0, time.monotonic()
        while done < count:
            time.sleep(0.05)  # 20 polls a second cost the worker nothing measurable
            now_done = self.broker.llen(key)
            if now_done > done:
                done, progress_at = now_done, time.monotonic()
            elif time.monotonic() - progress_at > STUCK_SECONDS:
                raise RuntimeError(f"{count - done} tasks never ran:\n{self.worker.log_tail()}")
        entries = self.broker.lrange(key, 0, -1)
        return [tuple(float(stamp) for stamp in entry.split()) for entry in entries]


def _worker(*, logfile: Path) -> support.Worker:
    """One worker on every queue, as the Procfile runs it, that also loads the no-op task."""
    return support.Worker(
        name_prefix="bench",
        logfile=logfile,
        concurrency=WORKER_CONCURRENCY,
        options=[
            "--include", "bench.tasks",
            # No pool process recycling during the run: a recycle held the task already handed
            # to the departing process for about 3 s here, which would land on whichever path's
            # backlog crossed the limit and swamp the difference between the paths.
            "--max-tasks-per-child", str(10**9),
        ],
    )  # fmt: skip


# --- set-up -------------------------------------------------------------------------------


def _forget_bench_rows() -> None:
    """Delete the outbox rows the benchmark wrote; on a DATABASE_URL they would outlive it."""
    from bench.tasks import noop
    from jobs.models import OutboxMessage

    OutboxMessage.objects.filter(task_name=noop.name).delete()


# --- output -------------------------------------------------------------------------------


def _print_header(*, tasks: int, database_given: bool) -> None:
    from django.conf import settings

    support.print_run_header(
        title="Plain Celery delay() vs durable jobs.outbox.enqueue(), no-op tasks",
        script="bench/queue.py",
        arguments=["--tasks", str(tasks)],
        database_given=database_given,
        # How commits reach the disk decides what each transaction costs.
        commit_settings=True,
    )
    print(
        f"versions    Python {platform.python_version()}, Celery {celery.__version__}, "
        f"kombu {kombu.__version__}, Django {django.__version__}, "
        f"redis-server {support.redis_server_version()}"
    )
    print(
        f"worker      one, prefork, concurrency {WORKER_CONCURRENCY}, prefetch multiplier "
        f"{settings.CELERY_WORKER_PREFETCH_MULTIPLIER}, all queues, no process recycling"
    )
    print(
        f"method      {tasks} tasks per path and figure, after {WARM_UP_TASKS} warm-up tasks per "
        "path; the paths take turns"
    )
    print(
        "            enqueue rate: each task its own call (durable: its own transaction), published"
    )
    print(
        f"                          in {len(_round_sizes(tasks))} backlogs while the worker "
        "consumes nothing"
    )
    print("            latency:      caller starts enqueueing -> task starts, one task in flight")
    print("            drain rate:   the worker on those backlogs, first start to last start")
    print()


def _print_results(results: dict[str, dict[str, float]], *, statements: list[str]) -> None:
    plain, durable = results["plain"], results["durable"]
    rows = [
        ("enqueue rate (tasks/s)", "enqueue_rate", "{:.0f}"),
        ("time per enqueue (ms)", "ms_per_enqueue", "{:.3f}"),
        ("enqueue -> start p50 (ms)", "p50_ms", "{:.2f}"),
        ("enqueue -> start p99 (ms)", "p99_ms", "{:.2f}"),
        ("drain rate (tasks/s)", "drain_rate", "{:.0f}"),
    ]
    print(f"{'':36}{'plain delay()':>14}{'durable enqueue()':>19}{'durable/plain':>15}")
    for label, key, number in rows:
        print(
            f"{label:36}{number.format(plain[key]):>14}{number.format(durable[key]):>19}"
            f"{durable[key] / plain[key]:>15.2f}"
        )
    print()
    extra_ms = durable["ms_per_enqueue"] - plain["ms_per_enqueue"]
    drain_ratio = durable["drain_rate"] / plain["drain_rate"]
    print(f"{'target (from the issue)':36}{'measured':>14}{'target':>19}{'verdict':>15}")
    for label, measured, target, met in [
        (
            "extra cost of durable enqueue (ms)",
            f"{extra_ms:+.3f}",
            f"<= {MAX_EXTRA_MS_PER_TASK:g}",
            extra_ms <= MAX_EXTRA_MS_PER_TASK,
        ),
        (
            "drain rate durable/plain",
            f"{drain_ratio:.2f}",
            f">= {MIN_DRAIN_RATIO:g}",
            drain_ratio >= MIN_DRAIN_RATIO,
        ),
    ]:
        print(f"{label:36}{measured:>14}{target:>19}{'met' if met else 'MISSED':>15}")
    print()
    print(f"SQL per durable enqueue: {'; '.join(_statement_head(sql) for sql in statements)}")
    print()


def _print_base_results(rates: dict[str, float]) -> None:
    baseline_name, baseline = next(iter(rates.items()))
    print("the same no-op on each base, published with delay(), drained in the same backlogs")
    print(f"{'':36}{'drain (tasks/s)':>16}{'ms per task':>13}{'vs ' + baseline_name:>18}")
    for name, rate in rates.items():
        print(f"{name:36}{rate:>16.0f}{1000 / rate:>13.3f}{rate / baseline:>18.2f}")
    print()
    print(f"{'target (from the design)':36}{'measured':>16}{'target':>13}{'verdict':>18}")
    for name in ("platform", "platform, idempotent"):
        ratio = rates[name] / baseline
        verdict = "met" if ratio >= MIN_BASE_TASK_DRAIN_RATIO else "MISSED"
        print(
            f"{name + ' / ' + baseline_name:36}{ratio:>16.2f}"
            f"{f'>= {MIN_BASE_TASK_DRAIN_RATIO:g}':>13}{verdict:>18}"
        )
    # Late ack costs throughput by itself: the worker takes its next message only once the
    # last one is acknowledged, after it ran. This ratio is what the platform adds beyond it.
    late_ack = rates["platform, idempotent"] / rates["Celery's Task, late ack"]
    print(f"{'platform, idempotent / late ack':36}{late_ack:>16.2f}{'(same ack)':>13}")


def _statement_head(sql: str) -> str:
    """`INSERT INTO "jobs_outboxmessage"`: a statement up to the table it touches."""
    words = sql.split()
    for position, word in enumerate(words[:3]):
        if word.startswith('"'):
            return " ".join(words[: position + 1])
    return " ".join(words[:2])


if __name__ == "__main__":
    support.run(main)
