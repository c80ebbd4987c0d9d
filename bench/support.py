"""What every benchmark needs around its measurement: private services and the header.

Each benchmark runs against a redis-server, a database and `celery worker` processes of its
own, so that nothing else on the machine (a developer's .env, the CI's Redis) gets into its
figures, and stops them when it ends, Ctrl-C and SIGTERM included.

Named `support`, not after what it holds: bench/ may be first on sys.path while a script
starts, and a module named like a standard-library one (`queue`, `signal`, `subprocess`)
would shadow it for Celery and kombu. Scripts import it as `bench.support`.
"""

import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Self
from urllib.parse import urlsplit, urlunsplit

import redis

from tests.processes import (
    REPO_ROOT,
    START_TIMEOUT_SECONDS,
    Server,
    answers_http,
    free_port,
    spawn,
)

# --- running a script -----------------------------------------------------------------------


def run(main: Callable[[], None]) -> None:
    """Run a benchmark's `main`, so that however it ends, its `finally` blocks stop what it
    started: SIGTERM unwinds like Ctrl-C instead of orphaning the servers, and a Ctrl-C ends
    with the shell's 130, without a traceback to read."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)


@contextmanager
def scratch_folder(*, prefix: str) -> Iterator[Path]:
    """A temporary folder for the SQLite file, logs and whatever else a run writes, removed
    at the end."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# --- services ---------------------------------------------------------------------------------


def database_given() -> bool:
    """Whether the shell names a database (DATABASE_URL), rather than the run making a SQLite
    file. Ask before `django_setup`, which sets DATABASE_URL either way."""
    return bool(os.environ.get("DATABASE_URL"))


def django_setup(
    *,
    redis_url: str,
    workdir: Path,
    environment: dict[str, str] | None = None,
    broker_url: str | None = None,
) -> None:
    """Point this process and every process it starts at the private Redis (the broker too,
    unless `broker_url` names another) and the database, migrate that database, and set Django
    up in this process.

    Set, not defaulted: a developer's .env must not send the benchmark to real services. Only
    DATABASE_URL comes from the shell, to benchmark PostgreSQL. `environment` adds what one
    benchmark needs besides (an SMTP server, MEDIA_ROOT, raised limits).
    """
    import django

    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "REDIS_URL": redis_url,
            "CELERY_BROKER_URL": broker_url or redis_url,
            "CELERY_RESULT_BACKEND": redis_url,
            "DATABASE_URL": os.environ.get("DATABASE_URL")
            or f"sqlite:///{workdir / 'bench.sqlite3'}",
            # Production mode: with DEBUG on, Django would keep every SQL statement in memory.
            "DEBUG": "0",
            "SECRET_KEY": "bench-only-secret-key-that-is-long-enough-for-django-checks-0123456789",
            "SECURE_SSL_REDIRECT": "0",
            # Clients connect to the benchmark's web server directly, with no proxy in front.
            "TRUSTED_PROXIES": "none",
            **(environment or {}),
        }
    )
    # In a subprocess, before this process sets Django up: as a deploy's one-shot migrate does.
    result = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--no-input", "--verbosity", "0"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    if result.returncode:
        raise RuntimeError(f"migrate failed:\n{result.stdout}{result.stderr}")
    django.setup()


# --- processes --------------------------------------------------------------------------------


class Worker(Server):
    """One `celery -A config worker`, prefork, as the Procfile runs it (tests.services.
    WorkerProcess would also load the test-only tasks). Started after `django_setup`."""

    def __init__(
        self,
        *,
        name_prefix: str,
        logfile: Path,
        concurrency: int,
        queues: list[str] | None = None,
        options: Iterable[str] = (),
        launcher: Iterable[str] = (),
    ) -> None:
        """`queues`: None for every queue of settings.JOB_QUEUES. `options`: more arguments
        for `celery worker`. `launcher`: words that run it elsewhere (a test host,
        tests/hosts.py)."""
        super().__init__(logfile=logfile)
        self.launcher = list(launcher)
        self.name = f"{name_prefix}-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"
        self.concurrency = concurrency
        self.queues = queues
        self.options = list(options)

    def start(self) -> Self:
        from django.conf import settings

        from config.celery import app

        queues = self.queues if self.queues is not None else settings.JOB_QUEUES
        command = [
            *self.launcher, sys.executable, "-m", "celery", "-A", "config", "worker",
            "--hostname", self.name, "--queues", ",".join(queues),
            "--concurrency", str(self.concurrency), "--pool", "prefork",
            # A lone worker has no peers to synchronise with; skip the start-up wait.
            "--without-mingle", "--without-gossip",
            *self.options,
        ]  # fmt: skip
        with self.logfile.open("wb") as log:
            self.process = spawn(command, log=log)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not app.control.ping(destination=[self.name], timeout=0.5):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the worker never answered a ping:\n{self.log_tail()}")
        return self

    def pause(self, queue: str) -> None:
        """Stop consuming `queue`, so that a backlog builds up that the worker then drains."""
        self._control("cancel_consumer", queue)

    def resume(self, queue: str) -> None:
        self._control("add_consumer", queue)

    def _control(self, command: str, queue: str) -> None:
        from config.celery import app

        replies = getattr(app.control, command)(
            queue, destination=[self.name], reply=True, timeout=5
        )
        if not replies:
            raise RuntimeError(f"the worker did not answer {command}:\n{self.log_tail()}")


def pool_processes(worker: Worker) -> list[int]:
    """The pids of the worker's pool processes (its main process's children) as they are now."""
    return [
        int(pid)
        for children in Path(f"/proc/{worker.process.pid}/task").glob("*/children")
        for pid in children.read_text().split()
    ]


class WebServer(Server):
    """gunicorn serving `application` on a free port of 127.0.0.1 with sync workers and the
    Procfile's timeouts. Started after `django_setup`; ready once /healthz answers."""

    def __init__(self, *, application: str, logfile: Path, workers: int) -> None:
        super().__init__(logfile=logfile)
        self.application = application
        self.workers = workers
        self.port = free_port()

    def start(self) -> Self:
        command = [
            sys.executable, "-m", "gunicorn", self.application,
            "--bind", f"127.0.0.1:{self.port}", "--workers", str(self.workers),
            "--timeout", "30", "--graceful-timeout", "20",
        ]  # fmt: skip
        with self.logfile.open("wb") as log:
            self.process = spawn(command, log=log)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not answers_http(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gunicorn did not start:\n{self.log_tail()}")
            time.sleep(0.1)
        return self


# --- output -----------------------------------------------------------------------------------


def print_run_header(
    *,
    title: str,
    script: str,
    arguments: list[str],
    database_given: bool,
    database_note: str = "",
    commit_settings: bool = False,
) -> None:
    """The header's first lines, the same in every benchmark: the title, how to reproduce the
    run, the database and the machine. Each benchmark prints its own lines after these.

    `commit_settings` adds how commits reach the disk (SQLite's journal and synchronous mode,
    PostgreSQL's synchronous_commit), for a benchmark whose figures are mostly commits.
    """
    command = shlex.join([os.path.relpath(sys.executable, REPO_ROOT), script, *arguments])
    if database_given:
        where = _without_password(os.environ["DATABASE_URL"])
        reproduce = [f"DATABASE_URL={shlex.quote(where)} {command}"]
    else:
        where = "a file in a temporary folder"
        reproduce = [
            command,
            f"DATABASE_URL=postgres://USER:PASSWORD@HOST:5432/NAME {command}  # on PostgreSQL",
        ]
    database = _database_description(commit_settings=commit_settings)

    print(title)
    print()
    print(f"reproduce   cd {REPO_ROOT}")
    for line in reproduce:
        print(f"            {line}")
    print(f"database    {database}, {where}{database_note}")
    # Other processes' load skews every figure; the reader should know it was there.
    print(
        f"machine     {os.cpu_count()} CPUs, {platform.system()} {platform.machine()}, "
        f"load average {load_average()} at the start"
    )


def _database_description(*, commit_settings: bool) -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute("PRAGMA journal_mode")
            description = (
                f"SQLite {connection.Database.sqlite_version}, journal {cursor.fetchone()[0]}"
            )
            if commit_settings:
                cursor.execute("PRAGMA synchronous")
                synchronous = ["OFF", "NORMAL", "FULL", "EXTRA"][cursor.fetchone()[0]]
                description += f", synchronous {synchronous}"
        elif commit_settings:
            cursor.execute("SELECT version(), current_setting('synchronous_commit')")
            server, synchronous_commit = cursor.fetchone()
            description = f"{server.split(' on ')[0]}, synchronous_commit {synchronous_commit}"
        else:
            cursor.execute("SELECT version()")
            description = cursor.fetchone()[0].split(" on ")[0]
    return description


def redis_server_version() -> str:
    from django.conf import settings

    return redis.Redis.from_url(settings.REDIS_URL).info("server")["redis_version"]


def load_average() -> str:
    return ", ".join(f"{average:.2f}" for average in os.getloadavg())


def percentile(values: list[float], percent: int) -> float:
    # Inclusive: with fewer than 100 values, p99 interpolates between the two largest instead
    # of extrapolating beyond the slowest value measured.
    return statistics.quantiles(values, n=100, method="inclusive")[percent - 1]


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if not parts.password:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))
