"""One rate limit per outside provider, shared by every worker (DESIGN §4 rule 6).

Celery's own `rate_limit` counts per worker process, so ten workers at "20/s" send 200 a
second. Here every worker takes its tokens from one bucket in Redis:

    @shared_task(name="accounts.send_verification_email", bind=True, idempotent=True, ...)
    def send_verification_email(self, delivery_id: int) -> None:
        rate_limit_or_defer(self, provider="smtp")
        services.email_delivery_send(delivery_id=delivery_id)

A task that finds the bucket empty is not put to sleep in its worker slot: its message is
published again for when the next token is due, and this run ends.
"""

import functools
import logging
import random
import re

import redis
from celery import Task
from celery.exceptions import Ignore
from django.conf import settings
from redis.commands.core import Script

from jobs.redis import redis_client
from jobs.retry import TransientError

logger = logging.getLogger("jobs.ratelimit")

SECONDS_PER_UNIT = {"s": 1.0, "m": 60.0, "h": 3600.0}
RATE_FORMAT = re.compile(r"(?P<tokens>\d+(?:\.\d+)?)/(?P<unit>[smh])")

# The bucket holds a single token. A token bucket of capacity C refilled at r tokens a second
# lets through at most C + r*w calls in any window of w seconds, so C = 1 keeps a provider
# within one call of its rate in every window: 5/s never sees more than 6 calls in a second.
# A capacity of the rate's own count (5 for 5/s) would let a full bucket's 5 go out at once and
# 5 more refill within the same second: 10 calls in a second the provider counts as 5/s.
# The price is no burst: calls leave evenly spaced, one every 1/r seconds.
CAPACITY_TOKENS = 1

# KEYS[1]: the provider's bucket. ARGV[1]: capacity in tokens, ARGV[2]: refill in tokens a
# second. Returns 0 when a token was taken, else the microseconds until one will be there.
# Time is the Redis server's own (TIME), so workers whose clocks disagree share one clock.
# Redis >= 5 replicates a script's writes rather than the script, so reading TIME is allowed.
_BUCKET_LUA = """
local capacity = tonumber(ARGV[1])
local tokens_per_us = tonumber(ARGV[2]) / 1e6
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1e6 + tonumber(time[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = capacity
if state[1] then
    -- max(0, ...): after a failover to a server whose clock is behind, refill nothing rather
    -- than a negative amount.
    local elapsed = math.max(0, now - tonumber(state[2]))
    tokens = math.min(capacity, tonumber(state[1]) + elapsed * tokens_per_us)
end
if tokens < 1 then
    return math.ceil((1 - tokens) / tokens_per_us)
end
tokens = tokens - 1
-- %.17g and %.0f: tostring() keeps 14 digits, too few for microseconds since 1970.
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens),
           'at', string.format('%.0f', now))
-- A missing key reads as a full bucket, so the key may go once the bucket would be full again:
-- idle providers leave nothing behind.
redis.call('PEXPIRE', KEYS[1], math.ceil((capacity - tokens) / tokens_per_us / 1000))
return 0
"""


class UnknownRateLimit(LookupError):
    """The provider has no entry in settings.JOBS_RATE_LIMITS: a typo, or a missing setting."""


class RateLimiterUnavailable(TransientError):
    """Redis, which holds the buckets, did not answer. Transient for every retry policy: the
    task is retried (or dead-lettered once out of retries), and the provider is not called
    without a limit."""


def parse_rate(rate: str) -> tuple[float, float]:
    """'20/s' -> (20.0, 1.0): that many tokens per that many seconds. Units: s, m, h."""
    match = RATE_FORMAT.fullmatch(rate.strip())
    if match is None or float(match["tokens"]) == 0:
        raise ValueError(
            f"rate limit {rate!r} is not of the form N/s, N/m or N/h with N > 0 (e.g. '20/s')"
        )
    return float(match["tokens"]), SECONDS_PER_UNIT[match["unit"]]


def _tokens_per_second(provider: str) -> float:
    try:
        rate = settings.JOBS_RATE_LIMITS[provider]
    except KeyError:
        raise UnknownRateLimit(
            f"no rate limit for provider {provider!r}; JOBS_RATE_LIMITS has "
            f"{sorted(settings.JOBS_RATE_LIMITS)}"
        ) from None
    tokens, per_seconds = parse_rate(rate)
    return tokens / per_seconds


@functools.cache
def _bucket() -> Script:
    # Registered once; each call passes the current client, so a repointed REDIS_URL is used,
    # and a restarted Redis that forgot the script gets it loaded again by redis-py.
    return redis_client().register_script(_BUCKET_LUA)


def rate_limit_acquire(*, provider: str) -> float:
    """Take a token from the provider's bucket: 0.0 if one was taken, else the seconds until
    one will be available (no token is held for the caller meanwhile)."""
    tokens_per_second = _tokens_per_second(provider)
    try:
        wait_us = _bucket()(
            keys=[f"jobs:ratelimit:{provider}"],
            args=[CAPACITY_TOKENS, tokens_per_second],
            client=redis_client(),
        )
    except redis.RedisError as error:
        raise RateLimiterUnavailable(f"rate limit for {provider!r}: {error}") from error
    return wait_us / 1e6


def rate_limit_or_defer(task: Task, *, provider: str) -> None:
    """Return if the provider may be called now; otherwise publish this task's message again
    for when a token is due and end this run (raises Ignore).

    The deferred message keeps the task id, arguments and retry count: a deferral is not a
    failure and does not use up the task's retries. Call it right before the provider call:
    a deferred task runs again from the start, so whatever precedes the call runs again too.
    """
    wait = rate_limit_acquire(provider=provider)
    if wait == 0.0:
        return
    # Up to one token interval of jitter: tasks that found the bucket empty together come back
    # spread over the next interval rather than all at the instant its token appears.
    jitter = random.uniform(0, 1 / _tokens_per_second(provider))  # noqa: S311 - not crypto
    # Capped like every broker countdown: Redis would hand out again an unacknowledged ETA
    # message older than the visibility timeout (a slow limit such as 1/h waits longer), and
    # run it twice. A task that comes back before its token simply defers again.
    countdown = min(wait + jitter, settings.JOBS_MAX_BROKER_COUNTDOWN_SECONDS)
    deferred = task.signature_from_request(countdown=countdown)
    # Celery's own apply_async, not PlatformTask's: inside transaction.atomic() that one would
    # publish on commit, and the Ignore raised below rolls the transaction back, message and all.
    Task.apply_async(task, deferred.args, deferred.kwargs, **deferred.options)
    logger.debug(
        "task=%s id=%s provider=%s deferred_s=%.3f", task.name, task.request.id, provider, countdown
    )
    raise Ignore()
