"""A canary per queue: proof that each queue is being consumed, not just that workers are up.

A worker can be alive, heartbeating and subscribed, yet take nothing from a queue: after a Redis
reconnect a worker has been seen to stop consuming for good (celery/celery#8030), and a pool
whose processes all hang leaves its main process answering pings. Heartbeats cannot tell; a task
that has to go through the queue can.

- Beat, from its scheduling loop (jobs/beat.py), sends `jobs.canary` to every queue of
  settings.JOB_QUEUES each JOBS_CANARY_INTERVAL_SECONDS, expiring after JOBS_CANARY_MAX_AGE_SECONDS
  (a canary older than that proves nothing new, and a backlog must not fill up with them).
- A worker that runs one records the Redis server's time under its queue.
- A queue's canary age is the Redis server's time now minus that: one clock, as for beat's
  heartbeat. It grows when nobody consumes the queue, and also when the queue is so backed up
  that a canary waits behind the backlog; either way work sent now is not being done now.
  /readyz fails past JOBS_CANARY_MAX_AGE_SECONDS; /metrics serves it as
  jobs_canary_age_seconds.
"""

import logging
import math

import redis
from django.conf import settings
from kombu.exceptions import OperationalError

from config.celery import app
from jobs.redis import redis_client

logger = logging.getLogger(__name__)

CANARY_TASK = "jobs.canary"
CANARY_KEY = "jobs:canary"

_RECORD_SCRIPT = """
local now = redis.call('TIME')
redis.call('HSET', KEYS[1], ARGV[1], string.format('%s.%06d', now[1], now[2]))
"""


def canaries_send() -> None:
    """One canary to each queue. Never raises: it runs in beat's scheduling loop, which an
    exception would end, and every periodic job with it (Celery's own sends are guarded alike).
    A broker that is down or hangs stops this round (each queue would wait as long); a queue
    the broker refuses (another declaration of it, no permission) is skipped. The canaries'
    ages show either."""
    for queue in settings.JOB_QUEUES:
        try:
            app.send_task(
                CANARY_TASK,
                kwargs={"queue": queue},
                queue=queue,
                expires=settings.JOBS_CANARY_MAX_AGE_SECONDS,
                retry=False,
            )
        except (OperationalError, OSError) as error:
            logger.warning("canaries not sent: %s", error)
            return
        except Exception:
            logger.exception("canary for %s not sent", queue)


def canary_return(*, queue: str) -> None:
    """Record that a canary came back from `queue`. A Redis that fails only logs: the canary's
    growing age says so already, and a dead letter per canary (twelve a minute) would bury the
    ones a person must act on."""
    try:
        redis_client().register_script(_RECORD_SCRIPT)(keys=[CANARY_KEY], args=[queue])
    except redis.RedisError as error:
        logger.warning("canary from %s not recorded: %s", queue, error)


def canary_ages() -> dict[str, float]:
    """Seconds since each queue's last canary came back, by the Redis server's clock; infinite
    for a queue none has come back from (since Redis last started empty)."""
    pipeline = redis_client().pipeline(transaction=False)
    pipeline.hgetall(CANARY_KEY)
    pipeline.time()
    returned, (seconds, microseconds) = pipeline.execute()
    now = seconds + microseconds / 1_000_000
    returned = {queue.decode(): float(at) for queue, at in returned.items()}
    return {
        queue: max(0.0, now - returned[queue]) if queue in returned else math.inf
        for queue in settings.JOB_QUEUES
    }
