"""Readiness checks: can this deployment take a request and get its background work done?

Each check runs in its own thread with a deadline, so a dead database or a broker that drops
packets makes /readyz answer 503 quickly instead of hanging the load balancer's probe.
"""

import concurrent.futures
import time
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings
from django.db import connection, connections

from config.celery import app
from jobs.heartbeats import beat_heartbeat_age


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
        # The check runs in a throwaway thread; its connection must not leak.
        connections.close_all()


def check_broker() -> CheckResult:
    with app.connection_for_write() as broker:
        broker.ensure_connection(max_retries=1, timeout=settings.READINESS_CHECK_TIMEOUT)
        # kombu connects lazily; opening a channel makes the transport talk to the server.
        broker.default_channel  # noqa: B018
    return CheckResult(ok=True, detail=f"reachable ({broker.transport_cls})")


def check_workers() -> CheckResult:
    replies = app.control.ping(timeout=min(1.0, settings.READINESS_CHECK_TIMEOUT / 2))
    names = sorted(name for reply in replies for name in reply)
    if not names:
        return CheckResult(ok=False, detail="no worker answered a ping")
    return CheckResult(ok=True, detail=f"{len(names)} answering: {', '.join(names)}")


def check_beat() -> CheckResult:
    age = beat_heartbeat_age()
    if age is None:
        return CheckResult(ok=False, detail="no heartbeat from beat")
    if age > settings.BEAT_HEARTBEAT_MAX_AGE:
        return CheckResult(ok=False, detail=f"last heartbeat {age:.0f}s ago")
    return CheckResult(ok=True, detail=f"last heartbeat {age:.1f}s ago")


def _timed(check: Callable[[], CheckResult]) -> CheckResult:
    started = time.monotonic()
    try:
        result = check()
    except Exception as error:  # any failure of a dependency means "not ready"
        result = CheckResult(ok=False, detail=f"{type(error).__name__}: {error}")
    return CheckResult(result.ok, result.detail, round((time.monotonic() - started) * 1000, 1))


def readiness_report() -> dict[str, CheckResult]:
    """Run every check concurrently; a check still running at the deadline counts as failed."""
    deadline = settings.READINESS_CHECK_TIMEOUT
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="readyz")
    try:
        # Workers are asked only through a broker that answered: pinging through a dead broker
        # would just spend the deadline on reconnects.
        broker_and_db = {
            "database": pool.submit(_timed, check_database),
            "broker": pool.submit(_timed, check_broker),
            "beat": pool.submit(_timed, check_beat),
        }
        results = _collect(broker_and_db, deadline)
        if results["broker"].ok:
            results.update(_collect({"worker": pool.submit(_timed, check_workers)}, deadline))
        else:
            results["worker"] = CheckResult(ok=False, detail="not checked: broker unreachable")
        return results
    finally:
        # Never wait for a stuck check: the response goes out at the deadline regardless.
        pool.shutdown(wait=False, cancel_futures=True)


def _collect(
    futures: dict[str, concurrent.futures.Future], deadline: float
) -> dict[str, CheckResult]:
    concurrent.futures.wait(futures.values(), timeout=deadline)
    return {
        name: future.result()
        if future.done()
        else CheckResult(
            ok=False, detail=f"no answer within {deadline:g}s", duration_ms=deadline * 1000
        )
        for name, future in futures.items()
    }
