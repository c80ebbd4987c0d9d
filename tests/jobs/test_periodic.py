import os
import subprocess
import sys
from datetime import timedelta

import pytest
from celery.schedules import crontab
from django.conf import settings
from django_celery_beat.models import IntervalSchedule, PeriodicTask, PeriodicTasks

from jobs.periodic import PeriodicJob, PeriodicSyncReport, periodic_job_register, periodic_jobs_sync
from tests.services import BASE_DIR, database_url_for_subprocesses, eventually
from tests.worker_tasks.periodic import periodic_probe_runs

EVERY_TEN_SECONDS = PeriodicJob(
    name="tests.every_ten_seconds",
    task="tests.periodic_probe",
    schedule=timedelta(seconds=10),
    expires_seconds=9,
    queue="maintenance",
    kwargs={"tenant_id": 7},
)
NIGHTLY = PeriodicJob(
    name="tests.nightly",
    task="tests.periodic_probe",
    schedule=crontab(minute=17, hour=3),
    expires_seconds=3600,
)


@pytest.mark.django_db
def test_sync_writes_each_job_with_its_schedule_expiry_and_queue():
    # given two jobs declared in code, one on an interval and one on a crontab
    # when they are synced
    report = periodic_jobs_sync(jobs=[EVERY_TEN_SECONDS, NIGHTLY])

    # then beat's schedule holds both, enabled, each with its expiry, queue and arguments
    assert report == PeriodicSyncReport(created=2)
    every_ten = PeriodicTask.objects.get(name="code:tests.every_ten_seconds")
    assert (every_ten.interval.every, every_ten.interval.period) == (10, IntervalSchedule.SECONDS)
    assert every_ten.crontab is None
    assert every_ten.task == "tests.periodic_probe"
    assert every_ten.expire_seconds == 9
    assert every_ten.queue == "maintenance"
    assert every_ten.kwargs == '{"tenant_id": 7}'
    assert every_ten.enabled
    nightly = PeriodicTask.objects.get(name="code:tests.nightly")
    assert (nightly.crontab.minute, nightly.crontab.hour, str(nightly.crontab.timezone)) == (
        "17",
        "3",
        "UTC",
    )
    assert nightly.interval is None
    assert nightly.expire_seconds == 3600
    assert nightly.queue is None  # routed by task name, like any other message


@pytest.mark.django_db
def test_a_second_sync_changes_nothing_and_does_not_make_beat_reload():
    # given jobs that were synced once
    periodic_jobs_sync(jobs=[EVERY_TEN_SECONDS, NIGHTLY])
    last_change = PeriodicTasks.last_change()
    rows = list(PeriodicTask.objects.order_by("pk").values())

    # when the sync runs again (every deploy runs it)
    report = periodic_jobs_sync(jobs=[EVERY_TEN_SECONDS, NIGHTLY])

    # then it reports everything unchanged and wrote nothing, not even the change marker
    assert report == PeriodicSyncReport(unchanged=2)
    assert list(PeriodicTask.objects.order_by("pk").values()) == rows
    assert PeriodicTasks.last_change() == last_change


@pytest.mark.django_db
def test_a_changed_job_updates_its_row_in_place():
    # given a synced job whose row has run before
    periodic_jobs_sync(jobs=[EVERY_TEN_SECONDS])
    row = PeriodicTask.objects.get(name="code:tests.every_ten_seconds")
    PeriodicTask.objects.filter(pk=row.pk).update(total_run_count=5)

    # when the code changes its interval, and an operator edited its queue in the admin
    PeriodicTask.objects.filter(pk=row.pk).update(queue="default")
    every_day = PeriodicJob(
        name="tests.every_ten_seconds",
        task="tests.periodic_probe",
        schedule=timedelta(days=1),
        expires_seconds=3600,
        queue="maintenance",
    )
    report = periodic_jobs_sync(jobs=[every_day])

    # then the same row now says what the code says, and keeps its history
    assert report == PeriodicSyncReport(updated=1)
    row.refresh_from_db()
    assert (row.interval.every, row.interval.period) == (1, IntervalSchedule.DAYS)
    assert (row.queue, row.expire_seconds, row.kwargs) == ("maintenance", 3600, "{}")
    assert row.total_run_count == 5


@pytest.mark.django_db
def test_a_job_removed_from_code_is_disabled_and_hand_made_rows_are_left_alone():
    # given two synced jobs, and a task an operator scheduled by hand in the admin
    periodic_jobs_sync(jobs=[EVERY_TEN_SECONDS, NIGHTLY])
    by_hand = PeriodicTask.objects.create(
        name="monthly invoices",
        task="tests.periodic_probe",
        interval=IntervalSchedule.objects.create(every=30, period=IntervalSchedule.DAYS),
    )
    rows_before = PeriodicTask.objects.count()
    by_hand_before = PeriodicTask.objects.filter(pk=by_hand.pk).values().get()

    # when the code stops declaring one of the jobs
    report = periodic_jobs_sync(jobs=[EVERY_TEN_SECONDS])

    # then its row is disabled, not deleted, and the operator's row is untouched
    assert report == PeriodicSyncReport(unchanged=1, disabled=1)
    assert not PeriodicTask.objects.get(name="code:tests.nightly").enabled
    assert PeriodicTask.objects.get(name="code:tests.every_ten_seconds").enabled
    assert PeriodicTask.objects.count() == rows_before
    assert PeriodicTask.objects.filter(pk=by_hand.pk).values().get() == by_hand_before

    # and when no job is declared at all, the sync still deletes nothing
    report = periodic_jobs_sync(jobs=[])
    assert report == PeriodicSyncReport(disabled=1)
    assert PeriodicTask.objects.count() == rows_before
    assert PeriodicTask.objects.filter(pk=by_hand.pk).values().get() == by_hand_before


@pytest.mark.parametrize("expires_seconds", [0, -5, None, float("inf")])
def test_a_job_without_an_expiry_is_refused(expires_seconds):
    # given a periodic job that would never expire
    # when it is declared
    # then it is refused at once: a backlog must never run stale work
    with pytest.raises(ValueError, match="needs an expiry"):
        PeriodicJob(
            name="tests.forever",
            task="tests.periodic_probe",
            schedule=timedelta(minutes=1),
            expires_seconds=expires_seconds,
        )


def test_a_job_name_registered_twice_is_refused():
    # given the platform's own jobs, registered when its tasks module is imported
    import jobs.tasks  # noqa: F401

    # when another module registers a job under a name already taken
    # then the registration fails instead of silently replacing the first job
    with pytest.raises(ValueError, match="registered twice"):
        periodic_job_register(
            PeriodicJob(
                name="jobs.outbox_relay",
                task="jobs.maintenance_outbox_relay",
                schedule=timedelta(minutes=1),
                expires_seconds=30,
            )
        )


@pytest.mark.django_db
def test_a_job_for_a_task_that_does_not_exist_is_refused_before_anything_is_written():
    # given a job whose task name has a typo
    typo = PeriodicJob(
        name="tests.typo",
        task="tests.periodic_prob",
        schedule=timedelta(minutes=1),
        expires_seconds=30,
    )
    # when it is synced with a valid one
    # then the sync fails, and writes neither
    with pytest.raises(ValueError, match=r"tests\.periodic_prob\b"):
        periodic_jobs_sync(jobs=[NIGHTLY, typo])
    assert not PeriodicTask.objects.filter(name__startswith="code:").exists()


def sync_command() -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", "sync_periodic_tasks"],
        cwd=BASE_DIR,
        env={**os.environ, "DATABASE_URL": database_url_for_subprocesses()},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_the_command_finds_every_apps_jobs_in_a_fresh_process(transactional_db):
    # given a database without any periodic task
    # when the deploy step runs the command in a process of its own (no tasks module imported)
    first = sync_command()

    # then the platform's own jobs are in beat's schedule, with their expiries
    relay = PeriodicTask.objects.get(name="code:jobs.outbox_relay")
    assert relay.task == "jobs.maintenance_outbox_relay"
    assert relay.interval.every == settings.JOBS_OUTBOX_RELAY_SECONDS
    assert 0 < relay.expire_seconds < settings.JOBS_OUTBOX_RELAY_SECONDS
    prune = PeriodicTask.objects.get(name="code:jobs.outbox_prune")
    assert (prune.crontab.minute, prune.crontab.hour, prune.expire_seconds) == ("17", "3", 3600)
    created = PeriodicTask.objects.filter(name__startswith="code:").count()
    assert f"{created} created, 0 updated, 0 unchanged, 0 disabled" in first

    # and running it again (the next deploy) changes nothing
    assert f"0 created, 0 updated, {created} unchanged, 0 disabled" in sync_command()


def test_a_synced_job_is_sent_by_beat_and_runs_on_its_queue_with_its_arguments(
    celery_worker, start_beat
):
    # given a job declared in code, due every second on the maintenance queue, synced
    every_second = PeriodicJob(
        name="tests.every_second",
        task="tests.periodic_probe",
        schedule=timedelta(seconds=1),
        expires_seconds=5,
        queue="maintenance",
        kwargs={"tenant_id": 7},
    )
    periodic_jobs_sync(jobs=[every_second])

    # when beat runs beside a worker
    start_beat()

    # then the worker runs it, delivered on its queue, with its arguments and an expiry
    run = eventually(periodic_probe_runs, timeout=20)[0]
    assert run["periodic_task_name"] == "code:tests.every_second"
    assert run["queue"] == "maintenance"
    assert run["kwargs"] == {"tenant_id": 7}
    assert run["expires"] is not None
