"""What the broker itself must guarantee, on the broker the session runs (TEST_BROKER): `make
test` runs this file on Redis, then on RabbitMQ. Tests of what only one broker does say so."""

import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core.checks import run_checks
from django.db import transaction
from kombu import Connection
from kombu.exceptions import OperationalError

from config.celery import app
from jobs.brokers import BROKER_DELIVERY_LIMIT, DEAD_LETTER_QUEUE, PlatformCelery, work_queues
from jobs.deadletters import dead_letter_redrive
from jobs.models import DeadLetter, OutboxMessage
from jobs.outbox import enqueue
from jobs.redis import redis_client
from jobs.tasks import maintenance_broker_dead_letters_collect
from tests.harness import only_on_broker
from tests.services import eventually
from tests.worker_tasks.platform import create_user_once, recorded, sleep_then_record
from tests.worker_tasks.recovery import hold_key, hold_then_count

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
@pytest.mark.parametrize("stop", ["stop", "kill"])
@pytest.mark.django_db(transaction=True)
def test_a_broker_restart_with_messages_waiting_loses_none(
    stop, no_worker_running, broker_server, start_worker
):
    # given 20 tasks waiting in their queue (each publish confirmed), and no worker
    key = unique_key()
    for item in range(20):
        hold_then_count.delay(key=key, item=item, hold_seconds=0)
    eventually(lambda: broker_server.queue_length("default") == 20)
    # when the broker restarts, cleanly or SIGKILLed
    getattr(broker_server, stop)()
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
    # given RabbitMQ, and a platform limit the broker's delivery limit would reach first
    settings.CELERY_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672//"
    settings.JOBS_MAX_DELIVERIES = BROKER_DELIVERY_LIMIT
    # then the system check names the problem
    assert "jobs.E006" in {message.id for message in run_checks()}
    # and not with the default limit, nor on Redis, which has no delivery limit of its own
    settings.JOBS_MAX_DELIVERIES = 3
    assert "jobs.E006" not in {message.id for message in run_checks()}
    settings.JOBS_MAX_DELIVERIES = BROKER_DELIVERY_LIMIT
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:6379/0"
    assert "jobs.E006" not in {message.id for message in run_checks()}


@rabbitmq_only
def test_a_live_worker_that_loses_its_connection_does_not_run_a_task_twice_at_once(
    no_worker_running, broker_server, start_worker
):
    # given a worker running a task (late-acked)
    key = unique_key()
    redis_client().set(hold_key(key), 1)
    worker = start_worker(queues=["default"], concurrency=2)
    hold_then_count.delay(key=key, item=0, hold_seconds=60)
    eventually(lambda: recorded("runs", key))
    # when its connection to the broker drops while it lives (a network blip, a broker restart)
    broker_server.ctl("close_all_connections", "test: a blip")
    # then RabbitMQ hands the message out again, and the worker cancels the run it had going
    # instead of finishing it beside the new one
    eventually(lambda: len(recorded("runs", key)) == 2, timeout=30)
    redis_client().delete(hold_key(key))
    eventually(lambda: recorded("effects", key), timeout=30)
    time.sleep(1)
    assert len(recorded("effects", key)) == 1
    assert worker.alive


@rabbitmq_only
@pytest.mark.django_db(transaction=True)
def test_only_messages_a_person_must_act_on_become_dead_letters(no_worker_running, broker_server):
    # given the broker's dead letters: a task message past its expiry (RabbitMQ dead-letters
    # it when no worker took it in time), and two messages no task published, without an id,
    # one of them not even JSON
    sleep_then_record.apply_async(kwargs={"key": unique_key(), "seconds": 0}, expires=0.2)
    with Connection(app.conf.broker_url) as connection:
        producer = connection.Producer()
        for body in (b"[1, 2, 3]", b"not json"):
            producer.publish(
                body,
                exchange=DEAD_LETTER_QUEUE.exchange,
                routing_key="",
                content_type="application/octet-stream",
                content_encoding="binary",
                headers={"x-death": [{"reason": "rejected", "queue": "default"}]},
                declare=[DEAD_LETTER_QUEUE],
            )

    # when the collection runs, until the expired message has been dead-lettered and collected
    def collected_everything() -> bool:
        maintenance_broker_dead_letters_collect()
        return all(broker_server.queue_length(q) == 0 for q in ("default", DEAD_LETTER_QUEUE.name))

    eventually(collected_everything, timeout=20, interval=0.3)
    # then the expired message is dropped, and each of the others is a dead letter of its own
    # that keeps its body for the person who reads it
    letters = DeadLetter.objects.order_by("args")
    assert [letter.args for letter in letters] == [["[1, 2, 3]"], ["not json"]]
    assert all(letter.task_id.startswith("broker:") for letter in letters)


@rabbitmq_only
@pytest.mark.django_db(transaction=True)
def test_delays_of_every_shape_publish_and_run_in_time(celery_worker):
    # given delays under and over a second, as countdowns and as ETAs (aware, naive, ISO text)
    key = unique_key()
    now = datetime.now(UTC)
    delays = {
        "countdown 0.3": {"countdown": 0.3},
        "countdown 1.5": {"countdown": 1.5},
        "aware eta 0.5": {"eta": now + timedelta(seconds=0.5)},
        "naive eta 0.5": {"eta": (now + timedelta(seconds=0.5)).replace(tzinfo=None)},
        "text eta 0.5": {"eta": (now + timedelta(seconds=0.5)).isoformat()},
        "eta just past 1 s": {"eta": now + timedelta(seconds=1.001)},
    }
    # when each is published
    for label, delay in delays.items():
        hold_then_count.apply_async(kwargs={"key": key, "item": label, "hold_seconds": 0}, **delay)
    # then every one runs, none before its time
    effects = eventually(
        lambda: len(recorded("effects", key)) == len(delays) and recorded("effects", key),
        timeout=30,
    )
    assert {item for _, item in effects} == set(delays)
    assert min(stamp for stamp, _ in effects) >= now.timestamp() + 0.3 - 0.05


@rabbitmq_only
@pytest.mark.django_db(transaction=True)
def test_a_delay_published_before_any_worker_declared_the_delay_exchanges_runs(
    no_worker_running, broker_server, start_worker
):
    # given a broker without the delay exchanges (a fresh one: no worker started yet)
    with Connection(app.conf.broker_url) as connection:
        connection.default_channel.exchange_delete("celery_delayed_27")
    PlatformCelery._delay_topology_declared = False
    # when a process publishes a delayed task
    key = unique_key()
    hold_then_count.apply_async(kwargs={"key": key, "item": 0, "hold_seconds": 0}, countdown=1)
    # then it waits in the broker and runs once a worker is there
    start_worker(queues=["default"])
    eventually(lambda: recorded("effects", key), timeout=30)


@rabbitmq_only
def test_a_publish_that_the_broker_never_confirms_fails_in_bounded_time(broker_server, settings):
    # given a connection that has published (so its queue is declared, as on any worker that
    # ran for a while), to a broker that then hangs: a blocked disk, a memory alarm
    with app.connection_for_write() as connection:
        sleep_then_record.apply_async(
            kwargs={"key": unique_key(), "seconds": 0}, connection=connection
        )
        broker_server.freeze()
        try:
            # when a worker or beat publishes through a connection of the app's
            started = time.monotonic()
            with pytest.raises(OperationalError):
                sleep_then_record.apply_async(
                    kwargs={"key": unique_key(), "seconds": 0}, connection=connection, retry=False
                )
            elapsed = time.monotonic() - started
        finally:
            broker_server.thaw()
    # then it gives up after the broker's reply timeout, as a publish to a hung Redis does
    reply_timeout = settings.CELERY_BROKER_TRANSPORT_OPTIONS["socket_timeout"]
    assert reply_timeout <= elapsed < reply_timeout + 2


@pytest.mark.django_db(transaction=True)
def test_the_first_publish_after_a_broker_restart_goes_out_at_once(
    no_worker_running, broker_server
):
    # given a process whose publishing connection is open from an earlier publish
    with transaction.atomic():
        enqueue(create_user_once, key=unique_key())
    # when the broker restarts, and the process publishes again
    broker_server.stop()
    broker_server.start()
    with transaction.atomic():
        message = enqueue(create_user_once, key=unique_key())
    # then that publish went out, on a fresh connection, instead of waiting for the relay
    message.refresh_from_db()
    assert message.status == OutboxMessage.Status.PUBLISHED
