"""Per-key ordering: a task enqueued with an ordering key starts only after every earlier task
of its key has finished, across workers; other keys run alongside (docs/ordering.md)."""

import random
import uuid
from collections import defaultdict

import pytest
from django.contrib.auth import get_user_model
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from jobs.deadletters import dead_letter_discard, dead_letter_redrive
from jobs.models import DeadLetter, OutboxMessage
from jobs.outbox import TaskCannotBeOrdered, enqueue, outbox_relay, publish_circuit
from jobs.redis import redis_client
from jobs.tasks import maintenance_outbox_relay
from tests.harness import task_runs_on_when_its_worker_loses_the_broker
from tests.services import at_the_same_moment, eventually
from tests.worker_tasks.basics import create_user
from tests.worker_tasks.ordering import allow_key, events, ordered_step
from tests.worker_tasks.platform import fail_once_when_told, recorded

KEYS = 5
TASKS_PER_KEY = 40


def every_row_finishes() -> None:
    """The worker marks a row finished after the task's body returned, so after its last event."""
    eventually(
        lambda: not OutboxMessage.objects.filter(finished_at__isnull=True).exists(), timeout=10
    )


@pytest.fixture(autouse=True)
def _circuit_closed():
    # Each test starts with a process that has not seen the broker fail.
    publish_circuit.record_success()


def unique_run() -> str:
    return uuid.uuid4().hex[:10]


def ends(run: str) -> int:
    return sum(event == "end" for event, _, _ in events(run))


def assert_each_key_ran_in_order(run: str, expected: dict[str, list[int]]) -> None:
    """Each key's tasks started in enqueue order, each only after the one before it had ended;
    a task that ran twice (redelivered after its worker died) ran both times before its
    successor started."""
    started: dict[str, list[int]] = defaultdict(list)
    ended: dict[str, set[int]] = defaultdict(set)
    for event, key, item in events(run):
        if event == "start":
            earlier = [previous for previous in expected[key] if previous < item]
            assert ended[key] >= set(earlier), f"{key} {item} started before {earlier} ended"
            assert not any(later > item for later in started[key]), (
                f"{key} {item} started after a later task of its key"
            )
            started[key].append(item)
        else:
            ended[key].add(item)
    for key, items in expected.items():
        assert sorted(set(started[key])) == items and ended[key] == set(items), key


def test_each_key_runs_in_enqueue_order_across_two_workers(no_worker_running, start_worker):
    # given two workers with two pool processes each
    for worker in [start_worker(concurrency=2, wait=False) for _ in range(2)]:
        worker.wait_ready()
    # when 5 keys x 40 tasks of random durations are enqueued, the keys interleaved
    run = unique_run()
    durations = random.Random(42)
    keys = [f"user:{n}" for n in range(KEYS)]
    with transaction.atomic():
        for item in range(TASKS_PER_KEY):
            for key in keys:
                seconds = durations.uniform(0.005, 0.060)
                enqueue(
                    ordered_step, ordering_key=key, run=run, key=key, item=item, seconds=seconds
                )
    # then every task runs, each key's in its order, one at a time
    eventually(lambda: ends(run) == KEYS * TASKS_PER_KEY, timeout=90, interval=0.2)
    assert_each_key_ran_in_order(run, {key: list(range(TASKS_PER_KEY)) for key in keys})
    # and the keys ran alongside each other: some task of one key started while one of another
    # key was running
    running: set[str] = set()
    overlapped = False
    for event, key, _ in events(run):
        if event == "start":
            overlapped = overlapped or bool(running - {key})
            running.add(key)
        else:
            running.discard(key)
    assert overlapped
    every_row_finishes()


def test_a_task_enqueued_while_the_one_before_it_runs_is_published_by_that_ones_worker(
    no_worker_running, start_worker
):
    # given a worker (and no relay: no beat runs here) and a task of a key that runs a while
    start_worker(concurrency=2)
    run = unique_run()
    enqueue(ordered_step, ordering_key="user:1", run=run, key="user:1", item=0, seconds=1.0)
    eventually(lambda: ("start", "user:1", 0) in events(run), timeout=20)
    # when the next task of its key is enqueued while it runs (its worker read no successor)
    second = enqueue(ordered_step, ordering_key="user:1", run=run, key="user:1", item=1)
    second.refresh_from_db()
    assert second.status == OutboxMessage.Status.PENDING
    # then the first one's worker publishes it as the first finishes, and it runs after it
    eventually(lambda: ends(run) == 2, timeout=20)
    assert_each_key_ran_in_order(run, {"user:1": [0, 1]})
    # and once nothing of the key is unfinished, a new task of it is its head, published at once
    every_row_finishes()
    third = enqueue(ordered_step, ordering_key="user:1", run=run, key="user:1", item=2)
    third.refresh_from_db()
    assert (third.ordering_position, third.status) == (3, OutboxMessage.Status.PUBLISHED)
    eventually(lambda: ends(run) == 3, timeout=20)


@pytest.fixture
def admin_client(client, transactional_db):
    admin = get_user_model().objects.create_superuser("ops@example.com", "correct horse battery")
    client.force_login(admin)
    return client


@pytest.mark.parametrize("decision", ["redrive", "discard"])
def test_a_task_that_fails_for_good_holds_its_key_up_until_its_dead_letter_is_decided(
    no_worker_running, start_worker, admin_client, decision
):
    # given a worker, and two keys of five tasks each, the second task of one failing for good
    start_worker(concurrency=2)
    run = unique_run()
    with transaction.atomic():
        for item in range(5):
            for key in ("blocked", "free"):
                enqueue(
                    ordered_step,
                    ordering_key=f"{run}:{key}",
                    run=run,
                    key=key,
                    item=item,
                    fails_until_allowed=key == "blocked" and item == 1,
                )
    # when it has failed
    letter = eventually(lambda: DeadLetter.objects.filter(kwargs__key="blocked").first())
    # then the other key carries on to its end, and the failing one's later tasks do not run
    eventually(lambda: ("end", "free", 4) in events(run), timeout=30)
    assert outbox_relay() == 0  # nor does the relay publish them
    blocked = [(event, item) for event, key, item in events(run) if key == "blocked"]
    assert blocked == [("start", 0), ("end", 0), ("start", 1)]
    # and the admin shows what the dead letter, and its outbox row, hold up
    for changelist in ("admin:jobs_deadletter_changelist", "admin:jobs_outboxmessage_changelist"):
        listing = admin_client.get(reverse(changelist))
        assert f"3 later task(s) of {run}:blocked" in listing.content.decode()

    # when a person decides
    if decision == "redrive":
        redis_client().set(allow_key(run, "blocked", 1), 1)  # the cause fixed first
        dead_letter_redrive(dead_letter_id=letter.pk, by="ops@example.com")
        expected = [1, 2, 3, 4]
    else:
        dead_letter_discard(dead_letter_id=letter.pk, by="ops@example.com")
        expected = [2, 3, 4]
    # then the key moves on: re-driven, the task runs again in its own place, ahead of the rest
    eventually(lambda: ("end", "blocked", 4) in events(run), timeout=30)
    blocked = [(event, item) for event, key, item in events(run) if key == "blocked"]
    assert blocked[3:] == [(event, item) for item in expected for event in ("start", "end")]
    every_row_finishes()


def test_a_worker_killed_mid_task_resumes_its_key_in_order(no_worker_running, start_worker):
    # given two workers with one pool process each (a task that kills its worker leaves no pool
    # process behind)
    for worker in [start_worker(concurrency=1, wait=False) for _ in range(2)]:
        worker.wait_ready()
    # when the fourth of ten tasks of a key takes its whole worker down, midway, on its first
    # delivery, while another key runs too
    run = unique_run()
    with transaction.atomic():
        for item in range(10):
            for key in ("killed", "other"):
                enqueue(
                    ordered_step,
                    ordering_key=f"{run}:{key}",
                    run=run,
                    key=key,
                    item=item,
                    seconds=0.02,
                    kills_its_worker_once=key == "killed" and item == 3,
                )
    # then the surviving worker gets it back (jobs/recovery.py) and the key carries on in order
    eventually(lambda: ends(run) == 20, timeout=60, interval=0.2)
    assert_each_key_ran_in_order(run, {"killed": list(range(10)), "other": list(range(10))})
    starts_of_the_killed_task = [
        item for event, key, item in events(run) if (event, key, item) == ("start", "killed", 3)
    ]
    assert len(starts_of_the_killed_task) == 2


def test_a_task_redelivered_after_it_finished_is_not_run_again(no_worker_running, start_worker):
    # given a worker
    worker = start_worker(concurrency=2)
    # when a task of a key finishes and its pool process dies before the message is acknowledged
    # (late ack: the message comes back), while the next task of its key may already run
    run = unique_run()
    with transaction.atomic():
        for item in range(5):
            enqueue(
                ordered_step,
                ordering_key=f"{run}:key",
                run=run,
                key="key",
                item=item,
                seconds=0.05,
                dies_once_after_finishing=item == 2,
            )
    # then the key runs to its end in order, and the returned message is acknowledged unrun
    eventually(lambda: ends(run) == 5, timeout=30)
    eventually(lambda: "outcome=skip" in worker.logfile.read_text(), timeout=15)
    assert_each_key_ran_in_order(run, {"key": list(range(5))})
    assert [item for event, _, item in events(run) if event == "start"] == list(range(5))


def test_a_database_failure_as_a_task_finishes_runs_it_again_in_its_place(
    no_worker_running, start_worker
):
    # given a worker
    worker = start_worker(concurrency=2)
    # when the database fails just as the second of three tasks of a key is marked finished
    run = unique_run()
    with transaction.atomic():
        for item in range(3):
            enqueue(
                ordered_step,
                ordering_key=f"{run}:key",
                run=run,
                key="key",
                item=item,
                database_fails_once_at_its_finish=item == 1,
            )
    # then the task is retried (the database failed, not the task), and the key carries on
    # after it, in order, rather than waiting for good behind a row never marked finished
    eventually(lambda: ("end", "key", 2) in events(run), timeout=30)
    assert [(event, item) for event, _, item in events(run)] == [
        ("start", 0), ("end", 0),
        ("start", 1), ("end", 1), ("start", 1), ("end", 1),
        ("start", 2), ("end", 2),
    ]  # fmt: skip
    assert "outcome=retry exception=OperationalError" in worker.logfile.read_text()
    assert not DeadLetter.objects.exists()


def test_tasks_enqueued_while_the_broker_is_down_are_published_head_first_in_order(
    no_worker_running, start_worker, broker_server
):
    # given a broker that is down
    broker_server.stop()
    # when tasks of three keys are enqueued
    run = unique_run()
    keys = [f"{run}:{n}" for n in range(3)]
    with transaction.atomic():
        for item in range(5):
            for n, key in enumerate(keys):
                enqueue(ordered_step, ordering_key=key, run=run, key=str(n), item=item)
    assert OutboxMessage.objects.filter(status=OutboxMessage.Status.PENDING).count() == 15
    # then, once the broker is back, the relay publishes each key's head, and only that
    broker_server.start()
    publish_circuit.record_success()  # the relay's process would not share this one's memory
    assert outbox_relay() == 3
    assert broker_server.queue_length("default") == 3
    # and a worker runs every key to its end, in order
    start_worker(concurrency=2)
    eventually(lambda: ends(run) == 15, timeout=30)
    assert_each_key_ran_in_order(run, {str(n): list(range(5)) for n in range(3)})


@task_runs_on_when_its_worker_loses_the_broker
def test_a_retry_kept_in_the_outbox_keeps_its_place_at_the_head_of_its_key(
    no_worker_running, start_worker, broker_server
):
    # given an ordered task that fails transiently just after the broker went down, and a task
    # of its key behind it
    start_worker(concurrency=2)
    run = unique_run()
    with transaction.atomic():
        first = enqueue(fail_once_when_told, ordering_key=run, key=run, hold_seconds=2)
        enqueue(ordered_step, ordering_key=run, run=run, key="key", item=1)
    eventually(lambda: recorded("attempts", run), timeout=20)
    broker_server.stop()
    # then its retry waits in its own row, still the head of the key, not in a row behind it
    eventually(lambda: OutboxMessage.objects.filter(pk=first.pk, retries=1).exists(), timeout=30)
    assert OutboxMessage.objects.count() == 2
    # and once the broker is back, the relay publishes the retry, not the task behind it
    broker_server.start()
    OutboxMessage.objects.filter(pk=first.pk).update(release_at=timezone.now())  # its backoff
    assert outbox_relay() == 1
    # and a worker (the first one died with the broker) runs the retry, then the task behind it
    start_worker(concurrency=2)
    eventually(lambda: recorded("effects", run), timeout=30)
    eventually(lambda: ends(run) == 1, timeout=30)
    every_row_finishes()


@pytest.mark.django_db(transaction=True)
def test_two_relays_at_once_publish_one_head_per_key(no_worker_running, broker_server):
    # given ten pending rows for each of three keys, as a broker outage at commit leaves them
    publish_circuit.record_failure()  # the publish on commit is skipped: the rows stay pending
    with transaction.atomic():
        for item in range(10):
            for key in ("a", "b", "c"):
                enqueue(ordered_step, ordering_key=key, run="r", key=key, item=item)
    publish_circuit.record_success()
    # when two relays run at the same moment
    published = at_the_same_moment(outbox_relay, outbox_relay)
    # then exactly the three heads went out, once each
    assert sum(published) == 3
    assert broker_server.queue_length("default") == 3
    heads = OutboxMessage.objects.filter(status=OutboxMessage.Status.PUBLISHED)
    assert sorted(heads.values_list("ordering_key", "ordering_position")) == [
        ("a", 1), ("b", 1), ("c", 1),
    ]  # fmt: skip


@pytest.mark.django_db(transaction=True)
def test_an_ordered_enqueue_outside_a_transaction_publishes_only_the_head(no_worker_running):
    # when two tasks of a key are enqueued, each in autocommit
    first = enqueue(ordered_step, ordering_key="user:1", run="r", key="user:1", item=0)
    second = enqueue(ordered_step, ordering_key="user:1", run="r", key="user:1", item=1)
    # then the first is published at once and the second waits for it
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.ordering_position, first.status) == (1, OutboxMessage.Status.PUBLISHED)
    assert (second.ordering_position, second.status) == (2, OutboxMessage.Status.PENDING)
    assert second.claimed_until is None  # left to the first one's worker, or the relay


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "task", [create_user, maintenance_outbox_relay], ids=["not_idempotent", "expires"]
)
def test_a_task_that_could_end_unrun_and_unrecorded_cannot_be_ordered(task):
    # an early-acked message lost with its worker, or an expired one, would never run and never
    # be marked finished: its key would wait for it forever
    with pytest.raises(TaskCannotBeOrdered), transaction.atomic():
        enqueue(task, ordering_key="user:1")
    assert not OutboxMessage.objects.exists()
