"""The beat scheduler: django-celery-beat's database schedule, plus a heartbeat on every tick."""

from django_celery_beat.schedulers import DatabaseScheduler

from jobs.heartbeats import beat_heartbeat_record


class HeartbeatDatabaseScheduler(DatabaseScheduler):
    """Records a heartbeat each time beat wakes (at least every beat_max_loop_interval seconds).

    A beat process can be up yet stuck (a hung database query, a lost lock); only a heartbeat
    written from inside the scheduling loop tells /readyz that schedules are really being sent.
    """

    def tick(self, *args, **kwargs) -> float:
        seconds_until_next_tick = super().tick(*args, **kwargs)
        beat_heartbeat_record()
        return seconds_until_next_tick
