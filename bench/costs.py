"""What one task costs the broker, Redis and the database: commands and statements, counted, not
timed, for a capacity model (docs/scaling.md).

Starts its own redis-server (the broker and the platform's Redis, as `make run` has them) and a
database (a SQLite file in a temporary folder, or DATABASE_URL). Then, for N tasks each:

  1. `delay()` outside a transaction, no worker running: Redis commands per publish;
  2. `enqueue()` in a transaction of its own, no worker running: SQL statements (and of them,
     writes) and Redis commands per durable enqueue, its publish after commit included;
  3. one worker (prefork, one pool process) started on N waiting messages of a no-op, until it
     has run them all: Redis commands per task run, the task's own RPUSH (its record of having
     run) left out, the worker's start and stop spread over the N runs.

Redis commands are read from the server's INFO commandstats before and after each step, so
every client (the caller, the worker's main process and its pool) is counted. The baseline is
the same count for plain Celery's `Task` in step 3. It asserts nothing.

    .venv/bin/python bench/costs.py [--tasks 500]
"""

import sys
from pathlib import Path

if Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    # `python bench/costs.py` puts bench/ first on sys.path, where bench/queue.py would shadow
    # the standard library's `queue`, which Celery and kombu import. The repository root goes
    # there instead.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse
import time
from collections import Counter

import redis

from bench import support
from tests import processes

DEFAULT_TASKS = 500


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=DEFAULT_TASKS, help="tasks per step")
    args = parser.parse_args()
    database_given = support.database_given()
    with (
        support.scratch_folder(prefix="celery-saas-bench-costs-") as workdir,
        processes.RedisServer(workdir=workdir) as redis_server,
    ):
        support.django_setup(redis_url=redis_server.url, workdir=workdir)
        support.print_run_header(
            title="What one task costs the broker, Redis and the database",
            script="bench/costs.py",
            arguments=["--tasks", str(args.tasks)],
            database_given=database_given,
        )
        print()
        server = redis.Redis.from_url(redis_server.url)
        rows = [
            ("delay(), per publish", *_delays(server, args.tasks)),
            ("enqueue(), per durable enqueue", *_enqueues(server, args.tasks)),
        ]
        for task in ("bench.noop_idempotent", "bench.noop_plain_celery"):
            rows.append((f"a run of {task}", None, *_runs(server, workdir, task, args.tasks)))
        _print(rows)
        print(f"load average {support.load_average()} at the end")


def _commands(server: redis.Redis) -> Counter:
    return Counter(
        {
            name.removeprefix("cmdstat_"): stats["calls"]
            for name, stats in server.info("commandstats").items()
        }
    )


def _measured(server: redis.Redis, step, tasks: int) -> Counter:
    """Redis commands per task while `step()` runs, INFO's own calls left out."""
    before = _commands(server)
    step()
    after = _commands(server)
    spent = after - before
    spent.pop("info", None)
    return Counter({name: calls / tasks for name, calls in spent.items()})


def _delays(server: redis.Redis, tasks: int) -> tuple[None, Counter]:
    from bench.tasks import noop_idempotent

    def step() -> None:
        for _ in range(tasks):
            noop_idempotent.delay(run="costs", enqueued_at=time.time())

    noop_idempotent.delay(run="costs", enqueued_at=time.time())  # connections opened
    return None, _measured(server, step, tasks)


def _enqueues(server: redis.Redis, tasks: int) -> tuple[Counter, Counter]:
    from django.db import connection, transaction
    from django.test.utils import CaptureQueriesContext

    from bench.tasks import noop_idempotent
    from jobs.outbox import enqueue

    def one() -> None:
        with transaction.atomic():
            enqueue(noop_idempotent, run="costs", enqueued_at=time.time())

    one()  # connections opened
    statements = Counter()

    def step() -> None:
        with CaptureQueriesContext(connection) as captured:
            for _ in range(tasks):
                one()
        for query in captured.captured_queries:
            verb = query["sql"].split(None, 1)[0].upper()
            statements["writes" if verb in {"INSERT", "UPDATE", "DELETE"} else verb.lower()] += 1

    commands = _measured(server, step, tasks)
    return Counter({kind: count / tasks for kind, count in statements.items()}), commands


def _runs(server: redis.Redis, workdir: Path, task_name: str, tasks: int) -> tuple[Counter]:
    from config.celery import app

    _queues_emptied()  # what the steps before left queued
    for _ in range(tasks):
        app.send_task(task_name, kwargs={"run": "costs-runs", "enqueued_at": time.time()})

    def step() -> None:
        with support.Worker(
            name_prefix="bench-costs",
            logfile=workdir / f"worker-{task_name}.log",
            concurrency=1,
            options=["--include", "bench.tasks"],
        ):
            deadline = time.monotonic() + 300
            while server.llen("bench:costs-runs") < tasks:
                if time.monotonic() > deadline:
                    raise RuntimeError("the worker did not drain the queue in 5 minutes")
                time.sleep(0.2)
            # Its idle loop (heartbeats, a broker poll) is counted until here: stop at once.

    spent = _measured(server, step, tasks)
    spent["rpush"] -= 1  # the task's own record of its start
    server.delete("bench:costs-runs")
    return (spent,)


def _queues_emptied() -> None:
    from django.conf import settings

    from config.celery import app

    with app.connection_for_write() as connection:
        for queue in settings.JOB_QUEUES:
            connection.default_channel.queue_purge(queue)


def _print(rows: list[tuple[str, Counter | None, Counter]]) -> None:
    print(f"{'path':<36} {'SQL':<40} Redis commands (per task)")
    for label, statements, commands in rows:
        sql = "-"
        if statements:
            sql = ", ".join(f"{name} {count:.2f}" for name, count in sorted(statements.items()))
        redis_part = ", ".join(
            f"{name} {count:.2f}" for name, count in commands.most_common() if count >= 0.01
        )
        total = sum(count for count in commands.values() if count > 0)
        print(f"{label:<36} {sql:<40} {total:.1f}: {redis_part}")
    print()


if __name__ == "__main__":
    support.run(main)
