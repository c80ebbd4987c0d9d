"""What the broker itself must guarantee, on the broker the session runs (TEST_BROKER): `make
test` runs this file on Redis, then on RabbitMQ. Tests of what only one broker does say so."""

import json
import time
import uuid

import pytest
from django.contrib.auth import get_user_model
from django.core.checks import run_checks
from django.db import transaction
from kombu import Connection

from config.celery import app
from jobs.brokers import BROKER_DELIVERY_LIMIT, DEAD_LETTER_QUEUE, work_queues
from jobs.deadletters import dead_letter_redrive
from jobs.models import DeadLetter, OutboxMessage
from jobs.outbox import enqueue
from jobs.tasks import maintenance_broker_dead_letters_collect
from tests.harness import only_on_broker
from tests.services import eventually
from tests.worker_tasks.platform import create_user_once, recorded, sleep_then_record
from tests.worker_tasks.recovery import hold_then_count

rabbitmq_only = only_on_broker("rabbitmq", "its quorum queues' own guarantee")


def unique_key() -> str:
    return uuid.uuid4().hex[:10]


@rabbitmq_only
def test_every_work_queue_is_a_durable_quorum_queue_with_a_delivery_limit(
    celery_worker, broker_server, settings
):
    # given a worker that declared its queues
    # when the broker lists them
    listing = broker_server.ctl(
        "list_queues", "--quiet", "--formatter", "json", "name", "type", "durable", "arguments"
    )
    queues = {queue["name"]: queue for queue in json.loads(listing)}
    # then every work queue is a durable quorum queue that dead-letters after the limit
    for name in settings.JOB_QUEUES:
        assert queues[name]["type"] == "quorum"
        assert queues[name]["durable"] is True
        # rabbitmqctl lists each argument as [name, type, value]
        arguments = {argument[0]: argument[-1] for argument in queues[name]["arguments"]}
        assert arguments["x-delivery-limit"] == BROKER_DELIVERY_LIMIT
        assert arguments["x-dead-letter-exchange"] == DEAD_LETTER_QUEUE.exchange.name
    # and what it dead-letters has a durable queue to land in
    assert queues[DEAD_LETTER_QUEUE.name]["type"] == "quorum"


@rabbitmq_only
@pytest.mark.django_db(transaction=True)
def test_a_broker_restart_with_messages_waiting_loses_none(
    no_worker_running, broker_server, start_worker
):
    # given 20 tasks waiting in their queue, and no worker
    key = unique_key()
    for item in range(20):
        hold_then_count.delay(key=key, item=item, hold_seconds=0)
    eventually(lambda: broker_server.queue_length("default") == 20)
    # when the broker restarts
    broker_server.stop()
    broker_server.start()
    # then a worker started afterwards runs every one of them, once
    start_worker(queues=["default"])
    eventually(lambda: len(recorded("effects", key)) >= 20, timeout=30)
    time.sleep(1)  # nothing more comes
    assert sorted(int(item) for _, item in recorded("effects", key)) == list(range(20))


@rabbitmq_only
@pytest.mark.django_db(transaction=True)
def test_a_message_returned_past_the_delivery_limit_becomes_a_dead_letter_a_person_can_redrive(
    no_worker_running, start_worker
):
    # given a task message that a consumer keeps taking and handing back unacknowledged (as a
    # message does that kills every worker that runs it while the platform cannot count)
    key = unique_key()
    sleep_then_record.apply_async(kwargs={"key": key, "seconds": 0}, task_id=f"doomed-{key}")
    with Connection(app.conf.broker_url) as connection:
        queue = next(q for q in work_queues() if q.name == "default").bind(connection.channel())
        for _ in range(BROKER_DELIVERY_LIMIT + 1):
            message = eventually(lambda: queue.get(no_ack=False), timeout=10)
            message.requeue()
        # then the broker stops delivering it
        time.sleep(0.5)
        assert queue.get(no_ack=False) is None
    # and the collection turns it into a dead letter with its task and arguments
    maintenance_broker_dead_letters_collect()
    letter = DeadLetter.objects.get(task_id=f"doomed-{key}")
    assert letter.task_name == "tests.sleep_then_record"
    assert letter.kwargs == {"key": key, "seconds": 0}
    assert letter.queue == "default"
    assert letter.exception_class == "jobs.brokers.BrokerDeadLettered"
    # which a person re-drives like any other, and it runs
    start_worker(queues=["default"])
    dead_letter_redrive(dead_letter_id=letter.pk)
    eventually(lambda: recorded("effects", key))


@pytest.mark.django_db(transaction=True)
def test_a_publish_to_a_frozen_broker_returns_in_bounded_time_and_the_relay_sends_it_later(
    no_worker_running, broker_server, start_worker, settings
):
    # given a broker that keeps its connections open and answers nothing (SIGSTOP)
    key = unique_key()
    broker_server.freeze()
    try:
        # when a request enqueues durably and commits
        started = time.monotonic()
        with transaction.atomic():
            message = enqueue(create_user_once, key=key)
        elapsed = time.monotonic() - started
    finally:
        broker_server.thaw()
    # then it returned within the publish timeout (and a connect), not kombu's retries
    assert elapsed < 3 * settings.JOBS_PUBLISH_TIMEOUT_SECONDS + 0.5
    # and the message waits in the outbox, not marked published
    message.refresh_from_db()
    assert message.status == OutboxMessage.Status.PENDING
    # and once the broker answers again, a worker's start-up relay sends it, and it has its
    # effect once (the frozen broker may still have stored the first publish, whose answer never
    # came: then it runs twice, the second time as a repeat, as the outbox promises)
    start_worker(queues=["default", "maintenance"])
    eventually(lambda: "effect" in {value for _, value in recorded("runs", key)}, timeout=30)
    time.sleep(1)
    assert [value for _, value in recorded("runs", key)].count("effect") == 1
    assert get_user_model().objects.filter(email__startswith=f"{key}-").count() == 1


def test_the_time_limits_must_fit_in_rabbitmqs_consumer_timeout(settings):
    # given RabbitMQ with a consumer timeout shorter than two hard time limits
    settings.CELERY_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672//"
    settings.RABBITMQ_CONSUMER_TIMEOUT_SECONDS = 2 * settings.CELERY_TASK_TIME_LIMIT
    # then the system check names the problem
    assert "jobs.E005" in {message.id for message in run_checks()}
    # and on Redis the setting does not apply
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:6379/0"
    assert "jobs.E005" not in {message.id for message in run_checks()}


def test_the_platform_must_dead_letter_a_poison_message_before_rabbitmq_does(settings):
    settings.JOBS_MAX_DELIVERIES = BROKER_DELIVERY_LIMIT
    assert "jobs.E006" in {message.id for message in run_checks()}
    settings.JOBS_MAX_DELIVERIES = 3
    assert "jobs.E006" not in {message.id for message in run_checks()}
