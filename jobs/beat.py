"""The beat scheduler: django-celery-beat's database schedule, sent by one beat at a time.

Two beats running at once (a deploy overlapping old and new, a second replica by mistake) would
send every periodic task twice. So every beat competes for one Redis lock with a TTL
(settings.JOBS_BEAT_LOCK_*): the holder schedules and renews the lock on each tick; the others
send nothing and ask again every second. A holder that is killed leaves its lock to expire, and
another beat takes over within about one TTL; one that stops cleanly releases it at once.

The lock's value names its holder (`host:pid:nonce`), so `redis-cli GET jobs:beat:lock` tells an
operator which beat schedules. A holder frozen for longer than the TTL between its last renewal
and a send can still send one task that its successor sends too; periodic tasks are idempotent
and expire, which makes that rare overlap harmless.
"""

import logging
import math
import os
import socket
import time
import uuid

import redis
from django.conf import settings
from django_celery_beat.schedulers import DatabaseScheduler

from jobs.canary import canaries_send
from jobs.heartbeats import beat_heartbeat_record
from jobs.redis import redis_client

logger = logging.getLogger(__name__)

# A waiting beat asks this often: it takes over at most a second after the lock is free, for one
# Redis command per second.
LOCK_RETRY_SECONDS = 1.0
# The holder renews at least three times per TTL, so one slow tick does not cost it the lock
# even when the TTL is shorter than beat's own loop interval.
RENEWALS_PER_TTL = 3

# Compare-and-set, atomically: take the lock if it is free, extend it if this token holds it,
# and return the holder either way. Never extends another beat's lock.
_HOLD_SCRIPT = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
elseif not holder then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    holder = ARGV[1]
end
return holder
"""
# Compare-and-delete: a beat whose lock already expired must not delete its successor's.
_RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


def beat_lock_hold(*, token: str) -> str:
    """Take the beat lock if it is free, or renew it if `token` holds it; returns the holder."""
    hold = redis_client().register_script(_HOLD_SCRIPT)
    ttl_ms = int(settings.JOBS_BEAT_LOCK_TTL_SECONDS * 1000)
    return hold(keys=[settings.JOBS_BEAT_LOCK_KEY], args=[token, ttl_ms]).decode()


def beat_lock_release(*, token: str) -> None:
    """Free the beat lock if `token` holds it, so another beat takes over without waiting."""
    release = redis_client().register_script(_RELEASE_SCRIPT)
    release(keys=[settings.JOBS_BEAT_LOCK_KEY], args=[token])


def beat_lock_holder() -> str | None:
    """The token of the beat that schedules now (`host:pid:nonce`), or None if none does."""
    value = redis_client().get(settings.JOBS_BEAT_LOCK_KEY)
    return value.decode() if value is not None else None


class HeartbeatDatabaseScheduler(DatabaseScheduler):
    """Sends periodic tasks only while holding the beat lock; records a heartbeat when it does,
    and sends the queues' canaries (jobs/canary.py) every JOBS_CANARY_INTERVAL_SECONDS.

    A beat process can be up yet stuck (a hung database query, a lost lock); only a heartbeat
    written from inside the scheduling loop, by the beat that holds the lock, tells /readyz that
    schedules are really being sent.
    """

    def __init__(self, *args, **kwargs) -> None:
        self._lock_token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._holder: str | None = None  # as last seen: None before the first tick asked
        self._canaries_sent_at = -math.inf
        self._closed = False
        super().__init__(*args, **kwargs)

    def tick(self, *args, **kwargs) -> float:
        if self._closed:
            # Told to stop. Celery's SIGTERM handler closes the scheduler (releasing the lock)
            # and raises SystemExit wherever the loop happens to be; raised inside a publish,
            # redis-py can turn it into an I/O error, which beat logs as a failed send and goes
            # on, taking the lock again until it is killed. Raised here, in the loop, it ends it.
            raise SystemExit()
        if not self._lock_hold():
            return LOCK_RETRY_SECONDS
        seconds_until_next_tick = super().tick(*args, **kwargs)
        beat_heartbeat_record()
        if time.monotonic() - self._canaries_sent_at >= settings.JOBS_CANARY_INTERVAL_SECONDS:
            self._canaries_sent_at = time.monotonic()
            canaries_send()
        return min(seconds_until_next_tick, settings.JOBS_BEAT_LOCK_TTL_SECONDS / RENEWALS_PER_TTL)

    def close(self) -> None:
        self._closed = True
        # Write the last run times first, then release: the successor reads them at once.
        try:
            super().close()
        finally:
            if self._holder == self._lock_token:
                self._holder = None
                try:
                    beat_lock_release(token=self._lock_token)
                except redis.RedisError as error:
                    logger.warning("beat lock not released (it expires on its own): %s", error)

    def _lock_hold(self) -> bool:
        try:
            holder = beat_lock_hold(token=self._lock_token)
        except redis.RedisError as error:
            # Unknown counts as not held: a skipped tick delays periodic work, while two beats
            # sending would double it. The heartbeat stops too, so /readyz shows it.
            holder = None
            logger.warning("beat lock unreachable, sending nothing: %s", error)
        holds = holder == self._lock_token
        if holds and self._holder != holder:
            logger.info("beat %s holds the beat lock: sending periodic tasks", self._lock_token)
            self._schedule_reread()
        elif holder and not holds and self._holder != holder:
            logger.info("beat %s waiting for the beat lock, held by %s", self._lock_token, holder)
        self._holder = holder
        return holds

    def _schedule_reread(self) -> None:
        # Whatever this beat knew of the schedule may be older than what the previous holder
        # sent and wrote since (its last run times above all); taking over from that would
        # repeat runs. django-celery-beat has no public way to force a fresh read: these two
        # attributes are what its first read and Celery's first tick start from.
        self._initial_read = True
        self._heap = None
