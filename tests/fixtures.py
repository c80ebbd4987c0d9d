"""Fixtures every test module may use: `redis_server`, `celery_worker`, `start_worker`."""

from collections.abc import Callable, Iterator

import pytest

from config.celery import app
from tests.harness import REDIS_PORT, SESSION_DIR
from tests.services import RedisServer, WorkerProcess


@pytest.fixture(scope="session", autouse=True)
def redis_server() -> Iterator[RedisServer]:
    """The session's private Redis (broker, result backend, platform keys). Always running at
    the start of each test; a test that stops it gets it restarted afterwards."""
    server = RedisServer(port=REDIS_PORT, workdir=SESSION_DIR / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _redis_running_and_empty(redis_server: RedisServer) -> None:
    if not redis_server.running:
        redis_server.start()
    redis_server.forget_all_but_bindings()


@pytest.fixture(scope="session")
def _session_worker(django_db_setup, django_db_blocker) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(logdir=SESSION_DIR / "workers")
    with django_db_blocker.unblock():
        worker.start()
    yield worker
    worker.stop()


@pytest.fixture
def celery_worker(transactional_db, _session_worker: WorkerProcess) -> WorkerProcess:
    """A real worker consuming every queue, as a separate process.

    Requires committed data: the worker runs in another process with its own connection, so a
    test that uses it runs with `transactional_db` (rows are committed, tables flushed after).
    """
    if _session_worker.process is None or _session_worker.process.poll() is not None:
        _session_worker.start()
    return _session_worker


@pytest.fixture
def start_worker(transactional_db) -> Iterator[Callable[..., WorkerProcess]]:
    """Start extra workers (other queues, other settings) that are stopped after the test."""
    started: list[WorkerProcess] = []

    def start(**options) -> WorkerProcess:
        worker = WorkerProcess(logdir=SESSION_DIR / "workers", **options).start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def celery_app():
    return app
