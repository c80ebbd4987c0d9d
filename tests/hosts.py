"""Test hosts: workers in network namespaces of their own (scripts/test-hosts.sh), reaching the
run's services on this machine (broker, Redis, database, mail and push stand-ins) through a veth
pair, the way workers on other hosts reach them over a network.

Every service keeps its 127.0.0.1 address, so a process on a test host runs with the same
environment as one here: inside each host, socat listens on 127.0.0.1:PORT and forwards to this
machine's end of the host's link, where a second socat forwards to 127.0.0.1:PORT. Cutting a
host's link leaves its connections hanging, as when a host drops off the network: nothing is
reset, and the broker learns of it only from its own timeouts (RabbitMQ's heartbeats, the Redis
workers' leases).

Free of Django, like tests/processes.py, for the benchmarks too.
"""

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Self
from urllib.parse import urlsplit

from tests.processes import REPO_ROOT, START_TIMEOUT_SECONDS, free_port, spawn

SCRIPT = REPO_ROOT / "scripts" / "test-hosts.sh"
_LOCAL_PORT = re.compile(r"(?:127\.0\.0\.1|localhost):(\d+)")
_DEFAULT_PORTS = {"postgres": 5432, "postgresql": 5432, "redis": 6379, "amqp": 5672, "smtp": 25}


def hosts_unavailable() -> str:
    """Why test hosts cannot be made here, or '' if they can."""
    if shutil.which("socat") is None:
        return "test hosts forward ports with socat, which is not installed: run `make setup`"
    if shutil.which("ip") is None:
        return "test hosts need iproute2's `ip`, which is not installed"
    probe = f"saas-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode:
        return (
            "network namespaces are not allowed here (they need root: CAP_SYS_ADMIN and "
            f"CAP_NET_ADMIN): {made.stderr.strip()}"
        )
    subprocess.run(["ip", "netns", "del", probe], check=True)
    return ""


def local_ports(environment: dict[str, str]) -> list[int]:
    """The 127.0.0.1 ports an environment's values name, a URL's scheme's own port where it
    names none: what a test host must reach."""
    ports = {int(port) for value in environment.values() for port in _LOCAL_PORT.findall(value)}
    for value in environment.values():
        url = urlsplit(value)
        if url.hostname in {"127.0.0.1", "localhost"} and url.port is None:
            ports.add(_DEFAULT_PORTS.get(url.scheme, 0))
    return sorted(ports - {0})


class TestHosts:
    """Hosts 1..count with `ports` of this machine forwarded into each; a context manager that
    makes them and removes them again."""

    __test__ = False  # not a test class, whatever its name

    def __init__(self, count: int, *, ports: Iterable[int], logdir: Path) -> None:
        self.count = count
        self.logdir = logdir
        self.forwarders: list[subprocess.Popen] = []
        # service port -> the port this machine's end of every link listens on for it: one of
        # its own, as the service's may be taken there (a service listening on every address).
        self.relays = {port: free_port() for port in set(ports)}

    def __enter__(self) -> Self:
        self.logdir.mkdir(parents=True, exist_ok=True)
        try:
            self.script("up", self.count)
            for host in range(1, self.count + 1):
                self._forward(host)
                self._wait_listening(host)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        # The script kills what still runs on the hosts; here, this machine's forwarders, each
        # with the children it forked per connection (its process group).
        self.script("down", self.count)
        for forwarder in self.forwarders:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(forwarder.pid, signal.SIGKILL)
            forwarder.wait()
        self.forwarders.clear()

    def launcher(self, host: int) -> list[str]:
        """The words that run a command on `host`."""
        return ["ip", "netns", "exec", f"saas-host{host}"]

    def cut(self, host: int) -> None:
        """Take the host off the network: its link goes down, its connections hang."""
        self.script("cut", host)

    def heal(self, host: int) -> None:
        self.script("heal", host)

    @staticmethod
    def script(command: str, argument: int) -> str:
        done = subprocess.run([str(SCRIPT), command, str(argument)], capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"test-hosts.sh {command} {argument}: {done.stderr.strip()}")
        return done.stdout.strip()

    def _forward(self, host: int) -> None:
        machine_end = self.script("address", host)
        with (self.logdir / f"forwarders-host{host}.log").open("ab") as log:
            for port, relay in self.relays.items():
                # This machine's end of the link, to the service.
                self.forwarders.append(
                    spawn(
                        ["socat", f"TCP-LISTEN:{relay},bind={machine_end},reuseaddr,fork",
                         f"TCP:127.0.0.1:{port}"],
                        log=log,
                    )
                )  # fmt: skip
                # The host's own 127.0.0.1, to this machine's end of the link.
                self.forwarders.append(
                    spawn(
                        [*self.launcher(host), "socat",
                         f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork",
                         f"TCP:{machine_end}:{relay}"],
                        log=log,
                    )
                )  # fmt: skip

    def _wait_listening(self, host: int) -> None:
        """Until every forwarder of the host listens: a worker started sooner would find its
        broker refusing connections."""
        machine_end = self.script("address", host)
        wanted = {f"127.0.0.1:{port}" for port in self.relays}
        wanted_here = {f"{machine_end}:{relay}" for relay in self.relays.values()}
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not (wanted <= _listening(self.launcher(host)) and wanted_here <= _listening([])):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the forwarders of host {host} never listened")
            time.sleep(0.05)


def _listening(launcher: list[str]) -> set[str]:
    """address:port of every TCP listener, here or (with a launcher) on a host."""
    listing = subprocess.run(
        [*launcher, "ss", "-Hltn"], capture_output=True, text=True, check=True
    ).stdout
    return {line.split()[3] for line in listing.splitlines() if line.strip()}
