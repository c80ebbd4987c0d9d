"""Heartbeats of the processes that serve nobody over HTTP (beat, workers), read by /readyz.

Freshness is judged on one clock, the Redis server's; the clocks of the web, beat and worker
hosts are never compared, so a skewed host clock cannot make a live process look dead or a dead
one look alive:
- beat stores the Redis server's TIME when it ticks, and its age is Redis's TIME now minus that;
- a worker's heartbeat is a key that Redis expires on its own: the worker is alive while the key
  exists.
"""

import json
import logging

import redis
from celery import bootsteps

from jobs.redis import redis_client

logger = logging.getLogger(__name__)

BEAT_HEARTBEAT_KEY = "jobs:heartbeat:beat"
# The key outlives any sane staleness threshold, then disappears so a dead beat leaves no trace.
HEARTBEAT_TTL_SECONDS = 3600

# "seconds.microseconds" of the Redis server's clock: readable with `redis-cli GET`, and compared
# only with that same clock.
_BEAT_RECORD_SCRIPT = """
local now = redis.call('TIME')
redis.call('SET', KEYS[1], string.format('%s.%06d', now[1], now[2]), 'EX', ARGV[1])
"""

# Each worker's record (the queues it consumes, JSON) lives under this prefix plus its name; the
# set lists the names, so a reader finds the records without scanning the whole keyspace.
WORKER_HEARTBEAT_PREFIX = "jobs:heartbeat:worker:"
WORKER_NAMES_KEY = "jobs:heartbeat:workers"
# Every 2 s, like Celery's own worker-heartbeat events. A record lives three intervals: a write
# late by up to two intervals never makes a live worker look dead, and a killed worker drops out
# within 6 s. (A worker that stops cleanly removes its record at once.)
WORKER_HEARTBEAT_SECONDS = 2.0
WORKER_HEARTBEAT_TTL_SECONDS = 3 * WORKER_HEARTBEAT_SECONDS

# The live workers' names and records, as [name, record, name, record, ...]. A name whose record
# expired (its worker died without a word) is removed from the set here, in the same atomic
# script as the check, so a worker writing its record at that moment is never dropped. The record
# keys are built from the prefix: the platform's keys live in one Redis, never in a cluster.
_WORKERS_READ_SCRIPT = """
local live = {}
for _, name in ipairs(redis.call('SMEMBERS', KEYS[1])) do
    local record = redis.call('GET', ARGV[1] .. name)
    if record then
        table.insert(live, name)
        table.insert(live, record)
    else
        redis.call('SREM', KEYS[1], name)
    end
end
return live
"""


def beat_heartbeat_record() -> None:
    """Note that beat is alive now. Never raises: a Redis outage must not stop beat's loop."""
    try:
        record = redis_client().register_script(_BEAT_RECORD_SCRIPT)
        record(keys=[BEAT_HEARTBEAT_KEY], args=[HEARTBEAT_TTL_SECONDS])
    except redis.RedisError as error:
        logger.warning("beat heartbeat not recorded: %s", error)


def beat_heartbeat_age() -> float | None:
    """Seconds since beat last ticked, by the Redis server's clock, or None if it never did (or
    its key expired)."""
    pipeline = redis_client().pipeline(transaction=False)
    pipeline.get(BEAT_HEARTBEAT_KEY)
    pipeline.time()
    value, (seconds, microseconds) = pipeline.execute()
    if value is None:
        return None
    return max(0.0, seconds + microseconds / 1_000_000 - float(value))


def worker_heartbeat_record(*, name: str, queues: list[str]) -> None:
    """Note that worker `name` is alive now and consumes `queues`."""
    pipeline = redis_client().pipeline()  # MULTI: a listed name always has its record
    pipeline.set(
        WORKER_HEARTBEAT_PREFIX + name,
        json.dumps(sorted(queues)),
        px=int(WORKER_HEARTBEAT_TTL_SECONDS * 1000),
    )
    pipeline.sadd(WORKER_NAMES_KEY, name)
    pipeline.execute()


def worker_heartbeat_forget(*, name: str) -> None:
    """Worker `name` stops consuming: take it off at once rather than when its record expires."""
    pipeline = redis_client().pipeline()
    pipeline.delete(WORKER_HEARTBEAT_PREFIX + name)
    pipeline.srem(WORKER_NAMES_KEY, name)
    pipeline.execute()


def worker_heartbeats() -> dict[str, list[str]]:
    """The live workers, each with the queues it consumes."""
    read = redis_client().register_script(_WORKERS_READ_SCRIPT)
    flat = read(keys=[WORKER_NAMES_KEY], args=[WORKER_HEARTBEAT_PREFIX])
    return {
        name.decode(): json.loads(record)
        for name, record in zip(flat[::2], flat[1::2], strict=True)
    }


def worker_heartbeat_ages(names: list[str]) -> dict[str, float]:
    """Seconds since each worker last wrote its heartbeat, from what is left of its record's TTL:
    on the Redis server's clock, like the rest. A worker whose record expired meanwhile is left
    out."""
    pipeline = redis_client().pipeline(transaction=False)
    for name in names:
        pipeline.pttl(WORKER_HEARTBEAT_PREFIX + name)
    return {
        name: max(0.0, WORKER_HEARTBEAT_TTL_SECONDS - left / 1000)
        for name, left in zip(names, pipeline.execute(), strict=True)
        if left >= 0
    }


class WorkerHeartbeat(bootsteps.StartStopStep):
    """A consumer step that writes the worker's heartbeat (its name and the queues it consumes
    right now, control commands included) every WORKER_HEARTBEAT_SECONDS.

    It runs on the consumer's own timer, in the event loop that takes messages and answers
    control commands: a worker whose loop is stuck, or that lost its broker connection (Celery
    stops the consumer's steps until it reconnects), stops writing. A Redis that hangs stalls
    the loop for at most the client's socket timeout per write (jobs/redis.py); with Redis as
    the broker, the worker could not take messages then anyway.
    """

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, consumer, **kwargs) -> None:
        self.timer_entry = None
        super().__init__(consumer, **kwargs)

    def start(self, consumer) -> None:
        self._record(consumer)
        self.timer_entry = consumer.timer.call_repeatedly(
            WORKER_HEARTBEAT_SECONDS, self._record, (consumer,)
        )

    def stop(self, consumer) -> None:
        if self.timer_entry is not None:
            consumer.timer.cancel(self.timer_entry)
            self.timer_entry = None
        try:
            worker_heartbeat_forget(name=consumer.hostname)
        except redis.RedisError as error:
            logger.warning("worker heartbeat not removed (it expires on its own): %s", error)

    shutdown = stop

    def _record(self, consumer) -> None:
        queues = [queue.name for queue in consumer.task_consumer.queues]
        try:
            worker_heartbeat_record(name=consumer.hostname, queues=queues)
        except redis.RedisError as error:
            # Never raises into the event loop; a worker without heartbeats shows on /readyz.
            logger.warning("worker heartbeat not recorded: %s", error)
