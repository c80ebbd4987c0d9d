"""/readyz: what one probe costs, and what probing costs the requests served beside it.

Starts its own redis-server, database (a SQLite file in a temporary folder, or DATABASE_URL),
one `celery worker` on every queue, `celery beat`, and gunicorn with the Procfile's web at its
default size (2 sync workers); waits until /readyz answers 200; then prints three figures:

  1. /readyz latency, one probe at a time;
  2. /healthz latency, one request at a time, with nothing else asking;
  3. /healthz latency while N clients (3) poll /readyz back to back, as a few load balancers,
     an orchestrator and a monitoring probe would, and how many probes those clients made.

A sync worker serves one request at a time, so every moment a probe spends waiting is a moment
the worker serves nobody else: figure 3 is what probing costs real requests. It asserts
nothing: timings belong to the machine they were taken on.

    .venv/bin/python bench/readyz.py [--requests 50] [--pollers 3]
"""

import sys
from pathlib import Path

if Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    # `python bench/readyz.py` puts bench/ first on sys.path, where bench/queue.py would shadow
    # the standard library's `queue`, which Celery and kombu import. The repository root goes
    # there instead.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse
import http.client
import platform
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Self

import celery
import django
import gunicorn

from bench import support
from tests import processes

DEFAULT_REQUESTS = 50
DEFAULT_POLLERS = 3
# The Procfile's `web` and `worker` at their default sizes.
WEB_WORKERS = 2
WORKER_CONCURRENCY = 2
# Longer than gunicorn's 30 s worker timeout (the Procfile's), so a stuck request ends with
# gunicorn's verdict rather than the client's.
REQUEST_TIMEOUT_SECONDS = 60.0


class Beat(support.Server):
    """`celery -A config beat` as the Procfile runs it; ready once its heartbeat is in Redis."""

    def start(self) -> Self:
        from jobs.heartbeats import beat_heartbeat_age

        command = [sys.executable, "-m", "celery", "-A", "config", "beat", "--pidfile="]
        with self.logfile.open("wb") as log:
            self.process = support.spawn(command, log=log)
        deadline = time.monotonic() + support.START_TIMEOUT_SECONDS
        while beat_heartbeat_age() is None:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"beat never wrote its heartbeat:\n{self.log_tail()}")
            time.sleep(0.1)
        return self


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--requests",
        type=int,
        default=DEFAULT_REQUESTS,
        help=f"requests timed per figure ({DEFAULT_REQUESTS})",
    )
    parser.add_argument(
        "--pollers",
        type=int,
        default=DEFAULT_POLLERS,
        help=f"clients polling /readyz during figure 3 ({DEFAULT_POLLERS})",
    )
    args = parser.parse_args()
    if args.requests < 2:
        parser.error("--requests must be at least 2: a percentile needs two values")
    if args.pollers < 1:
        parser.error("--pollers must be at least 1")

    database_given = support.database_given()
    with (
        support.scratch_folder(prefix="celery-saas-bench-readyz-") as workdir,
        processes.RedisServer(workdir=workdir) as redis_server,
    ):
        support.django_setup(
            redis_url=redis_server.url,
            workdir=workdir,
            environment={"ALLOWED_HOSTS": "127.0.0.1,localhost"},
        )
        with (
            support.Worker(
                name_prefix="bench-readyz",
                logfile=workdir / "worker.log",
                concurrency=WORKER_CONCURRENCY,
            ),
            Beat(logfile=workdir / "beat.log"),
            support.WebServer(
                application="config.wsgi:application",
                logfile=workdir / "web.log",
                workers=WEB_WORKERS,
            ) as web,
        ):
            _print_header(args=args, database_given=database_given)
            _wait_until_ready(web)
            figures = [
                ("/readyz, one probe at a time", _timed_gets(web, "/readyz", args.requests)),
                ("/healthz alone", _timed_gets(web, "/healthz", args.requests)),
            ]
            polled, probes, seconds = _healthz_while_polled(web, args.requests, args.pollers)
            figures.append((f"/healthz, {args.pollers} clients polling /readyz", polled))
            _print_results(figures=figures, probes=probes, seconds=seconds)


def _get(web: support.WebServer, path: str) -> tuple[float, int]:
    """Seconds from connecting to having read the whole answer, and the answer's status."""
    started = time.perf_counter()
    # A connection per request: gunicorn's sync workers close it after each answer anyway.
    connection = http.client.HTTPConnection("127.0.0.1", web.port, timeout=REQUEST_TIMEOUT_SECONDS)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
    finally:
        connection.close()
    return time.perf_counter() - started, response.status


def _wait_until_ready(web: support.WebServer) -> None:
    deadline = time.monotonic() + support.START_TIMEOUT_SECONDS
    while _get(web, "/readyz")[1] != 200:
        if time.monotonic() > deadline:
            raise RuntimeError(f"/readyz never answered 200:\n{web.log_tail()}")
        time.sleep(0.2)


def _timed_gets(web: support.WebServer, path: str, count: int) -> list[tuple[float, int]]:
    return [_get(web, path) for _ in range(count)]


def _healthz_while_polled(
    web: support.WebServer, count: int, pollers: int
) -> tuple[list[tuple[float, int]], Counter, float]:
    """/healthz timed while `pollers` clients probe /readyz back to back; returns the /healthz
    timings, the statuses of the probes made meanwhile, and the seconds it all took."""
    stop = threading.Event()

    def poll() -> Counter:
        statuses = Counter()
        while not stop.is_set():
            statuses[_get(web, "/readyz")[1]] += 1
        return statuses

    with ThreadPoolExecutor(max_workers=pollers) as pool:
        polls = [pool.submit(poll) for _ in range(pollers)]
        started = time.monotonic()
        try:
            timings = _timed_gets(web, "/healthz", count)
        finally:
            seconds = time.monotonic() - started
            stop.set()
        return timings, sum((done.result() for done in polls), Counter()), seconds


# --- output -------------------------------------------------------------------------------------


def _print_header(*, args: argparse.Namespace, database_given: bool) -> None:
    from django.conf import settings

    support.print_run_header(
        title="/readyz: the cost of a probe, and of probing, to the requests beside it",
        script="bench/readyz.py",
        arguments=["--requests", str(args.requests), "--pollers", str(args.pollers)],
        database_given=database_given,
    )
    print(
        f"versions    Python {platform.python_version()}, Django {django.__version__}, "
        f"Celery {celery.__version__}, gunicorn {gunicorn.__version__}, "
        f"redis-server {support.redis_server_version()}"
    )
    print(
        f"processes   gunicorn, {WEB_WORKERS} sync workers; one celery worker, prefork, "
        f"concurrency {WORKER_CONCURRENCY}, every queue; celery beat"
    )
    print(
        f"settings    READINESS_CHECK_TIMEOUT={settings.READINESS_CHECK_TIMEOUT:g}, "
        f"READINESS_CACHE_SECONDS={settings.READINESS_CACHE_SECONDS:g}"
    )
    print(
        f"method      {args.requests} requests per figure, one at a time, a connection each; "
        "latency: client connects -> whole answer read"
    )
    print()


def _print_results(
    *, figures: list[tuple[str, list[tuple[float, int]]]], probes: Counter, seconds: float
) -> None:
    print(f"{'figure':40}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}   statuses")
    for label, timings in figures:
        milliseconds = [elapsed * 1000 for elapsed, _ in timings]
        statuses = Counter(status for _, status in timings)
        print(
            f"{label:40}{support.percentile(milliseconds, 50):>9.1f}"
            f"{support.percentile(milliseconds, 99):>9.1f}{max(milliseconds):>9.1f}   "
            f"{_statuses(statuses)}"
        )
    if len(figures[0][1]) < 100:
        print(f"(p99 of {len(figures[0][1])} values: interpolated between the two slowest)")
    print()
    print(
        f"probes made by the polling clients meanwhile: {probes.total()} in {seconds:.1f} s "
        f"({probes.total() / seconds:.0f}/s), {_statuses(probes)}"
    )
    print(f"load average {support.load_average()} at the end")


def _statuses(statuses: Counter) -> str:
    return ", ".join(f"{count}x {status}" for status, count in sorted(statuses.items()))


if __name__ == "__main__":
    support.run(main)
