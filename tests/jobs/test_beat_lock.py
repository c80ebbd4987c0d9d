"""Only one beat sends periodic tasks; another takes over when it dies or stops.

Most beats here run with a 4 s lock instead of the 30 s default, so that a takeover after a
kill costs the test seconds rather than half a minute; the mechanism is the same.
"""

import os
import time
from datetime import timedelta

import pytest
from django.conf import settings
from django_celery_beat.models import PeriodicTask

from config.celery import app
from jobs.beat import (
    HeartbeatDatabaseScheduler,
    beat_lock_hold,
    beat_lock_holder,
    beat_lock_release,
)
from jobs.heartbeats import beat_heartbeat_age
from jobs.periodic import PeriodicJob, periodic_jobs_sync
from jobs.redis import redis_client
from tests.services import eventually
from tests.worker_tasks.periodic import periodic_probe

SHORT_LOCK_SECONDS = 4
SHORT_LOCK = {"JOBS_BEAT_LOCK_TTL_SECONDS": str(SHORT_LOCK_SECONDS)}
PROBE = periodic_probe.name


def every(seconds: int) -> PeriodicJob:
    return PeriodicJob(
        name=f"tests.every_{seconds}s",
        task=PROBE,
        schedule=timedelta(seconds=seconds),
        expires_seconds=seconds,
    )


def test_one_of_two_beats_sends_and_the_other_takes_over_when_it_is_killed(start_beat):
    # given a job due every second
    periodic_jobs_sync(jobs=[every(1)])

    # when two beats start at the same moment
    beats = [start_beat(wait=False, extra_env=SHORT_LOCK) for _ in range(2)]
    for beat in beats:
        beat.wait_ready()

    # then exactly one holds the lock; it sends the job while the other sends nothing
    holders = [beat for beat in beats if beat.holds_lock()]
    assert len(holders) == 1, [beat.log_tail() for beat in beats]
    holder, waiting = holders[0], next(beat for beat in beats if beat is not holders[0])
    assert waiting.is_waiting()
    eventually(lambda: holder.sent(PROBE) >= 3, timeout=10)
    assert waiting.sent(PROBE) == 0

    # when the holder is killed, leaving its lock behind
    holder.kill()
    killed_at = time.monotonic()

    # then, until its lock expires, no beat schedules and none pretends to: no fresh heartbeat
    time.sleep(1)
    assert beat_heartbeat_age() >= 1
    # and the other takes over within one lock TTL (plus its one-second retry) and sends
    eventually(lambda: waiting.sent(PROBE) >= 1, timeout=SHORT_LOCK_SECONDS + 5)
    took_over_after = time.monotonic() - killed_at
    assert took_over_after < SHORT_LOCK_SECONDS + 3, took_over_after
    assert waiting.holds_lock()


def test_a_beat_that_stops_cleanly_hands_over_at_once(start_beat):
    # given a scheduling beat with the production lock TTL, and a second one waiting
    periodic_jobs_sync(jobs=[every(1)])
    holder = start_beat()
    waiting = start_beat()
    assert holder.holds_lock() and waiting.is_waiting()

    # when the holder stops as an orchestrator stops it (SIGTERM)
    holder.stop()
    stopped_at = time.monotonic()

    # then it released the lock: the other sends well before the lock could have expired
    eventually(lambda: waiting.sent(PROBE) >= 1, timeout=10)
    took_over_after = time.monotonic() - stopped_at
    assert took_over_after < settings.JOBS_BEAT_LOCK_TTL_SECONDS / 3, took_over_after


def test_the_beat_taking_over_continues_the_schedule_instead_of_repeating_it(start_beat):
    # given a job due every 10 s, longer than a takeover takes, and two beats
    periodic_jobs_sync(jobs=[every(10)])
    row = PeriodicTask.objects.get(name="code:tests.every_10s")
    holder = start_beat(extra_env=SHORT_LOCK)
    waiting = start_beat(extra_env=SHORT_LOCK)

    # when the holder has run the job once, and is killed right after
    first = eventually(
        lambda: PeriodicTask.objects.filter(pk=row.pk, total_run_count=1).first(), timeout=20
    )
    holder.kill()

    # then the other takes over within seconds, yet runs the job only when it is due again,
    # 10 s after the first run, and counts on from it
    eventually(waiting.holds_lock, timeout=SHORT_LOCK_SECONDS + 3)
    second = eventually(
        lambda: (
            PeriodicTask.objects.filter(pk=row.pk).exclude(last_run_at=first.last_run_at).first()
        ),
        timeout=20,
    )
    gap = (second.last_run_at - first.last_run_at).total_seconds()
    assert gap > 9, f"the job ran again {gap:.1f}s after its last run, at the takeover"
    assert second.total_run_count == 2
    assert waiting.sent(PROBE) == 1


def test_a_beat_never_renews_or_releases_a_lock_it_does_not_hold():
    # given a lock held by one beat, a second away from expiring
    assert beat_lock_hold(token="host:1:first") == "host:1:first"
    redis_client().pexpire(settings.JOBS_BEAT_LOCK_KEY, 1000)

    # when another beat tries to take it, then to release it
    seen_by_second = beat_lock_hold(token="host:2:second")
    beat_lock_release(token="host:2:second")

    # then the first still holds it, not a moment longer than before, and only its own release
    # frees it for the second
    assert seen_by_second == "host:1:first"
    assert beat_lock_holder() == "host:1:first"
    assert 0 < redis_client().pttl(settings.JOBS_BEAT_LOCK_KEY) <= 1000
    beat_lock_release(token="host:1:first")
    assert beat_lock_holder() is None
    assert beat_lock_hold(token="host:2:second") == "host:2:second"


def test_a_beat_told_to_stop_never_takes_the_lock_again(transactional_db):
    # given a beat's scheduler holding the lock and sending a job
    periodic_jobs_sync(jobs=[every(1)])
    scheduler = HeartbeatDatabaseScheduler(app=app)
    scheduler.tick()
    assert f":{os.getpid()}:" in beat_lock_holder()
    # when it is closed, as Celery's SIGTERM handler closes it before raising SystemExit, and the
    # loop goes on anyway (that SystemExit, raised inside a publish, came out as an I/O error)
    scheduler.close()
    assert beat_lock_holder() is None
    # then its next tick ends the loop instead of taking the lock again
    with pytest.raises(SystemExit):
        scheduler.tick()
    assert beat_lock_holder() is None
