"""/metrics: what a scrape costs as the queues fill, against the same scrape with them empty.

Starts its own redis-server (and, with `--broker rabbitmq`, its own RabbitMQ as the broker), a
database (a SQLite file in a temporary folder, or DATABASE_URL) and gunicorn with the Procfile's
web at its default size (2 sync workers), behind METRICS_BEARER_TOKEN. No worker runs: the
messages stay queued. Then, for each step, it publishes messages until the queues hold that
many, and times scrapes one at a time, as Prometheus makes them:

  - every step's messages spread over all six queues, and the last step's all in one;
  - the baseline is the same scrape, in the same run, with every queue empty; each figure is
    printed beside it as a ratio, and /healthz (the web server's floor) beside both.

On Redis a scrape reads each queue's length and its oldest message (LLEN and LINDEX on its
tail: constant time, whatever the length); on RabbitMQ one passive declare per queue. A ratio
near 1.0 says the cost does not grow with the backlog. It asserts nothing: timings belong to
the machine they were taken on.

    .venv/bin/python bench/metrics.py [--scrapes 50] [--messages 100,10000] [--broker redis]
"""

import sys
from pathlib import Path

if Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    # `python bench/metrics.py` puts bench/ first on sys.path, where bench/queue.py would shadow
    # the standard library's `queue`, which Celery and kombu import. The repository root goes
    # there instead.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse
import contextlib
import http.client
import platform
import statistics
import time

import celery
import django
import gunicorn

from bench import support
from tests import processes

DEFAULT_SCRAPES = 50
DEFAULT_MESSAGES = "100,10000"
WEB_WORKERS = 2
TOKEN = "bench-metrics-token"
REQUEST_TIMEOUT_SECONDS = 60.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scrapes", type=int, default=DEFAULT_SCRAPES, help="scrapes per figure")
    parser.add_argument(
        "--messages",
        default=DEFAULT_MESSAGES,
        help=f"messages queued at each step, comma-separated ({DEFAULT_MESSAGES})",
    )
    parser.add_argument("--broker", choices=["redis", "rabbitmq"], default="redis")
    args = parser.parse_args()
    steps = sorted(int(count) for count in args.messages.split(","))
    if args.scrapes < 2:
        parser.error("--scrapes must be at least 2: a percentile needs two values")

    database_given = support.database_given()
    with contextlib.ExitStack() as stack:
        workdir = stack.enter_context(support.scratch_folder(prefix="celery-saas-bench-metrics-"))
        redis_server = stack.enter_context(processes.RedisServer(workdir=workdir))
        broker_url = None
        if args.broker == "rabbitmq":
            rabbitmq = processes.RabbitMQServer(workdir=workdir / "rabbitmq")
            broker_url = stack.enter_context(rabbitmq).url
        support.django_setup(
            redis_url=redis_server.url,
            workdir=workdir,
            broker_url=broker_url,
            environment={"ALLOWED_HOSTS": "127.0.0.1,localhost", "METRICS_BEARER_TOKEN": TOKEN},
        )
        web = stack.enter_context(
            support.WebServer(
                application="config.wsgi:application",
                logfile=workdir / "web.log",
                workers=WEB_WORKERS,
            )
        )
        _print_header(args=args, database_given=database_given)
        _scrapes(web, 3)  # each gunicorn worker's first scrape imports and connects
        baseline = _scrapes(web, args.scrapes)
        floor = _timed(web, "/healthz", args.scrapes)
        rows = []
        for count in steps:
            _fill_spread(count)
            rows.append((f"{count:,} spread over {_queue_count()} queues", count))
            rows[-1] += (_scrapes(web, args.scrapes),)
        _queues_emptied()
        _fill_one(steps[-1])
        rows.append((f"{steps[-1]:,} in one queue", steps[-1], _scrapes(web, args.scrapes)))
        _print_results(baseline=baseline, floor=floor, rows=rows)


# --- filling the queues ------------------------------------------------------------------------


def _queue_count() -> int:
    from django.conf import settings

    return len(settings.JOB_QUEUES)


def _fill_spread(total: int) -> None:
    """Publish until the queues together hold `total` messages, spread evenly."""
    from django.conf import settings

    queues = settings.JOB_QUEUES
    missing = total - sum(_lengths().values())
    _publish([queues[index % len(queues)] for index in range(missing)])


def _fill_one(total: int) -> None:
    _publish(["default"] * total)


def _publish(queues: list[str]) -> None:
    from config.celery import app

    # One connection and producer for all: the figure is the scrape's, not the publishing's.
    with app.producer_or_acquire() as producer:
        for queue in queues:
            # A task no worker would take anyway: nothing consumes during the run.
            app.send_task("jobs.canary", kwargs={"queue": queue}, queue=queue, producer=producer)


def _lengths() -> dict[str, int]:
    from jobs.metrics import broker_figures

    return broker_figures().lengths


def _queues_emptied() -> None:
    from django.conf import settings

    from config.celery import app

    with app.connection_for_write() as connection:
        channel = connection.default_channel
        for queue in settings.JOB_QUEUES:
            channel.queue_purge(queue)


# --- timing --------------------------------------------------------------------------------------


def _scrapes(web: support.WebServer, count: int) -> list[float]:
    return _timed(web, "/metrics", count, headers={"Authorization": f"Bearer {TOKEN}"})


def _timed(
    web: support.WebServer, path: str, count: int, headers: dict[str, str] | None = None
) -> list[float]:
    timings = []
    for _ in range(count):
        started = time.perf_counter()
        connection = http.client.HTTPConnection(
            "127.0.0.1", web.port, timeout=REQUEST_TIMEOUT_SECONDS
        )
        try:
            connection.request("GET", path, headers=headers or {})
            response = connection.getresponse()
            body = response.read()
        finally:
            connection.close()
        if response.status != 200:
            raise RuntimeError(f"{path} answered {response.status}: {body[:200]!r}")
        timings.append(time.perf_counter() - started)
    return timings


# --- output -----------------------------------------------------------------------------------


def _print_header(*, args: argparse.Namespace, database_given: bool) -> None:
    arguments = ["--scrapes", str(args.scrapes), "--messages", args.messages]
    support.print_run_header(
        title="/metrics: a scrape's cost as the queues fill",
        script="bench/metrics.py",
        arguments=[*arguments, "--broker", args.broker],
        database_given=database_given,
    )
    print(
        f"versions    Python {platform.python_version()}, Django {django.__version__}, "
        f"Celery {celery.__version__}, gunicorn {gunicorn.__version__}, "
        f"redis-server {support.redis_server_version()}"
    )
    print(f"processes   gunicorn, {WEB_WORKERS} sync workers; broker {args.broker}; no worker")
    print()


def _print_results(
    *, baseline: list[float], floor: list[float], rows: list[tuple[str, int, list[float]]]
) -> None:
    def milliseconds(values: list[float], percent: int) -> float:
        return support.percentile(values, percent) * 1000

    base_p50 = statistics.median(baseline)
    print(f"{'queued':<32} {'p50 ms':>8} {'p95 ms':>8} {'p50 / empty':>12}")
    floor_label = "/healthz (the floor)"
    print(f"{floor_label:<32} {milliseconds(floor, 50):>8.1f} {milliseconds(floor, 95):>8.1f}")
    print(
        f"{'none (the baseline)':<32} {milliseconds(baseline, 50):>8.1f} "
        f"{milliseconds(baseline, 95):>8.1f} {1.0:>12.2f}"
    )
    for label, _, timings in rows:
        print(
            f"{label:<32} {milliseconds(timings, 50):>8.1f} {milliseconds(timings, 95):>8.1f} "
            f"{statistics.median(timings) / base_p50:>12.2f}"
        )
    print()
    print(f"load average {support.load_average()} at the end")


if __name__ == "__main__":
    support.run(main)
