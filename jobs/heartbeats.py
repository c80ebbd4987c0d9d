"""Heartbeats of processes that serve nobody over HTTP (beat), read by /readyz."""

import logging
import time

import redis

from jobs.redis import redis_client

logger = logging.getLogger(__name__)

BEAT_HEARTBEAT_KEY = "jobs:heartbeat:beat"
# The key outlives any sane staleness threshold, then disappears so a dead beat leaves no trace.
HEARTBEAT_TTL_SECONDS = 3600


def beat_heartbeat_record() -> None:
    """Note that beat is alive now. Never raises: a Redis outage must not stop beat's loop."""
    try:
        redis_client().set(BEAT_HEARTBEAT_KEY, repr(time.time()), ex=HEARTBEAT_TTL_SECONDS)
    except redis.RedisError as error:
        logger.warning("beat heartbeat not recorded: %s", error)


def beat_heartbeat_age() -> float | None:
    """Seconds since beat last ticked, or None if it never did (or its key expired)."""
    value = redis_client().get(BEAT_HEARTBEAT_KEY)
    if value is None:
        return None
    return max(0.0, time.time() - float(value))
