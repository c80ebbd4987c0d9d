"""Readiness checks: can this web process serve, and can the deployment get its work done?

Two scopes (`/readyz?scope=...`, jobs/views.py):
- `deployment` (the default): the database, the broker, a live worker, a consumer for every
  queue of settings.JOB_QUEUES, a fresh beat heartbeat, and a canary back lately from every
  queue (jobs/canary.py). For monitoring and alerting.
- `web`: the database only, all a web process needs to answer requests. For the web tier's
  readiness probe, so that a broker outage (which the outbox absorbs) never takes every web
  process out of rotation.

A probe is cheap and bounded whatever its dependencies do:
- Workers are not pinged (a ping waits its whole timeout, since nobody knows how many workers
  will answer): they publish heartbeats to Redis (jobs/heartbeats.py), and the checks read them.
- Each check is a BoundedProbe (jobs/probes.py): it runs in a thread of its own and counts as
  failed once it has run for READINESS_CHECK_TIMEOUT without an answer, so a probe answers
  within one timeout; one run per check is in flight per process, however many probes wait;
  a result is reused for READINESS_CACHE_SECONDS.
"""

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings
from django.db import connection, connections

from config.celery import app
from jobs.canary import canary_ages
from jobs.heartbeats import beat_heartbeat_age, worker_heartbeats
from jobs.probes import BoundedProbe, Call, calls_awaited


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


def check_canaries() -> CheckResult:
    ages = canary_ages()
    late = [
        f"{queue} ({_age(age)})"
        for queue, age in ages.items()
        if age > settings.JOBS_CANARY_MAX_AGE_SECONDS
    ]
    if late:
        return CheckResult(ok=False, detail=f"no canary back lately from {', '.join(late)}")
    oldest = max(ages, key=ages.get)
    return CheckResult(
        ok=True, detail=f"every queue consumed; oldest canary {oldest} ({_age(ages[oldest])})"
    )


def _age(seconds: float) -> str:
    return "never" if math.isinf(seconds) else f"{seconds:.0f}s ago"


def _check_failed(error: Exception) -> CheckResult:
    return CheckResult(ok=False, detail=f"{type(error).__name__}: {error}")


def _check_timed(result: CheckResult, seconds: float) -> CheckResult:
    return CheckResult(result.ok, result.detail, _milliseconds(seconds))


def _check(name: str, function: Callable[[], CheckResult]) -> BoundedProbe[CheckResult]:
    return BoundedProbe(
        name,
        function,
        failed=_check_failed,  # any failure of a dependency means "not ready"
        timed=_check_timed,
        cache_seconds=lambda: settings.READINESS_CACHE_SECONDS,
        thread_prefix="readyz",
    )


CHECKS = {
    check.name: check
    for check in (
        _check("database", check_database),
        _check("broker", check_broker),
        _check("worker", check_workers),
        _check("queues", check_queues),
        _check("beat", check_beat),
        _check("canary", check_canaries),
    )
}
SCOPES = {"deployment": tuple(CHECKS), "web": ("database",)}
DEFAULT_SCOPE = "deployment"


def readiness_report(*, scope: str = DEFAULT_SCOPE) -> dict[str, CheckResult]:
    """The result of every check of `scope`, within one READINESS_CHECK_TIMEOUT."""
    timeout = settings.READINESS_CHECK_TIMEOUT
    pending = {name: CHECKS[name].result_or_call() for name in SCOPES[scope]}
    calls_awaited(pending.values(), timeout=timeout)
    return {name: _outcome(item, timeout) for name, item in pending.items()}


def _outcome(item: CheckResult | Call, timeout: float) -> CheckResult:
    if isinstance(item, CheckResult):
        return item
    if item.future.done():
        return item.future.result()
    # The duration says how long the dependency has been hanging, which may be longer than
    # this probe waited: the call may have started for an earlier probe.
    running = time.monotonic() - item.started
    return CheckResult(
        ok=False, detail=f"no answer within {timeout:g}s", duration_ms=_milliseconds(running)
    )


def _milliseconds(seconds: float) -> float:
    return round(seconds * 1000, 1)
