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
    """One canary to each queue. Never raises for a broker that is down or hangs: beat's loop
    must go on, and the canaries' ages show the outage."""
    for queue in settings.JOB_QUEUES:
        try:
            app.send_task(
                CANARY_TASK,
                kwargs={"queue": queue},
                queue=queue,
                expires=settings.JOBS_CANARY_MAX_AGE_SECONDS,
                retry=False,
                timeout=settings.JOBS_PUBLISH_TIMEOUT_SECONDS,
            )
        except (OperationalError, OSError) as error:
            logger.warning("canaries not sent: %s", error)
            return


def canary_record(*, queue: str) -> None:
    redis_client().register_script(_RECORD_SCRIPT)(keys=[CANARY_KEY], args=[queue])


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
