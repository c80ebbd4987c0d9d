"""One rate limit per outside provider, shared by every worker.

Celery's own `rate_limit` counts per worker process, so ten workers at "20/s" send 200 a
second. Here every worker books its calls in one schedule per provider, kept in Redis:

    @shared_task(name="accounts.send_email", bind=True, idempotent=True, ...)
    def send_email(self, delivery_id: int) -> None:
        rate_limit_or_defer(self, provider="smtp")
        services.email_delivery_send(delivery_id=delivery_id)

The schedule is a reservation scheme (GCRA's "virtual scheduling"). For a provider allowed one
call every T seconds, Redis keeps the provider's next free instant. A caller gets the slot
starting at max(now, next free instant), and the next free instant moves T further. A caller
whose slot starts now calls at once. Any other caller owns a slot in the future: its task's
message is published again, once, with a countdown to the slot and the reservation in a message
header, and this run ends. When the message comes back, the task finds its reservation and
calls without asking again.

A slot lasts one interval, [start, start + T), and the call must fall inside it. Slots never
overlap, so across all workers at most rate * w + 1 calls are granted in any window of w
seconds, and the calls go in the order the tasks asked. A task that comes back after its slot
has ended (every pool process was busy) books another, at the back of the line: calling late
would crowd the calls of the slots after it, and a pool that stalls for a few seconds would
then catch up with a burst of calls at a provider that may itself just have recovered.

Why reservations rather than "come back when the limit has room": the previous design, a token
bucket where an empty bucket meant "defer until the next token is due", turns a backlog into
churn. N waiting tasks all come back within the same token interval, one wins, and N - 1 defer
again. 1,000 queued emails at 20/s made on the order of 10,000 task runs a second that did
nothing but ask, each costing a Redis call, a publish and a worker slot, and the order was a
lottery in which one email could lose for minutes. With reservations a task runs twice: once to
book, once to call. It runs more only if its slot lies beyond the broker's countdown cap, or if
it missed its slot.

What reservations give up:
- A missed slot is lost capacity, and its task runs again. Size the pool so a task whose
  countdown ends finds a free process within an interval (50 ms at 20/s); a pool too busy for
  that sends below the limit rather than above it.
- A slot whose task never comes back (revoked, expired, a failed publish) stays unused: the
  capacity is lost, the limit still holds.
- A retried task books a new slot, because its slot went to the attempt that failed.
"""

import functools
import logging
import math
import re
from dataclasses import dataclass

import redis
from celery import Task
from celery.exceptions import Ignore
from django.conf import settings
from redis.commands.core import Script

from jobs.base import DELIVERIES_COUNTED_HEADER, deliveries_counted
from jobs.counters import rate_limit_deferral_count
from jobs.redis import redis_client
from jobs.retry import TransientError

logger = logging.getLogger("jobs.ratelimit")

SECONDS_PER_UNIT = {"s": 1.0, "m": 60.0, "h": 3600.0}
RATE_FORMAT = re.compile(r"(?P<tokens>\d+(?:\.\d+)?)/(?P<unit>[smh])")
US_PER_SECOND = 1_000_000

# Slots are booked at most an hour ahead. A caller whose slot would lie further out is refused
# with RateLimitBacklogged: transient, so its retry policy tries again later, and a task out of
# retries becomes a dead letter a person sees. Booking days ahead would keep working, but:
# - an hour of calls at a provider's full rate is a runaway producer or a limit too low for the
#   traffic; an operator should hear of it, not find a queue that grew quietly for days;
# - a booked slot keeps the spacing it was booked with, so raising a limit only helps callers
#   behind the existing bookings, and after Redis loses a provider's key (a restart without
#   persistence) new callers are booked from now while old bookings still run: twice the rate,
#   for as long as the old bookings reach;
# - every booked task waits as a countdown message that a worker holds in memory.
# However slow the limit, a caller may book the slot after the current one.
RESERVATION_HORIZON_SECONDS = 3600.0

# The message header a deferred task carries its reservation in. Celery puts custom headers
# of a message into `task.request.headers` when it runs, and copies them into a retry.
RESERVATION_HEADER = "jobs_rate_slot"

# KEYS[1]: the provider's next free instant. ARGV[1]: the interval between slots, ARGV[2]: how
# far ahead a slot may be booked, ARGV[3]: the start of the slot the caller holds, or '' for
# none; all in microseconds. Returns {now, start, ok}: the start of the caller's slot, which is
# the one it holds until that slot has ended, else a newly booked one. ok is 0 when a new slot
# would start beyond the horizon, in which case nothing was written.
# Time is the Redis server's own (TIME), so workers whose clocks disagree share one clock.
# Redis >= 5 replicates a script's writes rather than the script, so reading TIME is allowed.
# Integer microseconds since 1970 (~1.8e15) are exact in Lua's doubles, which hold 2^53.
_BOOK_LUA = """
local interval = tonumber(ARGV[1])
local horizon = tonumber(ARGV[2])
local held = tonumber(ARGV[3])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
if held and now < held + interval then
    return {now, held, 1}
end
local next_free = tonumber(redis.call('GET', KEYS[1])) or now
local start = math.max(now, next_free)
if start - now > horizon then
    return {now, start, 0}
end
next_free = start + interval
-- A missing key reads as "free now", so the key may go once its instant has passed: idle
-- providers leave nothing behind. %.0f: tostring() keeps 14 digits, too few for microseconds.
redis.call('SET', KEYS[1], string.format('%.0f', next_free),
           'PX', math.ceil((next_free - now) / 1000))
return {now, start, 1}
"""


class UnknownRateLimit(LookupError):
    """The provider has no entry in settings.JOBS_RATE_LIMITS: a typo, or a missing setting."""


class RateLimiterUnavailable(TransientError):
    """Redis, which holds the schedules, did not answer. Transient for every retry policy: the
    task is retried (or dead-lettered once out of retries), and the provider is not called
    without a limit."""


class RateLimitBacklogged(TransientError):
    """The provider's slots are booked beyond RESERVATION_HORIZON_SECONDS. Transient for every
    retry policy, with `retry_after` set to when a slot within the horizon frees up."""


@dataclass(frozen=True)
class Slot:
    """A call to a provider, booked for the interval starting at `at_us` (microseconds since
    1970 on Redis's clock)."""

    at_us: int
    wait: float  # seconds until at_us; 0.0: the slot has begun, call now


def parse_rate(rate: str) -> tuple[float, float]:
    """'20/s' -> (20.0, 1.0): that many calls per that many seconds. Units: s, m, h."""
    match = RATE_FORMAT.fullmatch(rate.strip()) if isinstance(rate, str) else None
    if match is None or float(match["tokens"]) == 0:
        raise ValueError(
            f"rate limit {rate!r} is not of the form N/s, N/m or N/h with N > 0 (e.g. '20/s')"
        )
    return float(match["tokens"]), SECONDS_PER_UNIT[match["unit"]]


def _interval_us(provider: str) -> int:
    try:
        rate = settings.JOBS_RATE_LIMITS[provider]
    except KeyError:
        raise UnknownRateLimit(
            f"no rate limit for provider {provider!r}; JOBS_RATE_LIMITS has "
            f"{sorted(settings.JOBS_RATE_LIMITS)}"
        ) from None
    calls, per_seconds = parse_rate(rate)
    # Rounded up: a slot interval a fraction of a microsecond long errs on the provider's side.
    return math.ceil(per_seconds * US_PER_SECOND / calls)


@functools.cache
def _book_script() -> Script:
    # Registered once; each call passes the current client, so a repointed REDIS_URL is used,
    # and a restarted Redis that forgot the script gets it loaded again by redis-py.
    return redis_client().register_script(_BOOK_LUA)


def rate_limit_book(*, provider: str, held_us: int | None = None) -> Slot:
    """The slot starting at `held_us` while it lasts, else the provider's next free slot. The
    slot is the caller's: it calls within the slot's interval without asking again (asking
    again books another slot). Raises RateLimitBacklogged, booking nothing, if the slot would
    start more than RESERVATION_HORIZON_SECONDS from now. Tasks call `rate_limit_or_defer`."""
    interval_us = _interval_us(provider)
    horizon_us = max(round(RESERVATION_HORIZON_SECONDS * US_PER_SECOND), interval_us)
    try:
        now_us, at_us, ok = _book_script()(
            keys=[f"jobs:ratelimit:{provider}"],
            args=[interval_us, horizon_us, "" if held_us is None else held_us],
            client=redis_client(),
        )
    except redis.RedisError as error:
        raise RateLimiterUnavailable(f"rate limit for {provider!r}: {error}") from error
    wait = max(0.0, (at_us - now_us) / US_PER_SECOND)
    if not ok:
        raise RateLimitBacklogged(
            f"rate limit for {provider!r}: the next free slot is {wait:.0f}s away, beyond the "
            f"{RESERVATION_HORIZON_SECONDS:.0f}s booking horizon; the producer outpaces the limit",
            retry_after=wait - horizon_us / US_PER_SECOND,
        )
    if held_us is not None and at_us != held_us:
        logger.info(
            "provider=%s missed_slot_by_s=%.3f: booked another; the pool was too busy to run "
            "the task within its slot",
            provider,
            (now_us - held_us - interval_us) / US_PER_SECOND,
        )
    return Slot(at_us=at_us, wait=wait)


def _held_slot_us(task: Task, provider: str) -> int | None:
    """The slot this message carries for the provider, if this attempt booked it. A retry
    carries the headers of the attempt before it (Celery copies them), but that slot was spent
    by the failed attempt's call: a retry books anew."""
    booking = (task.request.headers or {}).get(RESERVATION_HEADER)
    if booking and booking["provider"] == provider and booking["retries"] == task.request.retries:
        return booking["at_us"]
    return None


def rate_limit_or_defer(task: Task, *, provider: str) -> None:
    """Return if the provider may be called now; otherwise publish this task's message again for
    its slot, carrying the reservation, and end this run (raises Ignore).

    A message that comes back before its slot (a countdown capped below, or a worker clock ahead
    of Redis's) waits again for the same slot; one that comes back after its slot has ended
    books another. The deferred message keeps the task id, arguments and retry count: a
    deferral is not a failure and does not use up the task's retries. Call it right before the
    provider call, once per task: a deferred task runs again from the start, so whatever
    precedes the call runs again too, and a message carries one reservation.
    """
    slot = rate_limit_book(provider=provider, held_us=_held_slot_us(task, provider))
    if slot.wait == 0.0:
        return
    # Capped like every broker countdown: Redis would hand out again an unacknowledged ETA
    # message older than the visibility timeout, and run it twice. A slot further out is kept
    # by deferring in steps, each carrying the reservation.
    countdown = min(slot.wait, settings.JOBS_MAX_BROKER_COUNTDOWN_SECONDS)
    booking = {"provider": provider, "at_us": slot.at_us, "retries": task.request.retries}
    deferred = task.signature_from_request(countdown=countdown)
    headers = {**deferred.options["headers"], RESERVATION_HEADER: booking}
    if deliveries_counted(task.request):
        # The deferred message is new to the broker: without this, a message that kills its
        # worker every other delivery, deferred in between, would never be counted.
        headers[DELIVERIES_COUNTED_HEADER] = True
    deferred.options["headers"] = headers
    rate_limit_deferral_count(provider)
    # Celery's own apply_async, not PlatformTask's: inside transaction.atomic() that one would
    # publish on commit, and the Ignore raised below rolls the transaction back, message and all.
    Task.apply_async(task, deferred.args, deferred.kwargs, **deferred.options)
    logger.debug(
        "task=%s id=%s provider=%s slot_in_s=%.3f deferred_s=%.3f",
        task.name,
        task.request.id,
        provider,
        slot.wait,
        countdown,
    )
    raise Ignore()
