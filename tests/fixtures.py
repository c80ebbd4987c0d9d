"""Fixtures every test module may use: `redis_server`, `broker_server`, `celery_worker`,
`start_worker`, `smtp`, `push_service`, `fcm_service`, `apns_service`."""

import time
from collections.abc import Callable, Iterator

import pytest
from django.core.management.base import CommandError
from django.db import OperationalError
from django.test import TransactionTestCase

from config.celery import app
from jobs.redis import redis_circuit
from tests.harness import (
    APNS_KEY,
    APNS_PORT,
    FCM_ACCOUNT,
    FCM_PORT,
    PUSH_CERT,
    PUSH_KEY,
    PUSH_PORT,
    RABBITMQ_PORT,
    REDIS_PORT,
    SESSION_DIR,
    SMTP_PORT,
    TEST_BROKER,
)
from tests.notifications.mobile_services import ApnsService, FcmService
from tests.notifications.push_service import PushService
from tests.services import (
    BeatProcess,
    FlowerProcess,
    ProjectProcess,
    RabbitMQServer,
    RedisServer,
    WebProcess,
    WorkerProcess,
)
from tests.smtp import SmtpServer


@pytest.fixture(scope="session", autouse=True)
def redis_server() -> Iterator[RedisServer]:
    """The session's private Redis (broker, result backend, platform keys). Always running at
    the start of each test; a test that stops it gets it restarted afterwards."""
    server = RedisServer(port=REDIS_PORT, workdir=SESSION_DIR / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session", autouse=True)
def broker_server(redis_server: RedisServer) -> Iterator[RedisServer | RabbitMQServer]:
    """The session's broker (TEST_BROKER): the private Redis itself, or a private RabbitMQ node.
    Running and empty at the start of each test; a test that stops it gets it restarted."""
    if TEST_BROKER == "redis":
        yield redis_server
        return
    server = RabbitMQServer(port=RABBITMQ_PORT, workdir=SESSION_DIR / "rabbitmq")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def _session_smtp() -> Iterator[SmtpServer]:
    server = SmtpServer(port=SMTP_PORT)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def _session_push_service() -> Iterator[PushService]:
    service = PushService(port=PUSH_PORT, cert=PUSH_CERT, key=PUSH_KEY).start()
    yield service
    service.stop()


@pytest.fixture
def push_service(_session_push_service: PushService) -> PushService:
    """The Web Push service every worker pushes to (WEBPUSH_ALLOWED_HOSTS), empty at the start,
    answering 201 until a test scripts other answers."""
    if not _session_push_service.running:
        _session_push_service.start()
    _session_push_service.reset()
    return _session_push_service


@pytest.fixture(scope="session")
def _session_fcm_service() -> Iterator[FcmService]:
    service = FcmService(port=FCM_PORT, cert=PUSH_CERT, key=PUSH_KEY, account_file=FCM_ACCOUNT)
    yield service.start()
    service.stop()


@pytest.fixture
def fcm_service(_session_fcm_service: FcmService) -> Iterator[FcmService]:
    """The FCM service and Google token endpoint every worker calls (FCM_API_URL, the service
    account's token_uri), empty at the start, answering 200 until a test scripts other answers;
    a request it found wrong fails the test."""
    _session_fcm_service.reset()
    yield _session_fcm_service
    assert _session_fcm_service.problems == []


@pytest.fixture(scope="session")
def _session_apns_service() -> Iterator[ApnsService]:
    service = ApnsService(port=APNS_PORT, cert=PUSH_CERT, key=PUSH_KEY, key_file=APNS_KEY)
    yield service.start()
    service.stop()


@pytest.fixture
def apns_service(_session_apns_service: ApnsService) -> Iterator[ApnsService]:
    """The APNs service every worker calls (APNS_HOST), as `fcm_service` is FCM's."""
    _session_apns_service.reset()
    yield _session_apns_service
    assert _session_apns_service.problems == []


@pytest.fixture
def smtp(_session_smtp: SmtpServer) -> SmtpServer:
    """The real SMTP server every worker sends through, running and empty at the start."""
    if not _session_smtp.running:
        _session_smtp.start()
    _session_smtp.reset()
    return _session_smtp


@pytest.fixture(autouse=True)
def _static_files_without_collectstatic(settings) -> None:
    # Production serves hashed names from a manifest made by collectstatic at build time; tests
    # render pages (the admin) without that step.
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


@pytest.fixture(autouse=True)
def _redis_running_and_empty(redis_server: RedisServer) -> None:
    if not redis_server.running:
        redis_server.start()
    redis_server.forget_all_but_bindings()
    # A call that failed in an earlier test (Redis stopped, or a timeout on a loaded machine)
    # would otherwise fail this test's first calls fast, for up to two seconds.
    redis_circuit.close()


@pytest.fixture(autouse=True)
def _broker_running_and_empty(
    broker_server: RedisServer | RabbitMQServer, _redis_running_and_empty: None
) -> None:
    if not broker_server.running:
        broker_server.start()
    broker_server.forget_all_messages()


# The one shared worker, started by the first test that needs it and kept for the session
# (starting a prefork worker costs seconds).
_SHARED_WORKER = WorkerProcess(logdir=SESSION_DIR / "processes")


def _flush_tried_again_after_a_deadlock() -> None:
    """A test that used a worker ends by flushing the database (TRUNCATE of every table) while
    the worker may still be finishing the work's last step: the notification after the upload
    the test waited for, say. The TRUNCATE locks table after table, the worker's transaction
    holds a row of one and wants another, and PostgreSQL aborts one of the two as a deadlock.
    When it aborts the flush, the next test would start on this one's rows; the flush is tried
    again instead, once the worker's transaction has ended."""
    flush = TransactionTestCase._fixture_teardown

    def teardown(self) -> None:
        for attempt in range(3):
            try:
                return flush(self)
            except CommandError as error:
                deadlock = isinstance(error.__cause__, OperationalError) and "deadlock" in str(
                    error.__cause__
                )
                if not deadlock or attempt == 2:
                    raise
                time.sleep(0.5)

    TransactionTestCase._fixture_teardown = teardown


_flush_tried_again_after_a_deadlock()


@pytest.fixture(scope="session")
def _session_worker(django_db_setup) -> Iterator[WorkerProcess]:
    yield _SHARED_WORKER
    _SHARED_WORKER.stop()


@pytest.fixture
def no_worker_running() -> None:
    """For tests about what happens while no worker runs: stops the shared one if it is up
    (the next test that asks for `celery_worker` starts it again)."""
    _SHARED_WORKER.stop()


@pytest.fixture
def celery_worker(
    transactional_db, _session_worker: WorkerProcess, _broker_running_and_empty: None
) -> WorkerProcess:
    """A real worker consuming every queue, as a separate process.

    Requires committed data: the worker runs in another process with its own connection, so a
    test that uses it runs with `transactional_db` (rows are committed, tables flushed after).
    """
    if not _session_worker.alive:
        _session_worker.start()
    return _session_worker


def _processes_stopped_after_the_test(kind: type[ProjectProcess]):
    started: list[ProjectProcess] = []

    def start(*, wait: bool = True, **options) -> ProjectProcess:
        process = kind(logdir=SESSION_DIR / "processes", **options)
        started.append(process)
        return process.start(wait=wait)

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def start_worker(transactional_db) -> Iterator[Callable[..., WorkerProcess]]:
    """Start extra workers (other queues, other settings), stopped after the test."""
    yield from _processes_stopped_after_the_test(WorkerProcess)


@pytest.fixture
def start_beat(transactional_db) -> Iterator[Callable[..., BeatProcess]]:
    """Start `celery beat` processes, stopped after the test."""
    yield from _processes_stopped_after_the_test(BeatProcess)


@pytest.fixture
def start_flower(transactional_db) -> Iterator[Callable[..., FlowerProcess]]:
    """Start Flower as the Procfile does, stopped after the test."""
    yield from _processes_stopped_after_the_test(FlowerProcess)


@pytest.fixture
def start_web(transactional_db) -> Iterator[Callable[..., WebProcess]]:
    """Start the web server as production runs it (the Procfile's command), stopped after the
    test. For what depends on a server process's state: start-up, logs, timeouts."""
    yield from _processes_stopped_after_the_test(WebProcess)


@pytest.fixture
def celery_app():
    return app
