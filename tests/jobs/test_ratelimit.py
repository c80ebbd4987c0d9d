"""The global rate limit for outside providers: one Redis bucket per provider, shared by every
worker, and tasks that find it empty deferred rather than retried."""

import socket
import threading
import time
import uuid
from collections.abc import Callable

import pytest

from jobs.ratelimit import (
    RateLimiterUnavailable,
    UnknownRateLimit,
    parse_rate,
    rate_limit_acquire,
)
from jobs.redis import redis_client
from jobs.retry import TransientError
from tests.services import WorkerProcess, eventually
from tests.worker_tasks.ratelimit import call_rate_limited_provider, calls, runs

RATE = 5  # tokens a second: slow enough to measure on a loaded machine, fast enough to be brief
# A bucket of one token lets through at most RATE * w + 1 calls in any window of w seconds.
BURST = 1


@pytest.fixture
def five_per_second(settings) -> None:
    settings.JOBS_RATE_LIMITS = {"test": f"{RATE}/s"}


def server_time() -> float:
    seconds, microseconds = redis_client().time()
    return seconds + microseconds / 1e6


@pytest.mark.parametrize(
    ("rate", "parsed"),
    [
        ("20/s", (20.0, 1.0)),
        ("600/m", (600.0, 60.0)),
        ("1/h", (1.0, 3600.0)),
        ("2.5/s", (2.5, 1.0)),
    ],
)
def test_parse_rate_reads_a_count_per_unit(rate, parsed):
    assert parse_rate(rate) == parsed


@pytest.mark.parametrize("rate", ["", "20", "20/d", "/s", "0/s", "-1/s", "twenty/s", "20/sec"])
def test_parse_rate_rejects_anything_else(rate):
    with pytest.raises(ValueError, match="N/s, N/m or N/h"):
        parse_rate(rate)


def test_a_provider_without_a_limit_is_an_error_not_an_unlimited_provider(five_per_second):
    with pytest.raises(UnknownRateLimit, match="smpt"):
        rate_limit_acquire(provider="smpt")


def test_concurrent_callers_get_at_most_one_token_more_than_the_rate(five_per_second):
    # given four threads taking tokens as fast as they can for two seconds
    granted: list[float] = []
    stop_at = time.monotonic() + 2.0

    def hammer() -> None:
        while time.monotonic() < stop_at:
            if rate_limit_acquire(provider="test") == 0.0:
                granted.append(1.0)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    # when they run
    started = server_time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = server_time() - started

    # then every grant fell inside [started, started + elapsed], so the bucket's bound applies
    assert len(granted) <= RATE * elapsed + BURST, (len(granted), elapsed)
    # and the limit throttles to its rate, not below: callers polling without pause find each
    # token within a round trip (four fifths leaves room for a busy two-core machine)
    assert len(granted) >= 0.8 * RATE * elapsed, (len(granted), elapsed)


def test_an_empty_bucket_tells_how_long_until_the_next_token(five_per_second):
    # given a bucket whose one token was just taken
    assert rate_limit_acquire(provider="test") == 0.0
    # when another caller asks
    wait = rate_limit_acquire(provider="test")
    # then it gets no token, and a wait of at most one token interval
    assert 0 < wait <= 1 / RATE


def test_an_idle_provider_leaves_no_key_behind(five_per_second):
    # given a provider that was called once
    rate_limit_acquire(provider="test")
    # then its bucket expires once it would be full again: one token interval
    assert 0 < redis_client().pttl("jobs:ratelimit:test") <= 1000 / RATE


def test_an_unreachable_redis_is_a_transient_error(five_per_second, settings):
    # given a Redis that does not answer (a port nobody listens on)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings.REDIS_URL = f"redis://127.0.0.1:{port}/0"
    # then asking for a token fails as transient, so the task's retry policy retries it
    with pytest.raises(RateLimiterUnavailable) as raised:
        rate_limit_acquire(provider="test")
    assert isinstance(raised.value, TransientError)


def start_workers_limited_to(
    start_worker: Callable[..., WorkerProcess], rate: str, *, count: int, **extra_env: str
) -> list[WorkerProcess]:
    """Workers read JOBS_RATE_LIMITS from their environment at start-up. They are the only
    consumers: the session's shared worker consumes every queue but knows no "test" provider,
    so tests using these request `no_worker_running`."""
    workers = [
        start_worker(
            queues=["default"],
            concurrency=2,
            extra_env={"JOBS_RATE_LIMITS": f"test={rate}", **extra_env},
            wait=False,
        )
        for _ in range(count)
    ]
    for worker in workers:
        worker.wait_ready()
    return workers


def test_a_rate_limit_of_5_per_second_across_two_workers_holds_within_one_token_of_burst(
    no_worker_running, start_worker
):
    # given two workers of two pool processes each, sharing a limit of 5/s
    workers = start_workers_limited_to(start_worker, f"{RATE}/s", count=2)
    key = uuid.uuid4().hex
    # when twenty tasks that call the provider are published at once
    published = [call_rate_limited_provider.delay(key=key).id for _ in range(20)]

    # then every task calls the provider (19 token intervals after the first: ~4 s)
    eventually(lambda: len(calls(key)) >= len(published), timeout=30)
    # and none twice: any deferred copy would be due within two token intervals of its
    # deferral, so after a second of quiet no further call can come
    time.sleep(1.0)
    made = calls(key)
    assert sorted(call["id"] for call in made) == sorted(published)
    # and in every window of one second there are at most RATE + BURST calls
    stamps = sorted(call["at"] for call in made)
    busiest = max(sum(1 for t in stamps if start <= t <= start + 1.0) for start in stamps)
    assert busiest <= RATE + BURST, stamps
    # and overall the calls went at 5/s: twenty need at least (20 - BURST) / RATE seconds, less
    # the few milliseconds between taking a token and recording the call. Deferral costs some
    # throughput (a token waits for a deferred task to come back for it), but not half of it.
    span = stamps[-1] - stamps[0]
    assert (len(stamps) - BURST) / RATE - 0.05 <= span <= (len(stamps) - BURST) / (RATE / 2), stamps
    # and the load was shared: both workers called, and tasks were deferred, not slept on
    assert {call["worker"] for call in made} == {worker.name for worker in workers}
    assert len(runs(key)) > len(published)


def test_a_deferral_is_not_counted_as_a_retry(no_worker_running, start_worker, settings):
    # given a limit of one call every two seconds, and a token just taken by someone else
    settings.JOBS_RATE_LIMITS = {"test": "30/m"}
    start_workers_limited_to(start_worker, "30/m", count=1)
    assert rate_limit_acquire(provider="test") == 0.0
    key = uuid.uuid4().hex
    # when a task that calls the provider runs
    task_id = call_rate_limited_provider.delay(key=key).id
    # then it is deferred at least once, and then calls the provider with no retry used up
    call = eventually(lambda: calls(key), timeout=15)[0]
    assert runs(key).count(task_id) >= 2
    assert call["id"] == task_id
    assert call["retries"] == 0


def test_a_slow_limit_defers_in_steps_no_longer_than_the_broker_countdown_cap(
    no_worker_running, start_worker, settings
):
    # given a limit of one call an hour, its token just taken, and workers whose broker
    # countdowns are capped at half a second (in production: half the visibility timeout)
    settings.JOBS_RATE_LIMITS = {"test": "1/h"}
    start_workers_limited_to(start_worker, "1/h", count=1, JOBS_MAX_BROKER_COUNTDOWN_SECONDS="0.5")
    assert rate_limit_acquire(provider="test") == 0.0
    key = uuid.uuid4().hex
    # when a task that calls the provider runs
    task_id = call_rate_limited_provider.delay(key=key).id
    # then it comes back every half second instead of waiting an hour in a worker's hands
    # (where Redis would hand it out again once the visibility timeout passed), and each time
    # it finds no token and defers again
    eventually(lambda: runs(key).count(task_id) >= 3, timeout=10)
    assert calls(key) == []
