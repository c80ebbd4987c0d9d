"""The global rate limit for outside providers: one schedule of slots per provider in Redis,
shared by every worker; a task whose slot is in the future is deferred once, to its slot, and
then calls without asking again."""

import itertools
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from celery.exceptions import Ignore
from django.core import checks

from config.celery import app
from jobs import ratelimit
from jobs.ratelimit import (
    RESERVATION_HEADER,
    RateLimitBacklogged,
    RateLimiterUnavailable,
    UnknownRateLimit,
    parse_rate,
    rate_limit_book,
    rate_limit_or_defer,
)
from jobs.redis import redis_client
from jobs.retry import TransientError
from tests.services import WorkerProcess, eventually
from tests.worker_tasks.ratelimit import call_rate_limited_provider, calls, runs

RATE = 5  # calls a second: slow enough to measure on a loaded machine, fast enough to be brief
INTERVAL_US = 1_000_000 // RATE
# Slots one interval apart let through at most RATE * w + 1 calls in any window of w seconds.
BURST = 1


@pytest.fixture
def five_per_second(settings) -> None:
    settings.JOBS_RATE_LIMITS = {"test": f"{RATE}/s"}


def server_time_us() -> int:
    seconds, microseconds = redis_client().time()
    return seconds * 1_000_000 + microseconds


def next_free_us(provider: str = "test") -> int | None:
    value = redis_client().get(f"jobs:ratelimit:{provider}")
    return None if value is None else int(value)


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


@pytest.mark.parametrize(
    "rate", ["", "20", "20/d", "/s", "0/s", "-1/s", "twenty/s", "20/sec", 20, None]
)
def test_parse_rate_rejects_anything_else(rate):
    with pytest.raises(ValueError, match="N/s, N/m or N/h"):
        parse_rate(rate)


def test_a_provider_without_a_limit_is_an_error_not_an_unlimited_provider(five_per_second):
    with pytest.raises(UnknownRateLimit, match="smpt"):
        rate_limit_book(provider="smpt")


def test_the_system_check_names_a_limit_that_does_not_parse(settings):
    # given one well-formed limit and one that is not
    settings.JOBS_RATE_LIMITS = {"smtp": "20/s", "push": "fifty/s"}
    # when Django's system checks run (as `manage.py check` and every deploy run them)
    errors = [error for error in checks.run_checks() if error.id == "jobs.E003"]
    # then the malformed one, and only it, is an error
    assert len(errors) == 1
    assert "'push'" in errors[0].msg and "fifty/s" in errors[0].msg


def test_the_system_check_passes_well_formed_limits(settings):
    settings.JOBS_RATE_LIMITS = {"smtp": "20/s", "push": "600/m", "fax": "1/h"}
    assert [error for error in checks.run_checks() if error.id == "jobs.E003"] == []


def test_callers_in_turn_get_the_next_slots_one_interval_apart(five_per_second):
    # given a provider nobody called for a while
    # when three callers ask in turn
    slots = [rate_limit_book(provider="test") for _ in range(3)]
    # then the first calls now, and each of the others owns the slot one interval after the last
    assert slots[0].wait == 0.0
    assert [b.at_us - a.at_us for a, b in itertools.pairwise(slots)] == [INTERVAL_US] * 2
    # and is told how long until it (less the moments that passed between the asks)
    assert 0 < slots[1].wait <= 1 / RATE < slots[2].wait <= 2 / RATE


def test_concurrent_callers_get_distinct_slots_spaced_by_the_interval(five_per_second):
    # given eight threads booking twenty slots each, as fast as they can
    booked: list[int] = []

    def book() -> None:
        for _ in range(20):
            booked.append(rate_limit_book(provider="test").at_us)

    threads = [threading.Thread(target=book) for _ in range(8)]
    # when they run
    started = server_time_us()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # then every caller got a slot of its own, none before the bookings began
    slots = sorted(booked)
    assert len(set(slots)) == len(slots) == 160
    assert slots[0] >= started
    # and no two slots are closer than one interval, so in any window of w seconds at most
    # RATE * w + 1 calls are granted however many callers race
    assert min(b - a for a, b in itertools.pairwise(slots)) >= INTERVAL_US
    # and none is further out than its place in line: no slot is skipped, so 160 callers are
    # served within 159 intervals of the first (a gap would take every thread pausing for
    # longer than the bookings' lead over the clock, one interval after the first booking and
    # growing by one with each)
    assert slots[-1] - slots[0] == (len(slots) - 1) * INTERVAL_US


def test_an_idle_provider_leaves_no_key_behind(five_per_second):
    # given a provider that was called once, and then one whose next three slots are booked
    rate_limit_book(provider="test")
    # then its schedule expires once its next free instant has passed: one interval...
    assert 0 < redis_client().pttl("jobs:ratelimit:test") <= 1000 / RATE
    rate_limit_book(provider="test")
    rate_limit_book(provider="test")
    # ...or, with bookings ahead, once the last booked slot has passed
    assert 2000 / RATE < redis_client().pttl("jobs:ratelimit:test") <= 3000 / RATE


def test_a_caller_beyond_the_booking_horizon_is_refused_and_books_nothing(
    five_per_second, monkeypatch
):
    # given a booking horizon of one second, and the next second's six slots booked
    monkeypatch.setattr(ratelimit, "RESERVATION_HORIZON_SECONDS", 1.0)
    for _ in range(RATE + 1):
        rate_limit_book(provider="test")
    booked_until = next_free_us()
    # when one more caller asks
    with pytest.raises(RateLimitBacklogged, match="horizon") as refused:
        rate_limit_book(provider="test")
    # then it is refused as transient (its retry policy tries again later), told to come back
    # when a slot within the horizon frees up (at most one interval from now)...
    assert isinstance(refused.value, TransientError)
    assert 0 < refused.value.retry_after <= 1 / RATE
    # ...and the refusal moved nobody's slot
    assert next_free_us() == booked_until


def test_a_limit_slower_than_the_horizon_can_still_book_its_next_slot(settings, monkeypatch):
    # given a limit of one call every two hours, beyond a one-hour horizon
    settings.JOBS_RATE_LIMITS = {"test": "0.5/h"}
    monkeypatch.setattr(ratelimit, "RESERVATION_HORIZON_SECONDS", 3600.0)
    # then one caller calls now and the next books the slot two hours out; only a third is
    # refused, instead of every caller after the first being refused for ever
    assert rate_limit_book(provider="test").wait == 0.0
    assert rate_limit_book(provider="test").wait == pytest.approx(7200, abs=1)
    with pytest.raises(RateLimitBacklogged):
        rate_limit_book(provider="test")


def test_an_unreachable_redis_is_a_transient_error(five_per_second, settings):
    # given a Redis that does not answer (a port nobody listens on)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings.REDIS_URL = f"redis://127.0.0.1:{port}/0"
    # then booking a slot fails as transient, so the task's retry policy retries it
    with pytest.raises(RateLimiterUnavailable) as raised:
        rate_limit_book(provider="test")
    assert isinstance(raised.value, TransientError)


# --- rate_limit_or_defer, run in the test process as a worker would run it -----------------


def run_limited_step(headers: dict) -> bool:
    """Run `rate_limit_or_defer` for call_rate_limited_provider as a worker runs a message with
    these headers (the message's headers become `task.request`). True if the task may call."""
    task = call_rate_limited_provider
    task.push_request(
        **headers,
        args=[],
        kwargs={"key": "k"},
        delivery_info={"exchange": "", "routing_key": "default"},
        called_directly=False,
    )
    try:
        rate_limit_or_defer(task, provider="test")
    except Ignore:
        return False
    finally:
        task.pop_request()
    return True


def published_deferral() -> dict:
    """The headers of the message the deferral published (nothing consumes the queue)."""
    with app.connection_for_read() as connection:
        message = app.amqp.queues["default"](connection.default_channel).get(no_ack=True)
    assert message is not None, "the task was not published again"
    return message.headers


def test_a_reservation_beyond_the_countdown_cap_is_kept_until_its_slot(
    no_worker_running, five_per_second, settings
):
    # given broker countdowns capped at 50 ms, and the next two slots (400 ms) taken
    settings.JOBS_MAX_BROKER_COUNTDOWN_SECONDS = 0.05
    rate_limit_book(provider="test")
    rate_limit_book(provider="test")
    booked_until = next_free_us()
    # when a task asks, and runs again each time its deferred message is due
    headers: dict = {"id": "task-1", "retries": 0}
    deferrals, countdowns = [], []
    while not run_limited_step(headers):
        headers = published_deferral()
        deferrals.append(headers)
        countdowns.append(datetime.fromisoformat(headers["eta"]) - datetime.now(UTC))
        time.sleep(max(0.0, countdowns[-1].total_seconds()))
    called_at = server_time_us()

    # then it booked one slot, the one after those taken, and kept it through every deferral
    slot = deferrals[0][RESERVATION_HEADER]
    assert slot == {"provider": "test", "at_us": booked_until, "retries": 0}
    assert all(deferral[RESERVATION_HEADER] == slot for deferral in deferrals)
    assert next_free_us() == booked_until + INTERVAL_US
    # and waited for it in several steps, none longer than the cap
    assert len(deferrals) >= 2
    assert max(countdowns).total_seconds() <= 0.05
    # and called at its slot: not before, and sooner than the slot after it (it booked no other)
    assert slot["at_us"] <= called_at < slot["at_us"] + INTERVAL_US
    # and every deferral kept the task's identity and its retry count
    assert {(d["id"], d["retries"]) for d in deferrals} == {("task-1", 0)}


def test_a_task_delivered_before_its_slot_waits_for_the_same_slot(
    no_worker_running, five_per_second
):
    # given a task whose message carries the slot one interval from now
    rate_limit_book(provider="test")
    slot = rate_limit_book(provider="test")
    booked_until = next_free_us()
    booking = {"provider": "test", "at_us": slot.at_us, "retries": 0}
    # when it is delivered now, early
    assert not run_limited_step({"id": "task-1", "retries": 0, RESERVATION_HEADER: booking})
    # then it is deferred again to the same slot, and books nothing new
    assert published_deferral()[RESERVATION_HEADER] == booking
    assert next_free_us() == booked_until


def test_a_task_back_within_its_slot_calls_without_booking_again(
    no_worker_running, five_per_second
):
    # given a task whose slot began half an interval ago, and the slot after it booked
    held = {"provider": "test", "at_us": server_time_us() - INTERVAL_US // 2, "retries": 0}
    rate_limit_book(provider="test")
    booked_until = next_free_us()
    # when it runs, a little late (its countdown ended while every pool process was busy)
    # then it calls, and books nothing
    assert run_limited_step({"id": "task-1", "retries": 0, RESERVATION_HEADER: held})
    assert next_free_us() == booked_until


def test_a_task_back_after_its_slot_has_ended_books_another(no_worker_running, five_per_second):
    # given a task whose slot ended half an interval ago, and the slot after it taken
    missed = {"provider": "test", "at_us": server_time_us() - 3 * INTERVAL_US // 2, "retries": 0}
    rate_limit_book(provider="test")
    booked_until = next_free_us()
    # when it runs, late
    # then it does not call in the slot that now belongs to another, but books the next free one
    assert not run_limited_step({"id": "task-1", "retries": 0, RESERVATION_HEADER: missed})
    assert published_deferral()[RESERVATION_HEADER] == {
        "provider": "test",
        "at_us": booked_until,
        "retries": 0,
    }


def test_a_retry_books_a_new_slot_instead_of_reusing_the_spent_one(
    no_worker_running, five_per_second
):
    # given a message that carries the slot of an attempt that called and failed (Celery copies
    # a message's headers into its retry), a slot that has not yet ended, and a provider booked
    # for the next interval
    spent = {"provider": "test", "at_us": server_time_us() - INTERVAL_US // 2, "retries": 0}
    rate_limit_book(provider="test")
    booked_until = next_free_us()
    # when the retry runs
    assert not run_limited_step({"id": "task-1", "retries": 1, RESERVATION_HEADER: spent})
    # then it does not call on the old slot but books the next free one for itself
    assert published_deferral()[RESERVATION_HEADER] == {
        "provider": "test",
        "at_us": booked_until,
        "retries": 1,
    }


# --- through real workers -----------------------------------------------------------------


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


def test_a_rate_limit_of_5_per_second_across_two_workers_holds_within_one_call_of_burst(
    no_worker_running, start_worker
):
    # given two workers of two pool processes each, sharing a limit of 5/s
    workers = start_workers_limited_to(start_worker, f"{RATE}/s", count=2)
    key = uuid.uuid4().hex
    # when twenty tasks that call the provider are published at once
    published = [call_rate_limited_provider.delay(key=key).id for _ in range(20)]

    # then every task calls the provider (19 intervals after the first: ~4 s)
    eventually(lambda: len(calls(key)) >= len(published), timeout=30)
    # and none twice: a deferred copy is due at its slot, all of which have passed, so after a
    # second of quiet no further call can come
    time.sleep(1.0)
    made = calls(key)
    assert sorted(call["id"] for call in made) == sorted(published)
    # and in every window of one second there are at most RATE + BURST calls
    stamps = sorted(call["at_us"] / 1e6 for call in made)
    busiest = max(sum(1 for t in stamps if start <= t <= start + 1.0) for start in stamps)
    assert busiest <= RATE + BURST, stamps
    # and no deferred task called before its slot
    assert all(call["at_us"] >= call["slot"]["at_us"] for call in made if call["slot"])
    # and each task ran about twice, once to book its slot and once to call (the first, whose
    # slot was now, once): a backlog costs two runs a task, not a run per task per interval as
    # retrying until free did (that made 120 to 200 runs here). A task that misses its slot
    # (its countdown ended while the machine was too busy to run it within the slot's 200 ms)
    # books again and runs once more. A few do on a busy two-core machine (up to three of
    # twenty measured with three CPU hogs beside the test); a quarter is allowed.
    bookings = len(runs(key)) - len(published) + 1
    assert bookings <= len(published) * 5 // 4, len(runs(key))
    # and overall the calls went at 5/s: twenty take at least the (20 - BURST) / RATE seconds
    # between the starts of the first and last of twenty slots, less the few milliseconds between
    # booking the first and recording its call; and at most the booked slots' length (a missed
    # slot lengthens it by one), plus the moments between a call's grant and its record
    span = stamps[-1] - stamps[0]
    assert (len(stamps) - BURST) / RATE - 0.05 <= span <= bookings / RATE + 0.05, stamps
    # and the load was shared: both workers called
    assert {call["worker"] for call in made} == {worker.name for worker in workers}


def test_a_deferral_is_not_counted_as_a_retry(no_worker_running, start_worker, settings):
    # given a limit of one call every two seconds, and its current slot just taken by someone
    settings.JOBS_RATE_LIMITS = {"test": "30/m"}
    start_workers_limited_to(start_worker, "30/m", count=1)
    assert rate_limit_book(provider="test").wait == 0.0
    key = uuid.uuid4().hex
    # when a task that calls the provider runs
    task_id = call_rate_limited_provider.delay(key=key).id
    # then it is deferred once, to its slot, comes back carrying its reservation, and calls
    # the provider with no retry used up
    call = eventually(lambda: calls(key), timeout=15)[0]
    first, second = runs(key)
    assert first == {"id": task_id, "slot": None}
    assert second["id"] == task_id and second["slot"]["provider"] == "test"
    assert call["id"] == task_id
    assert call["retries"] == 0


def test_a_slow_limit_defers_in_steps_no_longer_than_the_broker_countdown_cap(
    no_worker_running, start_worker, settings
):
    # given a limit of one call an hour, its slot just taken, and workers whose broker
    # countdowns are capped at half a second (in production: half the visibility timeout)
    settings.JOBS_RATE_LIMITS = {"test": "1/h"}
    start_workers_limited_to(start_worker, "1/h", count=1, JOBS_MAX_BROKER_COUNTDOWN_SECONDS="0.5")
    assert rate_limit_book(provider="test").wait == 0.0
    booked_until = next_free_us()
    key = uuid.uuid4().hex
    # when a task that calls the provider runs
    task_id = call_rate_limited_provider.delay(key=key).id
    # then it comes back every half second instead of waiting an hour in a worker's hands
    # (where Redis would hand it out again once the visibility timeout passed)...
    eventually(lambda: len(runs(key)) >= 4, timeout=10)
    assert calls(key) == []
    # ...each time carrying the slot it booked on its first run, an hour on, and booking no
    # other: the provider's schedule moved by one interval, once
    first, *later = runs(key)[:4]
    assert {run["id"] for run in [first, *later]} == {task_id}
    assert {run["slot"]["at_us"] for run in later} == {booked_until}
    assert next_free_us() == booked_until + 3600 * 1_000_000


def test_a_poison_message_behind_the_limit_is_dead_lettered_though_deferred_in_between(
    no_worker_running, start_worker, settings
):
    from jobs.models import DeadLetter
    from tests.worker_tasks.ratelimit import kill_own_worker_behind_the_limit

    # given a busy provider: slots of 250 ms, and other callers booking one slot after another,
    # so a killed message, redelivered once its pool process restarted, has missed its slot and
    # is deferred to a new one before it kills again
    settings.JOBS_RATE_LIMITS = {"test": "4/s"}
    start_workers_limited_to(start_worker, "4/s", count=1)
    busy = threading.Event()

    def other_callers() -> None:
        while not busy.is_set():
            rate_limit_book(provider="test")
            time.sleep(0.25)

    threading.Thread(target=other_callers, daemon=True).start()
    key = uuid.uuid4().hex
    try:
        # when a message that kills its worker every time runs behind the limit
        kill_own_worker_behind_the_limit.delay(key=key)
        # then the deferrals in between do not reset its count: it is dead-lettered after
        # JOBS_MAX_DELIVERIES deliveries that killed their worker
        letter = eventually(
            lambda: DeadLetter.objects.filter(kwargs={"key": key}).first(), timeout=90
        )
    finally:
        busy.set()
    assert letter.exception_class == "jobs.base.PoisonMessage"
    assert len(calls(key)) == settings.JOBS_MAX_DELIVERIES
    assert len(runs(key)) > len(calls(key))  # it was deferred in between
