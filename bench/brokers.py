"""Redis and RabbitMQ side by side, in one run on this machine: the figures of docs/brokers.md.

Three brokers, each measured the same way in a process of its own (a Celery app serves one
broker): Redis in memory only (the tests' and `make run`'s), Redis keeping an append-only file
synced every second (the compose file's), and a RabbitMQ node with the project's quorum queues
and publisher confirms. For each:

- publish: N `delay()` of a no-op idempotent task, and N durable `enqueue()` each in its own
  transaction, with no worker consuming, in ms per task;
- broker restart: the 2N messages just published waiting, the broker stopped (SIGTERM) and
  started; how many are still there, and how long the restart took;
- drain: N waiting no-ops run by a worker with two pool processes, from the first start to the
  last, in tasks/s;
- whole-worker kill: a worker running two long tasks is SIGKILLed with its pool (its process
  group), a second worker idles on the queue; seconds until both tasks started again there.

Then one table, each figure beside Redis in memory (the default) as a ratio. It asserts nothing:
timings belong to the machine they were taken on.

    .venv/bin/python bench/brokers.py [--tasks 2000]
"""

import sys
from pathlib import Path

# `python bench/brokers.py` puts bench/ first on sys.path; the repository root goes there
# instead, so `config`, `jobs` and `bench.tasks` import as they do in the worker.
sys.path.pop(0)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import json
import os
import platform
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import celery
import kombu

from bench import support
from tests import processes

DEFAULT_TASKS = 2000
BROKERS = {
    "redis": "Redis, in memory",
    "redis-aof": "Redis, AOF everysec",
    "rabbitmq": "RabbitMQ, quorum",
}
# Long enough that the killed worker's tasks cannot have finished by themselves.
HOLD_SECONDS = 120.0
# A worker that has not started a waiting task after this long is stuck, not slow.
STUCK_SECONDS = 60.0


@dataclass
class Figures:
    publish_ms: float
    durable_enqueue_ms: float
    restart_kept: int
    restart_total: int
    restart_seconds: float
    drain_per_second: float
    recovery_seconds: float


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=DEFAULT_TASKS, help="N, per figure")
    parser.add_argument("--broker", choices=BROKERS, help=argparse.SUPPRESS)  # one child's
    arguments = parser.parse_args()
    if arguments.broker:
        print(json.dumps(asdict(_measure(arguments.broker, tasks=arguments.tasks))))
        return
    load = support.load_average()
    figures = {broker: _measure_in_a_child(broker, tasks=arguments.tasks) for broker in BROKERS}
    _print_table(figures, tasks=arguments.tasks, load=load)


def _measure_in_a_child(broker: str, *, tasks: int) -> Figures:
    command = [sys.executable, __file__, "--broker", broker, "--tasks", str(tasks)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{broker}: the measurement failed:\n{result.stdout}{result.stderr}")
    return Figures(**json.loads(result.stdout.splitlines()[-1]))


def _measure(broker: str, *, tasks: int) -> Figures:
    with (
        support.scratch_folder(prefix="celery-saas-bench-") as workdir,
        processes.RedisServer(
            workdir=workdir / "redis", append_only=broker == "redis-aof"
        ) as redis_server,
    ):
        broker_server = (
            processes.RabbitMQServer(workdir=workdir / "rabbitmq").start()
            if broker == "rabbitmq"
            else redis_server
        )
        try:
            support.django_setup(
                redis_url=redis_server.url, workdir=workdir, broker_url=broker_server.url
            )
            return _figures(broker_server, workdir=workdir, tasks=tasks)
        finally:
            broker_server.stop()


def _figures(broker_server: processes.Server, *, workdir: Path, tasks: int) -> Figures:
    from django.db import transaction

    from bench.tasks import noop_idempotent
    from jobs.outbox import enqueue

    noop_idempotent.delay(run="warm-up", enqueued_at=time.time())  # connections open
    started = time.perf_counter()
    for _ in range(tasks):
        noop_idempotent.delay(run="published", enqueued_at=time.time())
    publish_ms = (time.perf_counter() - started) * 1000 / tasks
    started = time.perf_counter()
    for _ in range(tasks):
        with transaction.atomic():
            enqueue(noop_idempotent, run="published", enqueued_at=time.time())
    durable_ms = (time.perf_counter() - started) * 1000 / tasks

    waiting = _waiting(broker_server)
    started = time.perf_counter()
    broker_server.stop()
    broker_server.start()
    restart_seconds = time.perf_counter() - started
    kept = _waiting(broker_server)
    _purge(broker_server)

    run = uuid.uuid4().hex
    for _ in range(tasks):
        noop_idempotent.delay(run=run, enqueued_at=time.time())
    with _worker(workdir, "drain"):
        starts = sorted(started_at for _, started_at in _records(run, tasks))
    drain = (tasks - 1) / (starts[-1] - starts[0])

    return Figures(
        publish_ms=publish_ms,
        durable_enqueue_ms=durable_ms,
        restart_kept=kept,
        restart_total=waiting,
        restart_seconds=restart_seconds,
        drain_per_second=drain,
        recovery_seconds=_recovery_seconds(workdir),
    )


def _recovery_seconds(workdir: Path) -> float:
    """Seconds from SIGKILLing a worker whole, mid-task, to its two tasks starting elsewhere."""
    from bench.tasks import hold
    from jobs.redis import redis_client

    run, key = uuid.uuid4().hex, f"bench:hold:{uuid.uuid4().hex}"
    redis_client().set(key, 1)
    with _worker(workdir, "doomed") as doomed:
        for _ in range(2):
            hold.delay(run=run, key=key, seconds=HOLD_SECONDS)
        _records(run, 2)
        with _worker(workdir, "survivor") as survivor:
            killed_at = time.time()
            os.killpg(doomed.process.pid, signal.SIGKILL)  # main process and pool together
            doomed.process.wait()
            doomed.process = None
            restarted = [
                started_at for hostname, started_at in _records(run, 4) if hostname == survivor.name
            ]
            redis_client().delete(key)
    return max(restarted) - killed_at


def _worker(workdir: Path, name: str) -> support.Worker:
    return support.Worker(
        name_prefix=f"bench-{name}",
        logfile=workdir / f"{name}.log",
        concurrency=2,
        queues=["default"],
        options=["--include", "bench.tasks"],
    )


def _records(run: str, count: int) -> list[tuple[str, float]]:
    """The first `count` records of `run` ("<first> <started_at>"), once that many are in."""
    from jobs.redis import redis_client

    deadline = time.monotonic() + STUCK_SECONDS
    while len(entries := redis_client().lrange(f"bench:{run}", 0, -1)) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(entries)} of {count} tasks started within {STUCK_SECONDS}s")
        time.sleep(0.05)
    return [
        (first.decode(), float(started_at))
        for first, started_at in (entry.split() for entry in entries[:count])
    ]


def _waiting(broker_server: processes.Server) -> int:
    if isinstance(broker_server, processes.RedisServer):
        return broker_server.client().llen("default")  # kombu keeps a queue as a list
    with _default_queue(broker_server) as queue:
        return queue.queue_declare(passive=True).message_count


def _purge(broker_server: processes.Server) -> None:
    if isinstance(broker_server, processes.RedisServer):
        broker_server.client().delete("default")
        return
    with _default_queue(broker_server) as queue:
        queue.purge()


@contextmanager
def _default_queue(broker_server: processes.Server) -> Iterator[kombu.Queue]:
    """The default queue as the app declares it (quorum), on a connection of its own: the app's
    may still hold a socket to the broker from before its restart."""
    from config.celery import app

    with kombu.Connection(broker_server.url) as connection:
        yield app.amqp.queues["default"].bind(connection.default_channel)


def _print_table(figures: dict[str, Figures], *, tasks: int, load: str) -> None:
    rows = [
        ("publish, delay() (ms/task)", "publish_ms", "{:.3f}"),
        ("durable enqueue (ms/task)", "durable_enqueue_ms", "{:.3f}"),
        ("no-op drain, 2 pool processes (tasks/s)", "drain_per_second", "{:.0f}"),
        ("whole worker SIGKILLed -> its tasks running again (s)", "recovery_seconds", "{:.1f}"),
        ("broker restart (s)", "restart_seconds", "{:.1f}"),
    ]
    print("Redis and RabbitMQ, side by side")
    print()
    print(f"reproduce   cd {processes.REPO_ROOT}")
    print(f"            .venv/bin/python bench/brokers.py --tasks {tasks}")
    print(
        f"machine     {os.cpu_count()} CPUs, {platform.system()} {platform.machine()}, "
        f"load average {load} at the start, {support.load_average()} at the end"
    )
    print(f"versions    Python {platform.python_version()}, Celery {celery.__version__}, kombu "
          f"{kombu.__version__}; database: a SQLite file per broker")  # fmt: skip
    print()
    baseline = figures["redis"]
    header = f"| figure | {' | '.join(BROKERS.values())} |"
    print(header)
    print("|---" * (len(BROKERS) + 1) + "|")
    for label, field, number in rows:
        cells = []
        for broker in BROKERS:
            value = getattr(figures[broker], field)
            ratio = value / getattr(baseline, field) if broker != "redis" else None
            cells.append(number.format(value) + (f" ({ratio:.2f}x)" if ratio else ""))
        print(f"| {label} | {' | '.join(cells)} |")
    kept = [f"{f.restart_kept} of {f.restart_total}" for f in figures.values()]
    print(f"| messages waiting kept by a broker restart | {' | '.join(kept)} |")


if __name__ == "__main__":
    support.run(main)
