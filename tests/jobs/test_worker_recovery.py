"""A worker killed whole has its tasks run again by another within seconds: on Redis with the
default visibility timeout (jobs/recovery.py), on RabbitMQ as its connection drops.

The first tests run real worker processes, on either broker; the others take messages through
Redis's recording transport in this process, to put the sweep in states a test could not time
with workers.
"""

import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis
from celery import Celery
from kombu import Connection, Exchange, Producer, Queue
from kombu.message import Message

from config.celery import app
from jobs.models import DeadLetter
from jobs.recovery import (
    HOLDERS_KEY,
    LEASE_RENEW_SECONDS,
    LEASE_SECONDS,
    LEASES_KEY,
    HolderRecordingChannel,
    HolderRecordingTransport,
    WorkerLease,
    orphaned_deliveries_restore,
    worker_lease_for,
)
from jobs.redis import redis_client
from tests.harness import TEST_BROKER, only_on_broker
from tests.services import WorkerProcess, eventually
from tests.worker_tasks.platform import recorded
from tests.worker_tasks.recovery import hold_key, hold_then_count, kill_own_worker_whole

# The project's target for "whole worker SIGKILLed -> its tasks running again".
RECOVERY_TARGET_SECONDS = 30
# A queue no worker consumes, for the tests that take messages themselves.
TEST_QUEUE = Queue("test-recovery", Exchange("test-recovery"), routing_key="test-recovery")
redis_only = only_on_broker("redis", "leases and delivery records (RabbitMQ needs neither)")


def unique_key() -> str:
    return uuid.uuid4().hex[:10]


def redis_now() -> float:
    """Now on the Redis server's clock, the one `record()` stamps runs and effects with."""
    seconds, microseconds = redis_client().time()
    return seconds + microseconds / 1e6


def kill_whole(worker: WorkerProcess) -> None:
    """SIGKILL the worker's main process and its pool processes together, as the OOM killer
    taking the container or a lost host does (`WorkerProcess.kill()` kills the main one only)."""
    main = worker.process.pid
    os.kill(main, signal.SIGSTOP)  # frozen, it cannot start a new pool process meanwhile
    for pid in [main, *worker.pool_pids()]:
        os.kill(pid, signal.SIGKILL)
    worker.process.wait()
    worker.process = None


def test_a_worker_killed_whole_has_its_tasks_completed_by_another_within_30_seconds(
    no_worker_running, start_worker, settings
):
    # given the default visibility timeout: an hour, so only recovery can return the tasks in time
    assert settings.CELERY_VISIBILITY_TIMEOUT == 3600
    key = unique_key()
    redis_client().set(hold_key(key), 1)
    doomed = start_worker(queues=["default"], concurrency=2)
    # and a worker holding four tasks: two waiting for their countdown, two running (sent last, so
    # the countdown ones, which raise the worker's prefetch, are taken first)
    for item in (2, 3):
        hold_then_count.apply_async(
            kwargs={"key": key, "item": item, "hold_seconds": 120}, countdown=2
        )
    for item in (0, 1):
        hold_then_count.apply_async(kwargs={"key": key, "item": item, "hold_seconds": 120})
    # (on Redis it holds all four, recorded; on RabbitMQ the countdown ones wait in the broker)
    eventually(
        lambda: (
            len(recorded("runs", key)) == 2
            and (TEST_BROKER != "redis" or redis_client().hlen(HOLDERS_KEY) == 4)
        ),
        timeout=20,
    )
    # and another worker, idle, on the same queue
    survivor = start_worker(queues=["default"], concurrency=2)
    # when the first worker is SIGKILLed whole, main process and pool
    killed_at = redis_now()
    kill_whole(doomed)
    redis_client().delete(hold_key(key))
    # then the other completes all four within the target
    effects = eventually(
        lambda: len(recorded("effects", key)) >= 4 and recorded("effects", key),
        timeout=RECOVERY_TARGET_SECONDS + 10,
        interval=0.2,
    )
    elapsed = max(stamp for stamp, _ in effects) - killed_at
    print(f"\nkill -> all 4 tasks completed: {elapsed:.1f} s")
    assert elapsed <= RECOVERY_TARGET_SECONDS
    # and each had its effect once: no late duplicate after one more sweep either
    time.sleep(2 * LEASE_RENEW_SECONDS)
    assert sorted(int(item) for _, item in recorded("effects", key)) == [0, 1, 2, 3]
    # (on RabbitMQ the survivor may have taken the countdown ones before the kill)
    runs_on_the_survivor = [
        value for _, value in recorded("runs", key) if value.endswith(f"|{survivor.name}")
    ]
    assert sorted(runs_on_the_survivor) == [f"{item}|{survivor.name}" for item in range(4)]


@redis_only
def test_a_live_worker_keeps_a_task_that_runs_for_many_sweeps(no_worker_running, start_worker):
    # given two workers, each renewing its lease and sweeping every LEASE_RENEW_SECONDS
    key = unique_key()
    redis_client().set(hold_key(key), 1)
    workers = [start_worker(queues=["default"], concurrency=1, wait=False) for _ in range(2)]
    for worker in workers:
        worker.wait_ready()
    # when one of them runs a task for one and a half leases (seven sweeps), its only pool
    # process busy all along
    hold_then_count.delay(key=key, item=0, hold_seconds=1.5 * LEASE_SECONDS)
    eventually(lambda: recorded("runs", key))
    assert redis_client().hlen(HOLDERS_KEY) == 1  # its delivery is recorded, so sweepable
    # then it finishes there, and nobody ran it a second time
    eventually(lambda: recorded("effects", key), timeout=1.5 * LEASE_SECONDS + 10)
    assert len(recorded("runs", key)) == 1
    # and its record went with its acknowledgement
    eventually(lambda: redis_client().hlen(HOLDERS_KEY) == 0)


def test_a_message_that_kills_its_whole_worker_every_time_is_still_dead_lettered(
    no_worker_running, start_worker
):
    # given workers that dead-letter a message on its second delivery instead of the fourth
    one_delivery = {"JOBS_MAX_DELIVERIES": "1"}
    first = start_worker(queues=["default"], concurrency=1, extra_env=one_delivery)
    # when a task takes down the whole worker that runs it
    key = unique_key()
    kill_own_worker_whole.delay(key=key)
    eventually(lambda: not first.alive)
    start_worker(queues=["default"], concurrency=1, extra_env=one_delivery)
    # then its message comes back, as one more delivery, and is dead-lettered, not run again
    letter = eventually(
        lambda: DeadLetter.objects.filter(kwargs={"key": key}).first(),
        timeout=RECOVERY_TARGET_SECONDS,
    )
    assert letter.exception_class == "jobs.base.PoisonMessage"
    assert len(recorded("deliveries", key)) == 1


@pytest.fixture
def channel_for() -> Iterator[Callable[[str | None], HolderRecordingChannel]]:
    """Channels through the recording transport, as a worker named `holder` consumes (or, with
    None, as a process that records nothing: a worker of an earlier release, a sweeper)."""
    connections: list[Connection] = []

    def channel(holder: str | None) -> HolderRecordingChannel:
        connection = app.connection_for_write(transport_options={"delivery_holder": holder})
        connection.transport_cls = HolderRecordingTransport
        connections.append(connection)
        return connection.channel()

    yield channel
    for connection in connections:
        connection.release()


def take(channel: HolderRecordingChannel, count: int) -> list[Message]:
    """Publish `count` messages to the test queue and take them on `channel`, unacknowledged."""
    producer = Producer(channel)
    for number in range(count):
        producer.publish(
            {"number": number},
            exchange=TEST_QUEUE.exchange,
            routing_key=TEST_QUEUE.routing_key,
            declare=[TEST_QUEUE],
        )
    return [TEST_QUEUE(channel).get(no_ack=False) for _ in range(count)]


def lease(holder: str, *, seconds_left: float) -> None:
    redis_client().zadd(LEASES_KEY, {holder: (redis_now() + seconds_left) * 1000})


def queued_numbers(channel: HolderRecordingChannel) -> list[int]:
    numbers = []
    while message := TEST_QUEUE(channel).get(no_ack=True):
        numbers.append(message.payload["number"])
    return numbers


@redis_only
def test_the_sweep_returns_only_what_a_lapsed_lease_held(no_worker_running, channel_for):
    # given a delivery held by a worker whose lease lapsed, one held by a live worker, and one
    # taken by a worker that records nothing (an earlier release)
    [orphan] = take(channel_for("dead@host"), 1)
    lease("dead@host", seconds_left=-1)
    take(channel_for("live@host"), 1)
    lease("live@host", seconds_left=LEASE_SECONDS)
    take(channel_for(None), 1)
    # when a worker sweeps
    sweeper = channel_for(None)
    restored = orphaned_deliveries_restore(channel=sweeper)
    # then only the orphan is back in its queue, marked redelivered; the others stay held (the
    # unrecorded one until the visibility timeout)
    assert restored == 1
    message = TEST_QUEUE(sweeper).get(no_ack=True)
    assert message.payload == orphan.payload
    assert message.delivery_info["redelivered"] is True
    assert queued_numbers(sweeper) == []
    assert redis_client().hlen("unacked") == 2
    # and the lapsed lease is forgotten, the live one kept
    assert redis_client().zrange(LEASES_KEY, 0, -1) == [b"live@host"]


@redis_only
def test_a_delivery_acknowledged_while_the_sweep_restores_it_stays_acknowledged(
    no_worker_running, channel_for, monkeypatch
):
    # given a delivery whose holder's lease lapsed (a worker frozen longer than its lease, say)
    [message] = take(channel_for("frozen@host"), 1)
    lease("frozen@host", seconds_left=-1)
    # when the holder acknowledges it after the sweep has read it, before the sweep writes
    start_writing = redis.client.Pipeline.multi

    def acknowledged_first(pipeline) -> None:
        if not message.acknowledged:
            message.ack()
        start_writing(pipeline)

    monkeypatch.setattr(redis.client.Pipeline, "multi", acknowledged_first)
    sweeper = channel_for(None)
    restored = orphaned_deliveries_restore(channel=sweeper)
    # then it is not restored: it ran once and stays done
    assert message.acknowledged
    assert restored == 0
    assert queued_numbers(sweeper) == []
    assert redis_client().hlen("unacked") == 0
    assert redis_client().hlen(HOLDERS_KEY) == 0


@redis_only
def test_two_workers_sweeping_at_once_restore_each_orphan_once(no_worker_running, channel_for):
    # given fifty deliveries held by a worker whose lease lapsed
    take(channel_for("dead@host"), 50)
    lease("dead@host", seconds_left=-1)
    # when two workers sweep at the same moment
    sweepers = [channel_for(None) for _ in range(2)]
    start = threading.Barrier(len(sweepers))
    restored: list[int] = []

    def sweep(channel: HolderRecordingChannel) -> None:
        start.wait()
        restored.append(orphaned_deliveries_restore(channel=channel))

    threads = [threading.Thread(target=sweep, args=(channel,)) for channel in sweepers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # then each delivery is back in the queue exactly once
    assert sum(restored) == 50
    assert sorted(queued_numbers(sweepers[0])) == list(range(50))
    assert redis_client().hlen("unacked") == 0
    assert redis_client().hlen(HOLDERS_KEY) == 0


@redis_only
def test_a_lease_is_renewed_while_its_worker_lives_and_lapses_at_once_when_it_stops():
    # given a worker's lease
    worker_lease = WorkerLease(app=app, hostname="lease@host")

    def expiry() -> float | None:
        return redis_client().zscore(LEASES_KEY, worker_lease.holder)

    # when it starts, it is written at once, LEASE_SECONDS ahead on Redis's clock
    worker_lease.start()
    try:
        first = expiry()
        assert first / 1000 == pytest.approx(redis_now() + LEASE_SECONDS, abs=1)
        # and its thread pushes it further every LEASE_RENEW_SECONDS
        eventually(lambda: expiry() > first, timeout=3 * LEASE_RENEW_SECONDS)
    finally:
        worker_lease.end()
    # then, ended (the worker stopped cleanly), it has lapsed already
    assert expiry() == 0


@pytest.mark.parametrize(
    ("broker_url", "leased"),
    [
        ("redis://127.0.0.1:6379/0", True),
        ("rediss://127.0.0.1:6380/0", True),
        ("amqp://guest:guest@127.0.0.1:5672//", False),
    ],
)
def test_only_workers_on_a_redis_broker_hold_a_lease(broker_url, leased, monkeypatch):
    # RabbitMQ requeues a dead consumer's messages itself when its connection drops
    monkeypatch.delenv("CELERY_BROKER_URL")  # Celery prefers it to the app's own setting
    worker_app = Celery("recovery-test", broker=broker_url)
    assert (worker_lease_for(app=worker_app, hostname="w@host") is not None) is leased
