"""Real processes the tests start and stop: a private redis-server, Celery workers and beats,
and the web server."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import amqp
import redis
from django.conf import settings
from kombu.exceptions import OperationalError

from config.celery import app
from jobs.redis import redis_circuit
from tests import processes

BASE_DIR = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def eventually(probe: Callable[[], T], *, timeout: float = 15.0, interval: float = 0.05) -> T:
    """Poll until `probe` returns something truthy; fail with the last value after `timeout`.

    Background work finishes "soon", never at a known instant; polling with a deadline is how a
    test waits for it without sleeping for a guessed duration.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value: {value!r})")
        time.sleep(interval)


def at_the_same_moment(*calls: Callable[[], T]) -> list[T]:
    """Run `calls` in threads released together by a barrier, each with its own database
    connection (closed as it ends), and return their results in order. An exception in any of
    them is raised here, rather than lost with its thread."""
    from django.db import connection

    barrier = threading.Barrier(len(calls))
    results: list = [None] * len(calls)
    errors: list[BaseException] = []

    def run(index: int, call: Callable[[], T]) -> None:
        try:
            barrier.wait(timeout=10)
            results[index] = call()
        except Exception as error:  # re-raised below, in the test's thread
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=item) for item in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    if errors:
        raise errors[0]
    return results


class HungServer:
    """A TCP listener that accepts connections and never answers: a dependency that hangs (a
    frozen process, a dropped route) rather than one that refuses connections.

    `connections` counts the connections clients opened. `stop()` closes everything, so clients
    stuck in a read get end-of-file and their threads end.
    """

    def __init__(self, *, port: int = 0) -> None:
        # port: 0 for a free one, or the port of a server the test stopped, to stand in for it.
        self._listener = socket.create_server(("127.0.0.1", port))
        # Wakes the accept loop now and then to see whether the server was stopped.
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self._accepted: list[socket.socket] = []
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def connections(self) -> int:
        return len(self._accepted)

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()
        self._listener.close()
        for accepted in self._accepted:
            accepted.close()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                accepted, _ = self._listener.accept()
            except TimeoutError:
                continue
            self._accepted.append(accepted)


class RedisServer(processes.RedisServer):
    """The session's private Redis (tests/processes.py), which this process trusts again as soon
    as it is back."""

    def start(self) -> "RedisServer":
        super().start()
        # This process saw Redis fail while it was stopped; it answers again, now.
        redis_circuit.close()
        return self

    def queue_length(self, queue: str) -> int:
        """Messages waiting in `queue` (kombu's Redis transport keeps a queue as a list)."""
        return self.client().llen(queue)

    def forget_all_messages(self) -> None:
        """Nothing to do: `forget_all_but_bindings`, before every test, took the messages too."""


class RabbitMQServer(processes.RabbitMQServer):
    """The session's private RabbitMQ node (tests/processes.py), when it is the broker."""

    def queue_length(self, queue: str) -> int:
        """Messages ready in `queue` (not those a worker holds); 0 for a queue not declared yet."""
        with self._connection() as connection:
            try:
                return connection.channel().queue_declare(queue, passive=True).message_count
            except amqp.exceptions.NotFound:
                return 0

    def forget_all_messages(self) -> None:
        """Empty the work queues, the dead-letter queue and the delayed-delivery queues, so each
        test starts clean. Queues no process declared yet are skipped."""
        from jobs.brokers import DEAD_LETTER_QUEUE

        delayed = [f"celery_delayed_{level}" for level in range(28)]
        with self._connection() as connection:
            channel = connection.channel()
            for queue in [*settings.JOB_QUEUES, DEAD_LETTER_QUEUE.name, *delayed]:
                try:
                    channel.queue_purge(queue)
                except amqp.exceptions.NotFound:
                    channel = connection.channel()  # the broker closed the one that asked

    @contextlib.contextmanager
    def _connection(self) -> Iterator[amqp.Connection]:
        with amqp.Connection(f"127.0.0.1:{self.port}", connect_timeout=5) as connection:
            connection.connect()
            yield connection


def database_url_for_subprocesses() -> str:
    """A DATABASE_URL for the database the tests run on, for processes the tests start."""
    from django.db import connection

    params = connection.settings_dict
    if params["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{Path(params['NAME']).resolve()}"
    credentials = params["USER"] + (f":{params['PASSWORD']}" if params["PASSWORD"] else "")
    host = params["HOST"] or "127.0.0.1"
    port = f":{params['PORT']}" if params["PORT"] else ""
    return f"postgres://{credentials}@{host}{port}/{params['NAME']}"


class ProjectProcess:
    """One of the project's own processes (a Celery program, the web server) as a subprocess on
    the test database and the private Redis."""

    program = ""

    def __init__(
        self,
        *,
        logdir: Path,
        extra_env: dict[str, str] | None = None,
        launcher: list[str] | None = None,
    ) -> None:
        """`launcher`: words that run the command elsewhere (on a test host, tests/hosts.py)."""
        self.name = f"test-{self.program}-{uuid.uuid4().hex[:8]}@{os.uname().nodename}"
        self.logfile = logdir / f"{self.name.split('@')[0]}.log"
        self.extra_env = extra_env or {}
        self.launcher = launcher or []
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, *, wait: bool = True) -> "ProjectProcess":
        env = {**os.environ, "DATABASE_URL": database_url_for_subprocesses(), **self.extra_env}
        self.logfile.parent.mkdir(parents=True, exist_ok=True)
        with self.logfile.open("ab") as log:
            self.process = subprocess.Popen(
                [*self.launcher, *self.command()],
                cwd=BASE_DIR,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        def ready() -> bool:
            if not self.alive:
                raise RuntimeError(f"{self.program} exited at start-up:\n{self.log_tail()}")
            return self.is_ready()

        try:
            eventually(ready, timeout=timeout, interval=0.2)
        except AssertionError as error:
            raise AssertionError(
                f"{self.program} never became ready:\n{self.log_tail()}"
            ) from error

    def is_ready(self) -> bool:
        raise NotImplementedError

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 30) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # warm shutdown, as an orchestrator does
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL: the process dies mid-whatever, as in an out-of-memory kill or a power cut."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def log_tail(self, lines: int = 60) -> str:
        if not self.logfile.exists():
            return "(no log)"
        return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])


class CeleryProcess(ProjectProcess):
    """`celery -A config <program>`."""

    def command(self) -> list[str]:
        return [sys.executable, "-m", "celery", "-A", "config", self.program, *self.arguments()]

    def arguments(self) -> list[str]:
        raise NotImplementedError


class WebProcess(ProjectProcess):
    """The Procfile's `web` command, run by a shell as honcho runs it (gunicorn with
    config/gunicorn.py), on a free port of 127.0.0.1; its access log goes to its log file."""

    program = "web"

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.port = processes.free_port()
        self.extra_env = {"WEB_BIND": "127.0.0.1", "PORT": str(self.port), **self.extra_env}
        self.url = f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        procfile = (BASE_DIR / "Procfile").read_text().splitlines()
        web = next(line for line in procfile if line.startswith("web:"))
        # exec: the shell becomes gunicorn, so stop() signals gunicorn itself.
        return ["sh", "-c", f'PATH="{Path(sys.executable).parent}:$PATH" exec {web[4:].strip()}']

    def is_ready(self) -> bool:
        return processes.answers_http(self.port)


class WorkerProcess(CeleryProcess):
    """`celery worker` as a subprocess: the same program production runs, prefork pool included.

    A subprocess rather than Celery's in-process test worker because the tests must be able to
    SIGKILL a worker or a pool child and see what a real deployment would see, and because an
    in-process worker shares the test's database connection and import state, which hides bugs.
    """

    program = "worker"

    def __init__(self, *, queues: list[str] | None = None, concurrency: int = 2, **options) -> None:
        super().__init__(**options)
        self.queues = queues or list(settings.JOB_QUEUES)
        self.concurrency = concurrency

    def arguments(self) -> list[str]:
        return [
            "--hostname", self.name, "--queues", ",".join(self.queues),
            "--concurrency", str(self.concurrency), "--pool", "prefork",
            # Test-only tasks (effects the tests can observe) live beside the tests.
            "--include", "tests.worker_tasks",
            "--without-mingle", "--without-gossip",
        ]  # fmt: skip

    def pool_pids(self) -> list[int]:
        """The pool processes of the running worker: its main process's children."""
        main = self.process.pid
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue  # it exited while we looked
            if parent == main:
                children.append(int(stat.parent.name))
        return children

    def is_ready(self) -> bool:
        try:
            return bool(app.control.ping(destination=[self.name], timeout=0.5))
        except (OSError, redis.ConnectionError, OperationalError):
            # This process's control connection died with a broker an earlier test restarted;
            # kombu reconnects on the next ping.
            return False


class FlowerProcess(CeleryProcess):
    """`celery flower` with the project's configuration file, as the Procfile runs it, on a free
    port of 127.0.0.1, behind the basic-auth credentials in `credentials`."""

    program = "flower"
    credentials = ("ops", "flower-test-password")

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.port = processes.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_env = {
            "FLOWER_BASIC_AUTH": ":".join(self.credentials),
            "FLOWER_PORT": str(self.port),
            **self.extra_env,
        }

    def arguments(self) -> list[str]:
        return ["--conf=config/flower.py"]

    def is_ready(self) -> bool:
        return processes.answers_http(self.port, "/healthcheck")


class BeatProcess(CeleryProcess):
    """`celery beat` with the project's scheduler, as the Procfile runs it.

    Ready once it has found its role: holding the beat lock and ticking (a heartbeat exists),
    or waiting for the beat that holds it.
    """

    program = "beat"

    def arguments(self) -> list[str]:
        return ["--pidfile="]

    def is_ready(self) -> bool:
        from jobs.heartbeats import beat_heartbeat_age

        return (self.holds_lock() and beat_heartbeat_age() is not None) or self.is_waiting()

    def holds_lock(self) -> bool:
        from jobs.beat import beat_lock_holder

        holder = beat_lock_holder()  # host:pid:nonce
        return self.process is not None and f":{self.process.pid}:" in (holder or "")

    def is_waiting(self) -> bool:
        return self._log_count("waiting for the beat lock") > 0

    def sent(self, task: str) -> int:
        """How many times this beat has sent `task` (counted from its log)."""
        return self._log_count("Scheduler: Sending due task ", f"({task})")

    def _log_count(self, *fragments: str) -> int:
        if not self.logfile.exists():
            return 0
        lines = self.logfile.read_text(errors="replace").splitlines()
        return sum(all(fragment in line for fragment in fragments) for line in lines)
