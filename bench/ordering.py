"""What per-key ordering costs: the same tasks through `jobs.outbox.enqueue`, with an ordering
key and without.

Starts its own redis-server, database (a SQLite file in a temporary folder, or DATABASE_URL) and
two `celery worker` processes, then enqueues, in one transaction, KEYS keys x TASKS_PER_KEY
tasks of random durations (seeded, so every run and both sides sleep the same), the keys
interleaved, and times from the commit to the last task's end. Each round runs both sides, in
turns. It prints items/s of each, their ratio, the time between a task's end and the start of
the next one of its key, and the load average. It asserts nothing.

    .venv/bin/python bench/ordering.py [--keys 5] [--tasks-per-key 40] [--rounds 5]
"""

import sys
from pathlib import Path

# `python bench/ordering.py` puts bench/ first on sys.path, where bench/queue.py would shadow
# the standard library's `queue` (Celery and kombu import it). The repository root goes there.
sys.path.pop(0)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import itertools
import random
import statistics
import time
import uuid
from collections import defaultdict
from contextlib import ExitStack

import redis

from bench import support
from tests import processes

DEFAULT_KEYS = 5
DEFAULT_TASKS_PER_KEY = 40
DEFAULT_ROUNDS = 5
# Task durations, seconds: short enough that the handing on from one task of a key to the next
# weighs (it is what ordering costs), long enough to be work rather than a no-op.
SHORTEST, LONGEST = 0.005, 0.060
# As the tests run them: two workers with two pool processes each.
WORKERS, WORKER_CONCURRENCY = 2, 2
# The goal: ordered throughput at least 0.7x unordered.
MIN_RATIO = 0.7
# Tasks of tens of milliseconds; nothing ended for this long means a worker is stuck.
STUCK_SECONDS = 30.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=DEFAULT_KEYS)
    parser.add_argument("--tasks-per-key", type=int, default=DEFAULT_TASKS_PER_KEY)
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    options = parser.parse_args()

    database_given = support.database_given()
    with (
        support.scratch_folder(prefix="celery-saas-bench-ordering-") as workdir,
        processes.RedisServer(workdir=workdir) as redis_server,
        ExitStack() as workers,
    ):
        support.django_setup(redis_url=redis_server.url, workdir=workdir)
        _forget_bench_rows()  # left by a killed earlier run on the same DATABASE_URL
        for number in range(WORKERS):
            workers.enter_context(_worker(logfile=workdir / f"worker-{number}.log"))
        try:
            _run(options=options, broker=redis_server.client(), database_given=database_given)
        finally:
            _forget_bench_rows()


def _run(*, options: argparse.Namespace, broker: redis.Redis, database_given: bool) -> None:
    load_at_start = support.load_average()
    durations = random.Random(42)
    plan = [
        (f"key:{key}", durations.uniform(SHORTEST, LONGEST))
        for _ in range(options.tasks_per_key)
        for key in range(options.keys)
    ]
    _print_header(options=options, plan=plan, database_given=database_given)
    _measure(plan[: options.keys * 2], broker=broker, ordered=True)  # warm up both sides
    _measure(plan[: options.keys * 2], broker=broker, ordered=False)

    rates: dict[str, list[float]] = {"ordered": [], "unordered": []}
    handoffs: list[float] = []
    for turn in range(options.rounds):
        # Taking turns, first one side then the other, so drifting load weighs on both alike.
        for side in ("ordered", "unordered")[:: 1 if turn % 2 == 0 else -1]:
            seconds, records = _measure(plan, broker=broker, ordered=side == "ordered")
            rates[side].append(len(plan) / seconds)
            if side == "ordered":
                handoffs += _handoff_seconds(records)
    _print_results(rates, handoffs, load_at_start=load_at_start)


def _measure(
    plan: list[tuple[str, float]], *, broker: redis.Redis, ordered: bool
) -> tuple[float, list[tuple[str, float, float]]]:
    """Enqueue the plan in one transaction, as one request would; return the seconds from the
    start of that transaction to the last task's end, and each task's (key, start, end)."""
    from django.db import transaction

    from bench.tasks import step
    from jobs.outbox import enqueue

    run = uuid.uuid4().hex
    began = time.time()
    with transaction.atomic():
        for key, seconds in plan:
            enqueue(step, ordering_key=key if ordered else None, run=run, key=key, seconds=seconds)
    done, progress_at = 0, time.monotonic()
    while done < len(plan):
        time.sleep(0.02)
        now_done = broker.llen(f"bench:{run}")
        if now_done > done:
            done, progress_at = now_done, time.monotonic()
        elif time.monotonic() - progress_at > STUCK_SECONDS:
            raise RuntimeError(f"{len(plan) - done} tasks never ended")
    records = [
        (key, float(started), float(ended))
        for key, started, ended in (
            entry.decode().split() for entry in broker.lrange(f"bench:{run}", 0, -1)
        )
    ]
    return max(ended for _, _, ended in records) - began, records


def _handoff_seconds(records: list[tuple[str, float, float]]) -> list[float]:
    """For each ordered task after a key's first: from its predecessor's end to its own start,
    the time ordering adds to each task (marking the row finished, publishing the next one, the
    broker handing it to a worker)."""
    by_key: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for key, started, ended in records:
        by_key[key].append((started, ended))
    gaps = []
    for runs in by_key.values():
        gaps += [
            started - previous_end
            for (_, previous_end), (started, _) in itertools.pairwise(sorted(runs))
        ]
    return gaps


def _worker(*, logfile: Path) -> support.Worker:
    return support.Worker(
        name_prefix="bench-ordering",
        logfile=logfile,
        concurrency=WORKER_CONCURRENCY,
        options=["--include", "bench.tasks"],
    )


def _forget_bench_rows() -> None:
    """Delete the outbox rows the benchmark wrote; on a DATABASE_URL they would outlive it."""
    from bench.tasks import step
    from jobs.models import OutboxMessage

    OutboxMessage.objects.filter(task_name=step.name).delete()


def _print_header(
    *, options: argparse.Namespace, plan: list[tuple[str, float]], database_given: bool
) -> None:
    arguments = ["--keys", str(options.keys), "--tasks-per-key", str(options.tasks_per_key)]
    support.print_run_header(
        title="Per-key ordering: the same tasks through the outbox, with a key and without",
        script="bench/ordering.py",
        arguments=[*arguments, "--rounds", str(options.rounds)],
        database_given=database_given,
    )
    slots = WORKERS * WORKER_CONCURRENCY
    work = sum(seconds for _, seconds in plan)
    longest_key = max(
        sum(seconds for key, seconds in plan if key == name) for name, _ in plan[: options.keys]
    )
    print(f"workers     {WORKERS}, prefork, concurrency {WORKER_CONCURRENCY} each: {slots} slots")
    print(
        f"method      {len(plan)} tasks ({options.keys} keys x {options.tasks_per_key}), "
        f"{SHORTEST * 1000:.0f}-{LONGEST * 1000:.0f} ms each (seeded), enqueued in one "
        f"transaction; {options.rounds} rounds, the sides taking turns"
    )
    print("            items/s: tasks / (commit's transaction start -> last task's end)")
    print(
        f"bounds      unordered at best {len(plan) / (work / slots):.0f} items/s (the work spread "
        f"over {slots} slots); ordered at best "
        f"{len(plan) / max(longest_key, work / slots):.0f} items/s (the longest key, "
        f"{longest_key:.2f} s, one task after the other)"
    )
    print()


def _print_results(
    rates: dict[str, list[float]], handoffs: list[float], *, load_at_start: str
) -> None:
    ordered = statistics.median(rates["ordered"])
    unordered = statistics.median(rates["unordered"])
    print(f"{'':34}{'median':>10}{'min':>10}{'max':>10}")
    for side, values in rates.items():
        print(
            f"{side + ' (items/s)':34}{statistics.median(values):>10.0f}"
            f"{min(values):>10.0f}{max(values):>10.0f}"
        )
    print(
        f"{'hand-on, end -> next start (ms)':34}"
        f"{support.percentile(handoffs, 50) * 1000:>10.1f}"
        f"{'p99 ' + format(support.percentile(handoffs, 99) * 1000, '.1f'):>20}"
    )
    print()
    ratio = ordered / unordered
    verdict = "met" if ratio >= MIN_RATIO else "MISSED"
    print(f"ordered/unordered  {ratio:.2f}   goal >= {MIN_RATIO:g}   {verdict}")
    print(f"load average       {load_at_start} at the start, {support.load_average()} at the end")


if __name__ == "__main__":
    support.run(main)
