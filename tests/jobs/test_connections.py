"""A worker keeps its database connection from one task to the next, as a web process keeps it
from one request to the next, and drops one the server closed (jobs/connections.py)."""

import uuid

import pytest
from django.contrib.auth import get_user_model
from django.db import OperationalError, connection, transaction

from tests.services import eventually
from tests.worker_tasks.platform import database_session, recorded, row_locked_then_idle


def sessions(key: str) -> list[tuple[int, str]]:
    """(tasks the session had served, counting this one; its server process on PostgreSQL)"""
    return [
        (int(served), backend)
        for served, backend in (value.split(" ") for _, value in recorded("database-session", key))
    ]


def test_a_worker_keeps_its_database_connection_between_tasks(no_worker_running, start_worker):
    # given a worker with one pool process
    start_worker(concurrency=1)
    key = uuid.uuid4().hex
    # when it runs three tasks that use the database, one after the other
    for expected in range(1, 4):
        database_session.delay(key=key)
        eventually(lambda expected=expected: len(sessions(key)) == expected, timeout=20)
    # then one database session served all three (Celery alone would open one per task)
    assert [served for served, _ in sessions(key)] == [1, 2, 3]


@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="PostgreSQL only: a server that closes a session"
)
def test_a_connection_the_database_closed_between_tasks_costs_the_next_task_nothing(
    no_worker_running, start_worker
):
    # given a worker whose pool process holds a database session
    worker = start_worker(concurrency=1)
    key = uuid.uuid4().hex
    database_session.delay(key=key)
    eventually(lambda: len(sessions(key)) == 1, timeout=20)
    [(_, backend)] = sessions(key)
    # when the server ends that session (a restart, a failover, an idle timeout)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [int(backend)])
    # then the next task runs at its first attempt, on a new session
    database_session.delay(key=key)
    eventually(lambda: len(sessions(key)) == 2, timeout=20)
    assert sessions(key)[1][0] == 1 and sessions(key)[1][1] != backend
    assert "outcome=retry" not in worker.logfile.read_text()


def row_lockable(user_id: int) -> bool:
    try:
        with transaction.atomic():
            get_user_model().objects.select_for_update(nowait=True).get(pk=user_id)
            return True
    except OperationalError:
        return False


@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="PostgreSQL only: a server that ends a session"
)
def test_a_session_left_idle_in_a_transaction_is_ended_by_the_server_and_its_locks_freed(
    no_worker_running, start_worker
):
    # given a worker whose sessions may sit idle in a transaction for 5 s at most
    worker = start_worker(concurrency=1, extra_env={"DATABASE_IDLE_IN_TRANSACTION_SECONDS": "5"})
    user = get_user_model().objects.create_user("locked@example.com", "a long passphrase 1")
    key = uuid.uuid4().hex
    # when a task of it locks a row and then goes quiet inside its transaction, as one whose
    # host dropped off the network between two statements
    row_locked_then_idle.delay(key=key, user_id=user.pk, seconds=40)
    eventually(lambda: recorded("row-locked", key), timeout=20)
    assert not row_lockable(user.pk)
    # then the server ends its session after its 5 s, not the task's 40, and the row is free
    eventually(lambda: row_lockable(user.pk), timeout=15, interval=0.2)
    worker.kill()  # not a warm shutdown that waits out the task's sleep
