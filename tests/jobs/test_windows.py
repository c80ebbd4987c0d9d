"""Fixed-window limits in the suite's real Redis."""

import time

import pytest

from jobs.redis import redis_client
from jobs.windows import WindowFull, WindowLimit, window_limits_spend


def test_a_limit_without_room_refuses_and_the_others_spend_nothing():
    # given two limits spent together, the second with room for 10 units
    def both(amount: int) -> tuple[WindowLimit, WindowLimit]:
        return (
            WindowLimit("test:calls", limit=5, window_seconds=60),
            WindowLimit("test:units", limit=10, window_seconds=60, amount=amount),
        )

    window_limits_spend(*both(8))
    # when a call would take the second past its limit
    with pytest.raises(WindowFull) as refusal:
        window_limits_spend(*both(3))
    # then it is refused by that limit, until its window ends, and neither counter moved
    assert refusal.value.limit.key == "test:units"
    assert 59 <= refusal.value.retry_after <= 60
    assert redis_client().mget("test:calls", "test:units") == [b"1", b"8"]
    # and a call that fits both is still spent in full
    window_limits_spend(*both(2))
    assert redis_client().mget("test:calls", "test:units") == [b"2", b"10"]


def test_a_full_window_has_room_again_once_it_ends():
    # given a limit of 2 per 0.3 s, spent
    limit = WindowLimit("test:burst", limit=2, window_seconds=0.3)
    window_limits_spend(limit)
    window_limits_spend(limit)
    with pytest.raises(WindowFull) as refusal:
        window_limits_spend(limit)
    assert refusal.value.retry_after == 1  # rounded up to whole seconds, as Retry-After is
    # when the window has ended, then the limit has room again
    time.sleep(0.4)
    window_limits_spend(limit)
    assert redis_client().get("test:burst") == b"1"


def test_an_amount_no_window_could_hold_is_a_programming_error():
    with pytest.raises(ValueError, match="exceeds the limit"):
        window_limits_spend(WindowLimit("test:big", limit=10, window_seconds=60, amount=11))
    assert redis_client().get("test:big") is None
