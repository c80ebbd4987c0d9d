"""Fixed-window limits in Redis, shared by every web process: "at most N units per window".

A window's counter is one Redis key holding the units spent in it; the window starts with its
first spend and the key expires when it ends. Fixed windows allow up to twice the limit across
a window boundary, which is fine for abuse control, and cost one round trip instead of a sorted
set per key.

Several limits are spent at once, all or nothing, in one script: an upload counts against its
account's uploads and its megapixels an hour, and one refused by either limit must spend
neither (else a refusal would use up budget that a smaller request could still have had).
"""

import functools
import math
from dataclasses import dataclass

from redis.commands.core import Script

from jobs.redis import redis_client

# KEYS: one counter per limit. ARGV: for each key in order, its limit, its window in
# milliseconds and the amount to spend. Returns 0 when every amount was spent, else
# {i, milliseconds until window i ends} for the first limit without room, having spent nothing.
# PTTL < 0 after INCRBY means a new key: its window starts now (a key is never left without an
# expiry, so a counter cannot outlive its window).
_SPEND_LUA = """
for i, key in ipairs(KEYS) do
    local limit, amount = tonumber(ARGV[3 * i - 2]), tonumber(ARGV[3 * i])
    if tonumber(redis.call('GET', key) or '0') + amount > limit then
        return {i, redis.call('PTTL', key)}
    end
end
for i, key in ipairs(KEYS) do
    redis.call('INCRBY', key, ARGV[3 * i])
    if redis.call('PTTL', key) < 0 then
        redis.call('PEXPIRE', key, ARGV[3 * i - 1])
    end
end
return 0
"""


@dataclass(frozen=True)
class WindowLimit:
    key: str  # the Redis key of this subject's counter (one per subject and kind of unit)
    limit: float  # units allowed per window
    window_seconds: float
    amount: int = 1  # units this call spends


class WindowFull(Exception):
    """`limit` has no room for its amount before its window ends, `retry_after` seconds from
    now (at least 1)."""

    def __init__(self, limit: WindowLimit, *, retry_after: int) -> None:
        super().__init__(f"{limit.key}: no room for {limit.amount} before {retry_after}s")
        self.limit = limit
        self.retry_after = retry_after


@functools.cache
def _spend_script() -> Script:
    # Registered once; each call passes the current client (see jobs/ratelimit.py).
    return redis_client().register_script(_SPEND_LUA)


def window_limits_spend(*limits: WindowLimit) -> None:
    """Spend each limit's amount in its current window, or, if any of them lacks room, none:
    raises WindowFull for the first without room.

    Raises redis.RedisError when Redis does not answer; whether to go on without the limits
    (fail open) or refuse is the caller's decision.
    """
    args: list[float] = []
    for limit in limits:
        if limit.amount > limit.limit:
            # No window would ever have room: a caller's limits are configured too small.
            raise ValueError(f"{limit.key}: amount {limit.amount} exceeds the limit {limit.limit}")
        args += [limit.limit, math.ceil(limit.window_seconds * 1000), limit.amount]
    full = _spend_script()(keys=[limit.key for limit in limits], args=args, client=redis_client())
    if full:
        index, remaining_ms = full
        raise WindowFull(limits[index - 1], retry_after=max(1, math.ceil(remaining_ms / 1000)))
