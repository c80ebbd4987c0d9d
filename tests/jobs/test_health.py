import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from django.conf import settings as django_settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.test import Client

from jobs.health import CHECKS
from jobs.heartbeats import beat_heartbeat_age
from tests.services import HungServer, eventually

# Each wait below is a multiple of the check timeout plus this much for the request itself and a
# busy machine; well below the half timeout the worker ping used to add on top.
SLACK_SECONDS = 0.5


def readyz_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith("readyz-")]


@pytest.fixture(autouse=True)
def _every_probe_runs_the_checks(settings) -> None:
    # Tests change the world between two probes and expect the second to see it; the cache has
    # tests of its own.
    settings.READINESS_CACHE_SECONDS = 0


@pytest.fixture
def hang() -> Iterator[Callable[[], HungServer]]:
    """Make hung servers; at the end they are stopped and the checks stuck on them have ended,
    so no run in flight carries over into the next test."""
    servers: list[HungServer] = []

    def make() -> HungServer:
        servers.append(HungServer())
        return servers[-1]

    yield make
    for server in servers:
        server.stop()
    eventually(lambda: not readyz_threads(), timeout=20)


@contextmanager
def database_at(server: HungServer) -> Iterator[HungServer]:
    """Connections to the database opened meanwhile (the check opens one per run, in a thread of
    its own) go to a PostgreSQL server at `server`; connections already open stay as they are."""
    original = connections.settings[DEFAULT_DB_ALIAS]
    connections.settings[DEFAULT_DB_ALIAS] = {
        **original,
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "hung",
        "USER": "hung",
        "PASSWORD": "",
        "HOST": "127.0.0.1",
        "PORT": str(server.port),
        "OPTIONS": {},
    }
    try:
        yield server
    finally:
        connections.settings[DEFAULT_DB_ALIAS] = original


@pytest.fixture
def hung_database(db, hang) -> Iterator[HungServer]:
    """A database server that accepts connections and never answers."""
    with database_at(hang()) as server:
        yield server


@pytest.fixture
def hung_redis(settings, monkeypatch, hang) -> HungServer:
    """The broker and the platform's Redis are one Redis that accepts and never answers."""
    server = hang()
    url = f"redis://127.0.0.1:{server.port}/0"
    # Celery reads the broker URL from the environment before its settings.
    monkeypatch.setenv("CELERY_BROKER_URL", url)
    settings.REDIS_URL = url
    return server


@pytest.fixture
def served_client(client) -> Client:
    """A test client whose web process has served a request already: the first one imports the
    URL modules, which has nothing to do with the time a probe takes."""
    client.get("/healthz")
    return client


def probe(client: Client, path: str = "/readyz") -> tuple[dict, int, float]:
    started = time.monotonic()
    response = client.get(path)
    return response.json(), response.status_code, time.monotonic() - started


def ready(client: Client) -> dict | None:
    """The body of a 200 answer, or None; workers write heartbeats every 2 s, and each test
    starts with an empty Redis, so a live worker may take that long to show."""
    body, status, _ = probe(client)
    return body if status == 200 else None


def test_healthz_answers_without_touching_any_dependency(client, broker_server):
    # given a broker that is down
    broker_server.stop()
    # when the liveness probe asks
    response = client.get("/healthz")
    # then the web process is alive all the same: liveness must not restart healthy web pods
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_is_green_with_database_broker_worker_and_beat(client, celery_worker, start_beat):
    # given a worker consuming every queue and a beat, against the broker and the database
    start_beat()
    # when the readiness probe asks
    body = eventually(lambda: ready(client), timeout=10)
    # then every check passes and says what it saw
    assert set(body["checks"]) == {"database", "broker", "worker", "queues", "beat", "canary"}
    assert all(check["ok"] for check in body["checks"].values()), body
    assert celery_worker.name in body["checks"]["worker"]["detail"]


@pytest.mark.django_db(transaction=True)
def test_readyz_fails_when_no_worker_and_no_beat_run(client, no_worker_running):
    # given a broker and a database but no worker and no beat process
    # when the readiness probe asks
    body, status, _ = probe(client)
    # then it answers 503 and names the missing pieces
    assert status == 503
    assert body["checks"]["database"]["ok"] and body["checks"]["broker"]["ok"]
    assert body["checks"]["worker"] == {
        "ok": False,
        "detail": "no worker heartbeat",
        "duration_ms": body["checks"]["worker"]["duration_ms"],
    }
    queues = ", ".join(django_settings.JOB_QUEUES)
    assert body["checks"]["queues"]["detail"] == f"no consumer for {queues}"
    assert "no heartbeat" in body["checks"]["beat"]["detail"]


def test_readyz_names_each_queue_that_no_worker_consumes(
    client, no_worker_running, start_worker, start_beat
):
    # given one worker, consuming two of the queues, and a beat
    worker = start_worker(queues=["default", "emails"])
    start_beat()

    # when the readiness probe asks, once the worker's heartbeat is in
    def worker_seen() -> tuple[dict, int] | None:
        body, status, _ = probe(client)
        return (body, status) if body["checks"]["worker"]["ok"] else None

    body, status = eventually(worker_seen, timeout=10)
    # then the deployment is not ready, and the queues whose work would never run are named
    assert status == 503
    assert body["checks"]["queues"] == {
        "ok": False,
        "detail": "no consumer for media, reports, notifications, maintenance",
        "duration_ms": body["checks"]["queues"]["duration_ms"],
    }
    assert worker.name in body["checks"]["worker"]["detail"]
    assert body["checks"]["beat"]["ok"] and body["checks"]["broker"]["ok"]

    # when a worker for the rest starts
    start_worker(queues=["media", "reports", "notifications", "maintenance"])
    # then every queue has a consumer and the deployment is ready
    eventually(lambda: ready(client), timeout=10)


def test_readyz_turns_503_within_seconds_when_the_broker_stops(
    client, broker_server, celery_worker, start_beat
):
    # given a deployment that is ready
    start_beat()
    eventually(lambda: ready(client), timeout=10)
    # when the broker stops
    broker_server.stop()
    body, status, elapsed = probe(client)
    # then the probe answers 503 at once, blaming the broker
    assert status == 503
    assert body["checks"]["broker"]["ok"] is False
    assert body["checks"]["database"]["ok"] is True
    assert elapsed < django_settings.READINESS_CHECK_TIMEOUT, elapsed


@pytest.mark.parametrize("web_clock_skew", [0, -3600], ids=["same clock", "web clock 1 h behind"])
def test_readyz_reports_a_stale_beat(
    client, settings, monkeypatch, celery_worker, start_beat, web_clock_skew
):
    # given a beat that ran and then died without a trace but its last heartbeat
    beat = start_beat()
    beat.kill()
    settings.BEAT_HEARTBEAT_MAX_AGE = 0.5
    time.sleep(1)
    # and a web host whose clock may be behind beat's (a dead beat must not look fresh there)
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + web_clock_skew)
    # when the readiness probe asks
    body, status, _ = probe(client)
    # then beat is reported stale and the deployment not ready
    assert status == 503
    assert body["checks"]["beat"]["ok"] is False
    assert "last heartbeat" in body["checks"]["beat"]["detail"]


@pytest.mark.parametrize("web_clock_skew", [3600, -3600], ids=["ahead", "behind"])
def test_beat_freshness_does_not_depend_on_the_web_hosts_clock(
    client, monkeypatch, celery_worker, start_beat, web_clock_skew
):
    # given a beat that ticks, and a web host whose clock is off by an hour
    start_beat()
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + web_clock_skew)
    # when the readiness probe asks
    body = eventually(lambda: ready(client), timeout=10)
    # then beat is fresh, its age measured on the Redis server's clock alone
    assert body["checks"]["beat"]["ok"] is True
    assert beat_heartbeat_age() < django_settings.BEAT_HEARTBEAT_MAX_AGE


@pytest.mark.django_db
def test_readyz_answers_within_one_check_timeout_while_the_broker_hangs(served_client, hung_redis):
    # given a broker (and platform Redis) that accepts connections and never answers
    timeout = django_settings.READINESS_CHECK_TIMEOUT
    # when the readiness probe asks
    body, status, elapsed = probe(served_client)
    # then it answers 503 within one check timeout, blaming the broker
    assert status == 503
    assert elapsed < timeout + SLACK_SECONDS, elapsed
    assert body["checks"]["broker"] == {
        "ok": False,
        "detail": f"no answer within {timeout:g}s",
        "duration_ms": body["checks"]["broker"]["duration_ms"],
    }
    assert body["checks"]["database"]["ok"] is True
    assert not any(body["checks"][name]["ok"] for name in ("worker", "queues", "beat"))


@pytest.mark.parametrize("path", ["/readyz", "/readyz?scope=web"])
def test_readyz_answers_within_one_check_timeout_while_the_database_hangs(
    served_client, hung_database, path
):
    # given a database server that accepts connections and never answers
    timeout = django_settings.READINESS_CHECK_TIMEOUT
    # when the readiness probe asks
    body, status, elapsed = probe(served_client, path)
    # then it answers 503 within one check timeout (no second wait for the workers after it)
    assert status == 503
    assert elapsed < timeout + SLACK_SECONDS, elapsed
    assert body["checks"]["database"]["detail"] == f"no answer within {timeout:g}s"


def test_probes_while_dependencies_hang_hold_at_most_one_thread_per_check(
    client, settings, hung_database, hung_redis
):
    # given a database and a Redis that hang, and probes that give up after half a second
    settings.READINESS_CHECK_TIMEOUT = 0.5
    threads_before = threading.active_count()
    statuses, threads = [], []
    # when probes keep coming for seconds, long enough for the checks on Redis to time out
    # (after its client's 1 s socket timeout) and run again
    for _ in range(12):
        statuses.append(probe(client)[1])
        threads.append(threading.active_count())
        time.sleep(0.25)
    # then each probe answered, and the hung checks never piled up: one run of each at most
    assert statuses == [503] * 12
    assert max(threads) - threads_before <= len(CHECKS), threads
    # and the database was asked once: every later probe found that run still in flight
    assert hung_database.connections == 1


@pytest.mark.usefixtures("served_client")
def test_concurrent_probes_share_one_run_of_each_check(hung_database):
    # given a database that hangs
    timeout = django_settings.READINESS_CHECK_TIMEOUT
    answers: list[tuple[int, float]] = []

    def probe_once() -> None:
        _, status, elapsed = probe(Client(), "/readyz?scope=web")
        answers.append((status, elapsed))

    # when ten probes arrive at once
    clients = [threading.Thread(target=probe_once) for _ in range(10)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join()
    # then each answers within one timeout, and all ten together cost one database connection
    assert [status for status, _ in answers] == [503] * 10
    assert max(elapsed for _, elapsed in answers) < timeout + SLACK_SECONDS
    assert hung_database.connections == 1


@pytest.mark.django_db
def test_a_result_is_reused_for_the_cache_period(client, settings, hang):
    # given a web process that has just found its database ready, and reuses results for a minute
    assert probe(client, "/readyz?scope=web")[1] == 200
    settings.READINESS_CACHE_SECONDS = 60
    # when the database then hangs
    with database_at(hang()) as server:
        # then probes within the cache period reuse the answer without asking the database
        assert [probe(client, "/readyz?scope=web")[1] for _ in range(5)] == [200] * 5
        assert server.connections == 0
        # and once the period is over, the next probe asks again
        settings.READINESS_CACHE_SECONDS = 0
        assert probe(client, "/readyz?scope=web")[1] == 503
        assert server.connections == 1


@pytest.mark.django_db
def test_the_web_scope_checks_the_database_only(client, broker_server):
    # given a broker that is down (the outbox keeps signups working meanwhile)
    broker_server.stop()
    # when the web tier's readiness probe asks
    body, status, _ = probe(client, "/readyz?scope=web")
    # then the web process is ready: it can serve, and keeps its place in the rotation
    assert status == 200
    assert set(body["checks"]) == {"database"}
    # while the deployment as a whole is not
    assert probe(client)[1] == 503


def test_an_unknown_scope_is_refused(client):
    response = client.get("/readyz?scope=everything")
    assert response.status_code == 400
    assert response.json()["errors"]["scope"] == ["Must be one of: deployment, web."]


@pytest.mark.django_db
def test_metrics_speak_prometheus_text(client):
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    assert "# TYPE python_info gauge" in response.content.decode()


@pytest.mark.django_db
def test_openapi_schema_and_docs_are_served(client):
    schema = client.get("/api/schema", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200
    assert schema.json()["openapi"].startswith("3.")
    assert client.get("/api/docs").status_code == 200
