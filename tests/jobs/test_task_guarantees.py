"""The base task's guarantees, each proven with a real worker process."""

import itertools
import os
import re
import signal
import uuid

import pytest
from django.contrib.auth import get_user_model

from config.celery import app
from jobs.models import DeadLetter
from jobs.redis import redis_client
from tests.services import eventually
from tests.worker_tasks.platform import (
    create_user_once,
    database_gone_first,
    database_gone_first_not_idempotent,
    flaky,
    kill_own_worker,
    permanent_unless_allowed,
    recorded,
    sleep_then_record,
    transient_forever,
)


def unique_key() -> str:
    return uuid.uuid4().hex[:10]


def test_transient_failures_are_retried_with_growing_jittered_waits_then_succeed(celery_worker):
    # given a task whose provider fails three times, then answers
    key = unique_key()
    # when it runs on a worker (retry base 0.5 s in tests: waits of 0.25-0.5, 0.5-1, 1-2 s)
    result = flaky.delay(key=key, failures=3)
    # then it succeeds exactly once, on the fourth attempt
    eventually(lambda: recorded("effects", key), timeout=20)
    attempts = [stamp for stamp, _ in recorded("attempts", key)]
    assert len(attempts) == 4
    assert len(recorded("effects", key)) == 1
    # and each wait lies in its equal-jitter band: never below half the exponential value,
    # never far above it (scheduling adds a little), so the waits keep growing
    gaps = [later - earlier for earlier, later in itertools.pairwise(attempts)]
    for retry, gap in enumerate(gaps):
        exponential = 0.5 * 2**retry
        assert exponential / 2 - 0.05 <= gap <= exponential + 0.75, (retry, gaps)
    assert gaps[0] < gaps[2]
    assert not DeadLetter.objects.filter(task_name="tests.flaky").exists()
    # and each outcome left one structured log line
    log = celery_worker.logfile.read_text()
    outcomes = re.findall(
        r"task=tests\.flaky id=(\S+) attempt=(\d) duration_ms=\S+ outcome=(\w+)", log
    )
    mine = [(attempt, outcome) for task_id, attempt, outcome in outcomes if task_id == result.id]
    assert mine == [("1", "retry"), ("2", "retry"), ("3", "retry"), ("4", "success")]


def test_exhausted_retries_end_in_a_dead_letter(celery_worker):
    # given a task whose provider never recovers, allowed two retries
    key = unique_key()
    # when it runs
    transient_forever.delay(key=key)
    # then it is tried three times in all, then dead-lettered with what a person needs
    letter = eventually(lambda: DeadLetter.objects.filter(kwargs={"key": key}).first(), timeout=20)
    assert len(recorded("attempts", key)) == 3
    assert letter.task_name == "tests.transient_forever"
    assert letter.attempts == 3
    assert letter.exception_class == "jobs.retry.TransientError"
    assert "still down" in letter.exception_message
    assert "Traceback" in letter.traceback


def test_a_task_whose_database_went_away_is_retried_if_it_is_idempotent(celery_worker):
    # given an idempotent task whose first run loses its database connection (a restart), and
    # a task that is not idempotent, which does too
    key, other = unique_key(), unique_key()
    database_gone_first.delay(key=key)
    database_gone_first_not_idempotent.delay(key=other)
    # then the first runs again and has its effect, with no dead letter
    eventually(lambda: recorded("effects", key), timeout=20)
    assert len(recorded("attempts", key)) == 2
    assert not DeadLetter.objects.filter(kwargs={"key": key}).exists()
    # and the other, which may not run twice, is dead-lettered for a person after one run
    letter = eventually(lambda: DeadLetter.objects.filter(kwargs={"key": other}).first())
    assert letter.exception_class == "django.db.utils.OperationalError"
    assert len(recorded("attempts", other)) == 1


def test_a_permanent_failure_is_dead_lettered_at_once_without_retries(celery_worker):
    key = unique_key()
    permanent_unless_allowed.delay(key=key)
    letter = eventually(lambda: DeadLetter.objects.filter(kwargs={"key": key}).first())
    assert letter.attempts == 1
    assert len(recorded("attempts", key)) == 1
    assert letter.exception_class == "jobs.retry.PermanentError"
    assert letter.status == DeadLetter.Status.DEAD


def test_a_pool_child_killed_mid_task_leads_to_one_complete_run(celery_worker):
    # given an idempotent task that is running in a pool process
    key = unique_key()
    sleep_then_record.delay(key=key, seconds=30)
    pid = int(eventually(lambda: recorded("deliveries", key))[0][1])
    # when that pool process is SIGKILLed mid-task (an OOM kill, say)
    os.kill(pid, signal.SIGKILL)
    # then the message is handed back and runs again to completion, exactly once
    eventually(lambda: recorded("effects", key), timeout=30)
    assert len(recorded("deliveries", key)) == 2
    assert len(recorded("effects", key)) == 1


def test_only_a_redelivery_costs_a_round_trip_for_the_delivery_count(celery_worker):
    # given idempotent tasks (late ack, counted toward a poison message) and Redis's command
    # counters cleared
    redis = redis_client()
    keys = [unique_key() for _ in range(5)]

    def incr_calls() -> int:
        # redis-py's incr() sends INCRBY
        return redis.info("commandstats").get("cmdstat_incrby", {}).get("calls", 0)

    redis.config_resetstat()
    # when they run on their first delivery
    for key in keys:
        flaky.delay(key=key, failures=0)
    eventually(lambda: all(recorded("effects", key) for key in keys), timeout=20)
    # then no delivery was counted: a task's first run pays no round trip for it
    assert incr_calls() == 0
    # when a delivery is handed back (its pool process killed mid-task) and runs again
    key = unique_key()
    sleep_then_record.delay(key=key, seconds=30)
    os.kill(int(eventually(lambda: recorded("deliveries", key))[0][1]), signal.SIGKILL)
    eventually(lambda: recorded("effects", key), timeout=30)
    # then that redelivery was counted, and its count removed once it ran
    assert incr_calls() == 1
    assert not redis.keys("jobs:deliveries:*")


def test_a_message_that_kills_its_worker_every_time_is_dead_lettered_not_looped(
    celery_worker, settings
):
    # given a poison message: its task kills the pool process on every delivery
    key = unique_key()
    # when it is published
    kill_own_worker.delay(key=key)
    # then after JOBS_MAX_DELIVERIES deliveries it is dead-lettered instead of delivered again
    letter = eventually(lambda: DeadLetter.objects.filter(kwargs={"key": key}).first(), timeout=60)
    assert letter.exception_class == "jobs.base.PoisonMessage"
    assert len(recorded("deliveries", key)) == settings.JOBS_MAX_DELIVERIES
    # and the worker is still there, serving other work
    flaky.delay(key=key, failures=0)
    eventually(lambda: recorded("effects", key), timeout=20)


def test_the_same_message_delivered_twice_at_once_has_one_effect(celery_worker):
    # given one message that reaches the worker twice at the same instant (a relay re-publish
    # racing the original, say), and an effect that takes a while
    key = unique_key()
    task_id = str(uuid.uuid4())
    for _ in range(2):
        create_user_once.apply_async(kwargs={"key": key, "hold_seconds": 1.0}, task_id=task_id)
    # when both deliveries have run (the worker has two pool processes, so they overlap)
    runs = eventually(lambda: len(recorded("runs", key)) == 2 and recorded("runs", key))
    # then exactly one made the effect, the other saw it was a repeat
    assert sorted(outcome for _, outcome in runs) == ["effect", "repeat"]
    assert get_user_model().objects.filter(email__startswith=f"{key}-").count() == 1


def test_delay_inside_a_transaction_publishes_only_if_it_commits(celery_worker):
    from django.db import transaction

    from tests.worker_tasks.basics import create_user

    # given a transaction that publishes a task and then rolls back
    with pytest.raises(RuntimeError), transaction.atomic():
        create_user.delay("never@example.com")
        raise RuntimeError("the request failed")
    # and one that publishes and commits
    with transaction.atomic():
        create_user.delay("after-commit@example.com")
    # then only the committed one runs
    eventually(lambda: get_user_model().objects.filter(email="after-commit@example.com").exists())
    assert not get_user_model().objects.filter(email="never@example.com").exists()


@pytest.mark.django_db(transaction=True)
def test_tasks_are_declared_with_late_ack_only_when_idempotent():
    assert flaky.acks_late is True and flaky.reject_on_worker_lost is True
    from tests.worker_tasks.basics import create_user

    assert create_user.acks_late is False


def test_a_task_killed_at_its_hard_time_limit_leaves_a_dead_letter(celery_worker):
    from tests.worker_tasks.platform import outlive_hard_time_limit

    key = unique_key()
    outlive_hard_time_limit.delay(key=key)
    letter = eventually(lambda: DeadLetter.objects.filter(kwargs={"key": key}).first(), timeout=30)
    assert letter.exception_class.endswith(".TimeLimitExceeded")
    assert letter.task_name == "tests.outlive_hard_time_limit"
    assert len(recorded("attempts", key)) == 1  # acknowledged, not run again


def test_a_queue_declared_on_a_task_instead_of_in_the_routes_fails_the_system_check():
    from django.core import checks

    @app.task(name="tests.declares_its_own_queue", queue="media")
    def declares_its_own_queue() -> None: ...

    try:
        errors = [e for e in checks.run_checks() if e.id == "jobs.E004"]
    finally:
        del app.tasks["tests.declares_its_own_queue"]
    assert [e.msg.split(":")[0] for e in errors] == ["tests.declares_its_own_queue"]
    assert not [e for e in checks.run_checks() if e.id == "jobs.E004"]
