"""Process launching shared by the tests and the benchmarks: free ports, servers of a run's own
(started in a session of their own, stopped gracefully), a private redis-server, and asking a
web server whether it answers.

Free of Django on purpose: tests/harness.py picks its ports before Django reads its settings,
and a benchmark points the environment at its own services before it sets Django up.
"""

import http.client
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import IO, Self

import amqp
import redis

REPO_ROOT = Path(__file__).resolve().parent.parent
# redis-server, gunicorn and a prefork worker start in seconds; beyond this they failed.
START_TIMEOUT_SECONDS = 60.0


# Ports are picked below the kernel's ephemeral range: a port picked there (bind to port 0) can
# be handed to any outgoing connection between the pick and a server's (re)start, which is how a
# session's SMTP server once found its port taken twenty minutes into a run.
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST_PICKED_PORT = 10000
_ports_handed_out: set[int] = set()


def free_port() -> int:
    """A port of 127.0.0.1 nothing listens on now, never handed out before by this process, and
    outside the range the kernel gives to outgoing connections."""
    try:
        ephemeral_start = int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_start = 32768
    # A machine whose ephemeral range starts low leaves the ports below it, however few.
    candidates = list(range(min(_LOWEST_PICKED_PORT, ephemeral_start // 2), ephemeral_start))
    random.shuffle(candidates)
    for port in candidates:
        if port in _ports_handed_out:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        _ports_handed_out.add(port)
        return port
    raise RuntimeError(f"no free port between {_LOWEST_PICKED_PORT} and {ephemeral_start}")


def answers_http(port: int, path: str = "/healthz") -> bool:
    """Whether a web server on this port of 127.0.0.1 answers `path` with 200."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        connection.request("GET", path)
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def spawn(command: list[str], *, log: IO[bytes]) -> subprocess.Popen:
    # In a session of its own: a Ctrl-C in the terminal reaches only the benchmark, which stops
    # its processes in order (gunicorn finishes the request in flight, the worker shuts down
    # warm, redis-server last) instead of every process dying at once mid-request.
    return subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def stop_process(process: subprocess.Popen) -> None:
    # SIGTERM first: gunicorn's graceful stop, a worker's warm shutdown, redis-server's clean
    # exit; SIGKILL only for a process that ignored it for 30 s.
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Server:
    """A process of the run's own, logging to `logfile`: `start()` returns once it serves,
    `stop()` ends it; as a context manager, it is stopped however the block ends."""

    def __init__(self, *, logfile: Path) -> None:
        self.logfile = logfile
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None

    def kill(self) -> None:
        """SIGKILL to the server and its children: it dies mid-write, as in a power cut."""
        if self.process is not None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self.process = None

    def freeze(self) -> None:
        """SIGSTOP to the server and its children (its session): it keeps its connections open
        and answers nothing, as a server that hangs (a stalled disk, a long pause) does."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGCONT)

    def log_tail(self, lines: int = 40) -> str:
        """The end of the process's log, for an error message that says why it failed."""
        return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])


class RedisServer(Server):
    """A redis-server of its own on 127.0.0.1, in memory only, logging to `workdir/redis.log`.

    A test stops and starts it again to make a broker outage; it comes back empty, as a broker
    without persistence does. With `append_only`, it keeps its data in an append-only file synced
    every second, as the compose file's Redis does, and comes back with it.
    """

    def __init__(
        self, *, workdir: Path, port: int | None = None, append_only: bool = False
    ) -> None:
        super().__init__(logfile=workdir / "redis.log")
        self.workdir = workdir
        self.port = port or free_port()
        self.append_only = append_only
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> Self:
        executable = shutil.which("redis-server")
        if executable is None:
            raise RuntimeError("redis-server is not installed: run `make setup` (or apt-get it)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        command = [
            executable, "--port", str(self.port), "--bind", "127.0.0.1",
            # In memory only unless asked: persistence would time the disk, and a test's restart
            # must come back empty.
            "--save", "", "--appendonly", "yes" if self.append_only else "no",
            "--appendfsync", "everysec", "--dir", str(self.workdir),
        ]  # fmt: skip
        with self.logfile.open("ab") as log:
            self.process = spawn(command, log=log)
        client = self.client(socket_connect_timeout=0.2)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.05)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def client(self, **options: float) -> redis.Redis:
        return redis.Redis(
            port=self.port, **({"socket_connect_timeout": 1, "socket_timeout": 5} | options)
        )

    def forget_all_but_bindings(self) -> None:
        """Empty every queue and key, so each test starts clean as it starts with empty tables.

        Not FLUSHDB: kombu keeps queue bindings in `_kombu.binding.*` keys, declared once per
        connection. Deleting them under live connections would send later messages (and the
        worker's control pings) nowhere, which is not a state production can reach.
        """
        client = self.client()
        doomed = [k for k in client.scan_iter(count=1000) if not k.startswith(b"_kombu.binding.")]
        if doomed:
            client.delete(*doomed)


class RabbitMQServer(Server):
    """A RabbitMQ node of its own on 127.0.0.1: free AMQP and distribution ports, its data and
    logs under `workdir`, no plugins. Its data survives a stop and start, as a production
    node's does, so a test can restart the broker with messages waiting.

    A node rather than a virtual host on the machine's RabbitMQ: a test stops, freezes and
    restarts its broker, and sets the node's consumer timeout, which a shared node would not
    allow.
    """

    # Debian's rabbitmq-server wrapper switches to the rabbitmq user and drops the environment
    # that names this node; the script behind it runs as whoever calls it.
    SERVER_SCRIPTS = ("/usr/lib/rabbitmq/bin/rabbitmq-server", "/usr/sbin/rabbitmq-server")

    def __init__(
        self,
        *,
        workdir: Path,
        port: int | None = None,
        consumer_timeout_seconds: float = 1800,
    ) -> None:
        super().__init__(logfile=workdir / "rabbitmq.log")
        self.workdir = workdir
        self.port = port or free_port()
        self.consumer_timeout_seconds = consumer_timeout_seconds
        self.nodename = f"test-{self.port}@localhost"
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def start(self) -> Self:
        script = next((s for s in self.SERVER_SCRIPTS if Path(s).exists()), None)
        if script is None:
            raise RuntimeError("rabbitmq-server is not installed: run `make setup` (or apt-get it)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "rabbitmq.conf"
        config.write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            f"consumer_timeout = {int(self.consumer_timeout_seconds * 1000)}\n"
        )
        (self.workdir / "enabled_plugins").write_text("[].\n")
        environment = {
            **os.environ,
            "HOME": str(self.workdir),  # its own Erlang cookie
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_CONFIG_FILE": str(config),
            "RABBITMQ_CONF_ENV_FILE": "/dev/null",  # not the machine node's name and flags
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.workdir / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.workdir / "data"),
            "RABBITMQ_LOG_BASE": str(self.workdir / "log"),
            "RABBITMQ_PID_FILE": str(self.workdir / "pid"),
        }
        with self.logfile.open("ab") as log:
            self.process = subprocess.Popen(
                [script],
                cwd=self.workdir,
                env=environment,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not self.answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"RabbitMQ did not start on {self.port}:\n{self.log_tail()}")
            time.sleep(0.2)
        return self

    def ctl(self, *arguments: str) -> str:
        """`rabbitmqctl` against this node; its output."""
        script = Path(self.SERVER_SCRIPTS[0]).with_name("rabbitmqctl")
        environment = {**os.environ, "HOME": str(self.workdir)}
        return subprocess.run(
            [str(script), "--node", self.nodename, *arguments],
            cwd=self.workdir, env=environment, capture_output=True, text=True, check=True,
            timeout=60,
        ).stdout  # fmt: skip

    def answers(self) -> bool:
        """Whether the node completes an AMQP handshake (its port opens before it can)."""
        try:
            with amqp.Connection(f"127.0.0.1:{self.port}", connect_timeout=1) as connection:
                connection.connect()
                return True
        except (OSError, amqp.exceptions.AMQPError):
            return False

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None
