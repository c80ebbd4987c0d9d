"""Durable enqueue: nothing lost when the broker is down, nothing sent on rollback."""

import threading
import time
import uuid
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from jobs.models import OutboxMessage
from jobs.outbox import enqueue, enqueue_in, outbox_prune, outbox_relay, publish_circuit
from tests.harness import task_runs_on_when_its_worker_loses_the_broker
from tests.services import at_the_same_moment, eventually
from tests.worker_tasks.basics import create_user
from tests.worker_tasks.platform import flaky, recorded

User = get_user_model()


@pytest.fixture(autouse=True)
def _circuit_closed():
    # Each test starts with a process that has not seen the broker fail.
    publish_circuit.record_success()


def test_enqueue_publishes_after_commit_and_the_worker_runs_it(celery_worker):
    # when a transaction that enqueues commits
    with transaction.atomic():
        message = enqueue(create_user, email="outbox@example.com")
    # then the task runs, and the outbox row says it was published
    eventually(lambda: User.objects.filter(email="outbox@example.com").exists())
    message.refresh_from_db()
    assert message.status == OutboxMessage.Status.PUBLISHED
    assert message.claimed_until is None


def test_a_rolled_back_transaction_enqueues_nothing(celery_worker, broker_server):
    # given a transaction that enqueues, then fails
    with pytest.raises(RuntimeError), transaction.atomic():
        enqueue(create_user, email="rolled-back@example.com")
        raise RuntimeError("the request failed after enqueueing")
    # then no row is left and nothing reached the broker, so nothing can ever run
    assert not OutboxMessage.objects.exists()
    assert outbox_relay() == 0
    # (a marker task published afterwards runs, proving the worker would have run the first)
    create_user.delay("marker@example.com")
    eventually(lambda: User.objects.filter(email="marker@example.com").exists())
    assert not User.objects.filter(email="rolled-back@example.com").exists()


def test_broker_down_at_commit_costs_the_request_little_and_loses_nothing(
    celery_worker, broker_server
):
    # given a broker that is down
    broker_server.stop()
    # when a request writes a user and enqueues its follow-up work
    started = time.monotonic()
    with transaction.atomic():
        User.objects.create_user(email="ada@example.com")
        message = enqueue(create_user, email="ada-followup@example.com")
    elapsed = time.monotonic() - started
    # then the request finishes fast, and the work waits in the outbox
    assert elapsed < 1.0, f"enqueue blocked the request for {elapsed:.2f}s"
    message.refresh_from_db()
    assert message.status == OutboxMessage.Status.PENDING
    assert message.publish_attempts == 1 and message.last_error
    # and while the broker is still down, the next requests do not even try (no timeout each)
    started = time.monotonic()
    with transaction.atomic():
        enqueue(create_user, email="second@example.com")
    assert time.monotonic() - started < 0.2

    # when the broker comes back empty (no persistence) and the relay runs
    broker_server.start()
    publish_circuit.record_success()  # the relay's process would not share this one's memory
    eventually(lambda: outbox_relay() or None, timeout=10)
    # then the work runs
    eventually(lambda: User.objects.filter(email="ada-followup@example.com").exists(), timeout=30)
    eventually(lambda: User.objects.filter(email="second@example.com").exists(), timeout=30)
    assert not OutboxMessage.objects.filter(status=OutboxMessage.Status.PENDING).exists()


def test_a_starting_worker_relays_what_piled_up(start_worker, no_worker_running):
    # given work enqueued while the broker refused it (its claim released for the relay)
    message = OutboxMessage.objects.create(
        task_name="tests.create_user", kwargs={"email": "piled-up@example.com"}
    )
    # when a worker starts
    start_worker()
    # then it publishes the pending row and the work runs
    eventually(lambda: User.objects.filter(email="piled-up@example.com").exists(), timeout=30)
    message.refresh_from_db()
    assert message.status == OutboxMessage.Status.PUBLISHED


@pytest.mark.django_db(transaction=True)
def test_two_relays_at_once_publish_each_row_exactly_once(no_worker_running, broker_server):
    # given 60 pending rows and no worker consuming, so the broker's queue can be counted
    OutboxMessage.objects.bulk_create(
        OutboxMessage(task_name="tests.create_user", kwargs={"email": f"r{i}@example.com"})
        for i in range(60)
    )
    # when two relays run at the same moment
    published = at_the_same_moment(outbox_relay, outbox_relay)
    # then the rows were split between them, none twice
    assert sum(published) == 60
    assert broker_server.queue_length("default") == 60
    assert not OutboxMessage.objects.filter(status=OutboxMessage.Status.PENDING).exists()


@pytest.mark.django_db(transaction=True)
def test_a_long_delay_waits_in_the_database_not_on_the_broker(broker_server, settings):
    # given a delay longer than a broker countdown may safely be (the visibility timeout)
    delay = timedelta(seconds=settings.JOBS_MAX_BROKER_COUNTDOWN_SECONDS + 60)
    # when work is enqueued with it
    with transaction.atomic():
        message = enqueue_in(delay, create_user, email="later@example.com")
    # then nothing is on the broker and the relay leaves it alone until it is due
    assert broker_server.queue_length("default") == 0
    assert outbox_relay() == 0
    message.refresh_from_db()
    assert message.release_at > timezone.now() + delay - timedelta(seconds=5)
    # when it becomes due
    OutboxMessage.objects.filter(pk=message.pk).update(release_at=timezone.now())
    # then the relay publishes it like any other
    assert outbox_relay() == 1


def test_a_short_delay_is_a_broker_countdown(celery_worker):
    key = uuid.uuid4().hex
    with transaction.atomic():
        enqueue_in(timedelta(seconds=1), flaky, key=key, failures=0)
    published_at = time.time()
    (ran_at, _), *_ = eventually(lambda: recorded("effects", key), timeout=15)
    assert ran_at - published_at >= 0.9


@pytest.mark.django_db
def test_pruning_removes_old_published_rows_and_keeps_pending_ones():
    old = timezone.now() - timedelta(days=30)
    kept_pending = OutboxMessage.objects.create(task_name="x", created_at=old)
    recent = OutboxMessage.objects.create(
        task_name="x", status=OutboxMessage.Status.PUBLISHED, published_at=timezone.now()
    )
    OutboxMessage.objects.create(
        task_name="x", status=OutboxMessage.Status.PUBLISHED, published_at=old
    )
    assert outbox_prune(older_than=timedelta(days=7)) == 1
    assert set(OutboxMessage.objects.values_list("pk", flat=True)) == {kept_pending.pk, recent.pk}


def pending_row(task_name: str, *, queue: str = "", **kwargs) -> OutboxMessage:
    # As a request leaves it when its publish on commit failed: pending, unclaimed, due.
    return OutboxMessage.objects.create(task_name=task_name, kwargs=kwargs, queue=queue)


@pytest.mark.django_db(transaction=True)
def test_a_row_that_cannot_be_published_waits_its_turn_and_ends_dead_lettered(settings):
    from jobs.deadletters import dead_letter_redrive
    from jobs.models import DeadLetter

    settings.JOBS_OUTBOX_MAX_PUBLISH_ATTEMPTS = 2
    # given a row first in line whose queue no longer exists (removed by a later release)
    bad = pending_row(create_user.name, queue="retired_queue", email="bad@example.com")
    good = [pending_row(create_user.name, email=f"u{i}@example.com") for i in range(3)]
    # when the relay runs, the rows behind it still go out, and the broker counts as healthy
    assert outbox_relay() == 3
    assert set(OutboxMessage.objects.filter(pk__in=[g.pk for g in good]).values_list(
        "status", flat=True)) == {OutboxMessage.Status.PUBLISHED}  # fmt: skip
    assert publish_circuit.allows_publishing()
    bad.refresh_from_db()
    assert bad.status == OutboxMessage.Status.PENDING and bad.row_failures == 1
    assert bad.release_at > timezone.now()  # tried again later, not first in line
    assert "retired_queue" in bad.last_error
    # when it fails again once due, it becomes a dead letter a person can see and re-drive
    OutboxMessage.objects.filter(pk=bad.pk).update(release_at=timezone.now())
    assert outbox_relay() == 0
    bad.refresh_from_db()
    assert bad.status == OutboxMessage.Status.UNPUBLISHABLE
    letter = DeadLetter.objects.get(task_id=str(bad.pk))
    assert (
        letter.kwargs == {"email": "bad@example.com"} and "QueueNotFound" in letter.exception_class
    )
    # re-driven, it goes out through a new row on the task's own queue
    redriven = dead_letter_redrive(dead_letter_id=letter.pk)
    redriven.refresh_from_db()
    assert redriven.status == OutboxMessage.Status.PUBLISHED


@pytest.mark.django_db(transaction=True)
def test_a_slow_relay_and_a_later_one_never_publish_a_row_twice(monkeypatch):
    from jobs import outbox

    # given rows that take a relay longer to publish than one claim lasts
    monkeypatch.setattr(outbox, "CLAIM_SECONDS", 0.5)
    rows = [pending_row(create_user.name, email=f"slow{i}@example.com") for i in range(8)]
    sent: list[str] = []
    publish = outbox._PublishingConnection.send

    def slow_send(self, *, message, countdown):
        time.sleep(0.2)
        sent.append(str(message.pk))
        publish(self, message=message, countdown=countdown)

    monkeypatch.setattr(outbox._PublishingConnection, "send", slow_send)
    # when a second relay starts (the next beat tick, a starting worker) while the first still runs
    first = threading.Thread(target=outbox_relay)
    first.start()
    time.sleep(0.7)
    outbox_relay()
    first.join()
    # then every row went out exactly once
    assert sorted(sent) == sorted(str(row.pk) for row in rows)
    assert not OutboxMessage.objects.exclude(status=OutboxMessage.Status.PUBLISHED).exists()


@task_runs_on_when_its_worker_loses_the_broker
def test_a_retry_that_cannot_be_published_waits_in_the_outbox_not_in_the_dead_letters(
    no_worker_running, start_worker, broker_server
):
    from jobs.models import DeadLetter
    from tests.worker_tasks.platform import fail_once_when_told

    # given a task that fails transiently just after the broker went down
    key = uuid.uuid4().hex
    start_worker()
    fail_once_when_told.delay(key=key, hold_seconds=2)
    eventually(lambda: recorded("attempts", key), timeout=20)
    broker_server.stop()
    # then its retry is kept in the outbox under the task's own id and retry count
    retry = eventually(lambda: OutboxMessage.objects.filter(retries=1).first(), timeout=30)
    assert retry.task_name == fail_once_when_told.name and retry.task_id
    assert not DeadLetter.objects.exists()
    # and once the broker is back, the relay publishes it and the task completes, once
    broker_server.start()
    # (the relay a starting worker runs; a worker of its own: kombu's Redis transport can crash
    # the first one's main process as it closes the lost connection with a message in flight,
    # celery/kombu#582, and a process manager would start another)
    start_worker()
    eventually(lambda: recorded("effects", key), timeout=30)
    retry.refresh_from_db()
    assert retry.status == OutboxMessage.Status.PUBLISHED
    assert recorded("effects", key)[0][1] == "1"  # the run was the first retry
    time.sleep(1)
    assert len(recorded("effects", key)) == 1
    assert not DeadLetter.objects.exists()
