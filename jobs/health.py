"""Readiness checks: can this web process serve, and can the deployment get its work done?

Two scopes (`/readyz?scope=...`, jobs/views.py):
- `deployment` (the default): the database, the broker, a live worker, a consumer for every
  queue of settings.JOB_QUEUES, and a fresh beat heartbeat. For monitoring and alerting.
- `web`: the database only, all a web process needs to answer requests. For the web tier's
  readiness probe, so that a broker outage (which the outbox absorbs) never takes every web
  process out of rotation.

A probe is cheap and bounded whatever its dependencies do:
- Workers are not pinged (a ping waits its whole timeout, since nobody knows how many workers
  will answer): they publish heartbeats to Redis (jobs/heartbeats.py), and the checks read them.
- Each check runs in a thread of its own and counts as failed once it has run for
  READINESS_CHECK_TIMEOUT without an answer, so a probe answers within one timeout.
- At most one run of each check is in flight per process. A probe that finds one running (a
  dependency that hangs) waits for that run instead of starting another, so a hung dependency
  holds one thread, not one per probe, and concurrent probes share one run.
- A result is reused for READINESS_CACHE_SECONDS after it came in, so any number of pollers
  cost about one.
"""

import concurrent.futures
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings
from django.db import connection, connections

from config.celery import app
from jobs.heartbeats import beat_heartbeat_age, worker_heartbeats


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    detail: str
    duration_ms: float = 0.0


def check_database() -> CheckResult:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return CheckResult(ok=True, detail="answered")
    finally:
        # The check runs in a thread that ends after it; its connection must not outlive it.
        connections.close_all()


def check_broker() -> CheckResult:
    with app.connection_for_write() as broker:
        # One attempt: kombu sleeps 2 s before a retry, which would turn a broker that refuses
        # connections into a check that times out. The next probe is the retry.
        broker.ensure_connection(max_retries=0)
        # kombu connects lazily; opening a channel makes the transport talk to the server.
        broker.default_channel  # noqa: B018
    return CheckResult(ok=True, detail=f"reachable ({broker.transport_cls})")


def check_workers() -> CheckResult:
    names = sorted(worker_heartbeats())
    if not names:
        return CheckResult(ok=False, detail="no worker heartbeat")
    return CheckResult(ok=True, detail=f"{len(names)} alive: {', '.join(names)}")


def check_queues() -> CheckResult:
    consumed = {queue for queues in worker_heartbeats().values() for queue in queues}
    missing = [queue for queue in settings.JOB_QUEUES if queue not in consumed]
    if missing:
        return CheckResult(ok=False, detail=f"no consumer for {', '.join(missing)}")
    return CheckResult(ok=True, detail=f"every queue has a consumer ({len(settings.JOB_QUEUES)})")


def check_beat() -> CheckResult:
    age = beat_heartbeat_age()
    if age is None:
        return CheckResult(ok=False, detail="no heartbeat from beat")
    if age > settings.BEAT_HEARTBEAT_MAX_AGE:
        return CheckResult(ok=False, detail=f"last heartbeat {age:.0f}s ago")
    return CheckResult(ok=True, detail=f"last heartbeat {age:.1f}s ago")


@dataclass(frozen=True)
class _Run:
    started: float  # time.monotonic()
    future: concurrent.futures.Future


class _Check:
    """One check in this process: its latest result, and its run in flight if there is one."""

    def __init__(self, name: str, function: Callable[[], CheckResult]) -> None:
        self.name = name
        self.function = function
        self._lock = threading.Lock()
        self._run: _Run | None = None
        self._last: CheckResult | None = None
        self._last_at = -math.inf  # time.monotonic() when the latest result came in

    def result_or_run(self) -> CheckResult | _Run:
        """A result recent enough to reuse, or the run that will give one: the run in flight,
        or, when there is none, a new one."""
        with self._lock:
            if time.monotonic() - self._last_at < settings.READINESS_CACHE_SECONDS:
                return self._last
            if self._run is None:
                self._run = _Run(started=time.monotonic(), future=concurrent.futures.Future())
                # A daemon thread: one stuck in a hung dependency must not hold up the exit of
                # the process (a gunicorn worker restarting).
                threading.Thread(
                    target=self._execute,
                    args=(self._run.future,),
                    name=f"readyz-{self.name}",
                    daemon=True,
                ).start()
            return self._run

    def _execute(self, future: concurrent.futures.Future) -> None:
        started = time.monotonic()
        try:
            result = self.function()
        except Exception as error:  # any failure of a dependency means "not ready"
            result = CheckResult(ok=False, detail=f"{type(error).__name__}: {error}")
        result = CheckResult(result.ok, result.detail, _milliseconds(time.monotonic() - started))
        with self._lock:
            self._run, self._last, self._last_at = None, result, time.monotonic()
        future.set_result(result)


CHECKS = {
    check.name: check
    for check in (
        _Check("database", check_database),
        _Check("broker", check_broker),
        _Check("worker", check_workers),
        _Check("queues", check_queues),
        _Check("beat", check_beat),
    )
}
SCOPES = {"deployment": tuple(CHECKS), "web": ("database",)}
DEFAULT_SCOPE = "deployment"


def readiness_report(*, scope: str = DEFAULT_SCOPE) -> dict[str, CheckResult]:
    """The result of every check of `scope`, within one READINESS_CHECK_TIMEOUT."""
    timeout = settings.READINESS_CHECK_TIMEOUT
    pending = {name: CHECKS[name].result_or_run() for name in SCOPES[scope]}
    runs = [item for item in pending.values() if isinstance(item, _Run)]
    if runs:
        # A run that is `timeout` old without an answer has failed. Waiting until the youngest
        # run is that old bounds the probe by one timeout, and a probe that finds only runs
        # already that old (a dependency hanging since earlier probes) does not wait at all.
        deadline = max(run.started for run in runs) + timeout
        concurrent.futures.wait(
            [run.future for run in runs], timeout=max(0.0, deadline - time.monotonic())
        )
    return {name: _outcome(item, timeout) for name, item in pending.items()}


def _outcome(item: CheckResult | _Run, timeout: float) -> CheckResult:
    if isinstance(item, CheckResult):
        return item
    if item.future.done():
        return item.future.result()
    # The duration says how long the dependency has been hanging, which may be longer than
    # this probe waited: the run may have started for an earlier probe.
    running = time.monotonic() - item.started
    return CheckResult(
        ok=False, detail=f"no answer within {timeout:g}s", duration_ms=_milliseconds(running)
    )


def _milliseconds(seconds: float) -> float:
    return round(seconds * 1000, 1)
