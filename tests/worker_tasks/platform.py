"""Test-only tasks that exercise the job platform's guarantees.

They record what happened in Redis (lists keyed by the test's key) or in the database, so the
test process can observe runs that happened in a worker process.
"""

import os
import resource
import signal
import time
import uuid

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.contrib.auth import get_user_model
from django.db import OperationalError

from jobs.idempotency import run_once
from jobs.redis import redis_client
from jobs.retry import PermanentError, RetryPolicy, TransientError


def record(kind: str, key: str, value: str = "") -> int:
    """Append an event (with Redis server time, one clock for every process) to a list."""
    seconds, microseconds = redis_client().time()
    return redis_client().rpush(f"test:{kind}:{key}", f"{seconds + microseconds / 1e6}|{value}")


def recorded(kind: str, key: str) -> list[tuple[float, str]]:
    entries = redis_client().lrange(f"test:{kind}:{key}", 0, -1)
    return [(float(stamp), value) for stamp, value in (e.decode().split("|", 1) for e in entries)]


@shared_task(
    name="tests.flaky",
    idempotent=True,
    retry_policy=RetryPolicy(transient=(ConnectionError,), max_retries=5),
)
def flaky(key: str, failures: int) -> None:
    """Fails with a transient error `failures` times, then succeeds."""
    attempt = record("attempts", key)
    if attempt <= failures:
        raise ConnectionError(f"provider unreachable (attempt {attempt})")
    record("effects", key)


@shared_task(name="tests.database_gone_first", idempotent=True)
def database_gone_first(key: str) -> None:
    """Its first run finds its database connection cut (a server restart), as psycopg says it."""
    if record("attempts", key) == 1:
        raise OperationalError("terminating connection due to administrator command")
    record("effects", key)


@shared_task(name="tests.database_gone_first_not_idempotent")
def database_gone_first_not_idempotent(key: str) -> None:
    record("attempts", key)
    raise OperationalError("terminating connection due to administrator command")


@shared_task(name="tests.transient_forever", idempotent=True,
             retry_policy=RetryPolicy(transient=(TransientError,), max_retries=2))  # fmt: skip
def transient_forever(key: str) -> None:
    record("attempts", key)
    raise TransientError("still down")


@shared_task(name="tests.permanent_unless_allowed", idempotent=True,
             retry_policy=RetryPolicy(transient=(ConnectionError,)))  # fmt: skip
def permanent_unless_allowed(key: str) -> None:
    """Fails permanently until a test sets `test:allow:<key>` (the fix an operator deploys)."""
    record("attempts", key)
    if not redis_client().exists(f"test:allow:{key}"):
        raise PermanentError("the provider rejected this request")
    record("effects", key)


@shared_task(name="tests.sleep_then_record", idempotent=True)
def sleep_then_record(key: str, seconds: float) -> None:
    """Records its pool process id, sleeps on the first delivery only (so a test can kill the
    process mid-task), then records the effect."""
    delivery = record("deliveries", key, str(os.getpid()))
    if delivery == 1:
        time.sleep(seconds)
    record("effects", key)


@shared_task(name="tests.kill_own_worker", idempotent=True)
def kill_own_worker(key: str) -> None:
    """A poison message: kills the pool process that runs it, every time."""
    record("deliveries", key, str(os.getpid()))
    os.kill(os.getpid(), signal.SIGKILL)


@shared_task(name="tests.create_user_once", idempotent=True)
def create_user_once(key: str, hold_seconds: float = 0.0) -> bool:
    """Creates one user per key, however often it runs. Each run that gets through makes a
    *distinct* user, so a missing guarantee shows as two users, not as a constraint error."""

    def effect() -> bool:
        get_user_model().objects.create_user(email=f"{key}-{uuid.uuid4().hex[:6]}@example.com")
        time.sleep(hold_seconds)  # widen the window in which a concurrent duplicate could slip in
        return True

    ran = run_once(key=f"test:create_user:{key}", effect=effect) is True
    record("runs", key, "effect" if ran else "repeat")
    return ran


@shared_task(
    name="tests.fail_once_when_told",
    bind=True,
    idempotent=True,
    retry_policy=RetryPolicy(transient=(ConnectionError,), max_retries=3),
)
def fail_once_when_told(self, key: str, hold_seconds: float) -> None:
    """First attempt: records that it started, holds (the test stops the broker meanwhile),
    then fails transiently, so its retry is published while the broker is down. A retry
    succeeds. Decided by the retry count, since Redis restarted empty forgets what was recorded."""
    if self.request.retries == 0:
        record("attempts", key)
        time.sleep(hold_seconds)
        raise ConnectionError("provider unreachable")
    record("effects", key, str(self.request.retries))


@shared_task(name="tests.outlive_hard_time_limit", idempotent=True, soft_time_limit=1, time_limit=2)
def outlive_hard_time_limit(key: str) -> None:
    """Ignores its soft time limit and runs past its hard one: its pool process is killed."""
    record("attempts", key)
    try:
        time.sleep(30)
    except SoftTimeLimitExceeded:
        time.sleep(30)


@shared_task(name="tests.page_faults_of_a_reused_buffer")
def page_faults_of_a_reused_buffer(key: str, megabytes: int) -> None:
    """Records the minor page faults of filling a buffer the size of one just freed: the fresh
    memory a task's image would cost when its process already had the memory."""
    size = megabytes * 1024 * 1024
    pages = range(0, size, resource.getpagesize())
    freed = bytearray(size)
    freed[:: resource.getpagesize()] = b"\x01" * len(pages)
    del freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    reused = bytearray(size)
    reused[:: resource.getpagesize()] = b"\x01" * len(pages)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    record("faults", key, f"{faults} {len(pages)}")


@shared_task(name="tests.database_session", idempotent=True)
def database_session(key: str) -> None:
    """Records which database session served it and how many tasks that session served before:
    a temporary table lives as long as its session, on SQLite as on PostgreSQL."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("CREATE TEMP TABLE IF NOT EXISTS tests_session_tasks (n integer)")
        cursor.execute("INSERT INTO tests_session_tasks VALUES (1)")
        cursor.execute("SELECT count(*) FROM tests_session_tasks")
        served = cursor.fetchone()[0]
        backend = ""
        if connection.vendor == "postgresql":
            cursor.execute("SELECT pg_backend_pid()")
            backend = cursor.fetchone()[0]
    record("database-session", key, f"{served} {backend}")


@shared_task(name="tests.row_locked_then_idle")
def row_locked_then_idle(key: str, user_id: int, seconds: float) -> None:
    """Locks a user's row, records it, then leaves its transaction idle for `seconds`: a worker
    whose host dropped off the network between two statements."""
    from django.db import transaction

    with transaction.atomic():
        get_user_model().objects.select_for_update().get(pk=user_id)
        record("row-locked", key)
        time.sleep(seconds)
