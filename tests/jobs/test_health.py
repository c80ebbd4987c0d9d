import time

import pytest


def test_healthz_answers_without_touching_any_dependency(client, redis_server):
    # given a broker that is down
    redis_server.stop()
    # when the liveness probe asks
    response = client.get("/healthz")
    # then the web process is alive all the same: liveness must not restart healthy web pods
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_is_green_with_database_broker_worker_and_beat(client, celery_worker, start_beat):
    # given a worker and a beat running against the broker and the database
    start_beat()
    # when the readiness probe asks
    response = client.get("/readyz")
    # then every check passes and says what it saw
    body = response.json()
    assert response.status_code == 200, body
    assert set(body["checks"]) == {"database", "broker", "worker", "beat"}
    assert all(check["ok"] for check in body["checks"].values())
    assert celery_worker.name in body["checks"]["worker"]["detail"]


@pytest.mark.django_db(transaction=True)
def test_readyz_fails_when_no_worker_and_no_beat_run(client, no_worker_running):
    # given a broker and a database but no worker and no beat process
    # when the readiness probe asks
    response = client.get("/readyz")
    # then it answers 503 and names the missing pieces
    body = response.json()
    assert response.status_code == 503
    assert body["checks"]["database"]["ok"] and body["checks"]["broker"]["ok"]
    assert body["checks"]["worker"]["ok"] is False
    assert body["checks"]["beat"]["ok"] is False
    assert "no heartbeat" in body["checks"]["beat"]["detail"]


def test_readyz_turns_503_within_seconds_when_the_broker_stops(
    client, redis_server, celery_worker, start_beat
):
    # given a deployment that is ready
    start_beat()
    assert client.get("/readyz").status_code == 200
    # when the broker stops
    redis_server.stop()
    started = time.monotonic()
    response = client.get("/readyz")
    elapsed = time.monotonic() - started
    # then the probe answers 503 at once (bounded by the per-check timeout), blaming the broker
    body = response.json()
    assert response.status_code == 503
    assert body["checks"]["broker"]["ok"] is False
    assert body["checks"]["database"]["ok"] is True
    assert elapsed < 5, f"readyz took {elapsed:.1f}s with the broker down"


def test_readyz_reports_a_stale_beat(client, settings, celery_worker, start_beat):
    # given a beat that ran and then died without a trace but its last heartbeat
    beat = start_beat()
    beat.kill()
    settings.BEAT_HEARTBEAT_MAX_AGE = 0.5
    time.sleep(1)
    # when the readiness probe asks
    response = client.get("/readyz")
    # then beat is reported stale and the deployment not ready
    assert response.status_code == 503
    assert "last heartbeat" in response.json()["checks"]["beat"]["detail"]


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
