"""The queues' canaries (jobs/canary.py): readiness and /metrics know whether each queue is being
consumed, which a worker's heartbeat alone cannot tell."""

import math
import os
import signal

from amqp.exceptions import PreconditionFailed
from django.conf import settings as django_settings

from config.celery import app
from jobs.canary import canaries_send, canary_ages, canary_return
from tests.jobs.test_metrics import TOKEN, figures
from tests.services import eventually

FAST_CANARIES = {"JOBS_CANARY_INTERVAL_SECONDS": "1", "JOBS_CANARY_MAX_AGE_SECONDS": "3"}


def readiness(client) -> tuple[int, dict]:
    response = client.get("/readyz")
    return response.status_code, response.json()["checks"]


def test_beats_canaries_come_back_from_every_queue_and_show_on_readyz_and_metrics(
    client, settings, celery_worker, start_beat
):
    settings.READINESS_CACHE_SECONDS = 0
    settings.METRICS_BEARER_TOKEN = TOKEN
    # given no canary ever came back (Redis starts each test empty)
    assert set(canary_ages().values()) == {math.inf}
    assert readiness(client)[1]["canary"]["ok"] is False
    # when beat runs beside a worker consuming every queue
    start_beat()
    # then a canary comes back from each queue, and the deployment is ready
    eventually(lambda: readiness(client)[0] == 200, timeout=20)
    assert max(canary_ages().values()) < django_settings.JOBS_CANARY_MAX_AGE_SECONDS
    # and /metrics has each queue's canary age
    scraped = figures(
        client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).content.decode()
    )
    for queue in django_settings.JOB_QUEUES:
        age = scraped[("jobs_canary_age_seconds", (("queue_name", queue),))]
        assert 0 <= age < django_settings.JOBS_CANARY_MAX_AGE_SECONDS


def test_a_worker_that_heartbeats_but_runs_nothing_fails_readiness_by_its_canaries(
    client, settings, no_worker_running, start_worker, start_beat
):
    settings.READINESS_CACHE_SECONDS = 0
    settings.JOBS_CANARY_MAX_AGE_SECONDS = float(FAST_CANARIES["JOBS_CANARY_MAX_AGE_SECONDS"])
    # given the only worker, and a beat sending canaries every second
    worker = start_worker(concurrency=1)
    start_beat(extra_env=FAST_CANARIES)
    eventually(lambda: readiness(client)[0] == 200, timeout=20)
    # when its pool stops running tasks while its main process goes on: connected, subscribed
    # and heartbeating, as a worker stuck after a reconnect is (celery/celery#8030)
    pool = worker.pool_pids()
    assert pool
    for pid in pool:
        os.kill(pid, signal.SIGSTOP)
    try:
        # then readiness fails on the canaries alone, naming every queue once each is late
        def every_canary_late() -> dict | None:
            status, checks = readiness(client)
            detail = checks["canary"]["detail"]
            named = all(f"{queue} (" in detail for queue in django_settings.JOB_QUEUES)
            return checks if status == 503 and named else None

        checks = eventually(every_canary_late, timeout=20)
        assert not checks["canary"]["ok"]
        assert checks["worker"]["ok"] and checks["queues"]["ok"] and checks["beat"]["ok"]
    finally:
        for pid in pool:
            os.kill(pid, signal.SIGCONT)
    # and once it runs tasks again, the canaries come back and the deployment is ready
    eventually(lambda: readiness(client)[0] == 200, timeout=20)


def test_a_queue_the_broker_refuses_loses_its_own_canary_only_and_beats_loop_goes_on(
    monkeypatch, broker_server, caplog
):
    # given a broker that refuses one queue for a reason of its own (RabbitMQ: a queue declared
    # elsewhere with other arguments, a user without permission), which is no connection error
    sent = []
    publish = app.send_task

    def send_task(name, *args, queue=None, **options):
        if queue == "media":
            raise PreconditionFailed("inequivalent arg 'x-queue-type' for queue 'media'")
        sent.append(queue)
        return publish(name, *args, queue=queue, **options)

    monkeypatch.setattr(app, "send_task", send_task)
    # when beat sends its canaries, nothing escapes into its loop
    canaries_send()
    # and every other queue still gets its canary, the refused one named in the log
    assert sent == [queue for queue in django_settings.JOB_QUEUES if queue != "media"]
    assert "canary for media not sent" in caplog.text


def test_a_canary_whose_record_fails_is_no_dead_letter(redis_server, db, caplog):
    # given Redis gone as a canary comes back
    redis_server.stop()
    # when its task records it, the error is logged and nothing is raised (no dead letter)
    canary_return(queue="default")
    assert "canary from default not recorded" in caplog.text
