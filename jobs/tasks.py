from datetime import timedelta

from celery import shared_task
from celery.schedules import crontab
from celery.signals import worker_ready
from django.conf import settings

from config.celery import app
from jobs import batches, brokers, canary, idempotency, outbox
from jobs.base import failed_for_good
from jobs.periodic import PeriodicJob, periodic_job_register


@shared_task(name="jobs.maintenance_outbox_relay", idempotent=True, expires=30)
def maintenance_outbox_relay() -> int:
    return outbox.outbox_relay()


@shared_task(name="jobs.maintenance_outbox_prune", idempotent=True)
def maintenance_outbox_prune() -> int:
    return outbox.outbox_prune()


@shared_task(name="jobs.maintenance_idempotency_keys_prune", idempotent=True)
def maintenance_idempotency_keys_prune() -> int:
    return idempotency.idempotency_keys_prune()


@shared_task(name="jobs.maintenance_broker_dead_letters_collect", idempotent=True, expires=50)
def maintenance_broker_dead_letters_collect() -> int:
    with app.connection_for_write() as connection:
        return brokers.broker_dead_letters_collect(connection)


@worker_ready.connect
def declare_the_broker_dead_letter_queue(sender, **kwargs) -> None:
    # Before any message can be returned often enough to be dead-lettered: a dead letter sent to
    # an exchange with no queue bound would be dropped.
    if brokers.broker_is_rabbitmq():
        with app.connection_for_write() as connection:
            brokers.dead_letter_queue_declare(connection)


def _count_chunk_failed(task, error, task_id, args, kwargs, einfo) -> None:
    # Only a run that failed for good (dead-lettered) counts its items failed; a run whose result
    # Celery could not store did its work, and counted it done.
    if failed_for_good(task, error):
        batches.batch_chunk_fail(chunk_id=outbox.task_kwargs(task, args, kwargs)["chunk_id"])


# The queue is the kind's handler's (jobs.batches.batch_chunk_route, first in the routes).
@shared_task(
    name=batches.CHUNK_TASK,
    idempotent=True,
    retry_policy=batches.CHUNK_RETRY,
    on_failure=_count_chunk_failed,
    soft_time_limit=batches.CHUNK_SOFT_TIME_LIMIT,
    time_limit=batches.CHUNK_TIME_LIMIT,
)
def batch_chunk_run(chunk_id: int, kind: str = "") -> None:
    # `kind` only routes the message; the chunk's row says what it is.
    batches.batch_chunk_run(chunk_id=chunk_id)


# Sent by beat to each queue (jobs/canary.py); the queue is its argument, as a worker may consume
# several.
@shared_task(name=canary.CANARY_TASK)
def canary_return(queue: str) -> None:
    canary.canary_return(queue=queue)


@shared_task(name="jobs.maintenance_batches_sweep", idempotent=True)
def maintenance_batches_sweep() -> None:
    batches.batches_sweep()


@worker_ready.connect
def relay_outbox_when_a_worker_starts(sender, **kwargs) -> None:
    # A worker starting is often a broker coming back or a deploy after an outage: publish what
    # piled up now rather than at the next beat tick.
    maintenance_outbox_relay.apply_async()


periodic_job_register(
    PeriodicJob(
        name="jobs.outbox_relay",
        task=maintenance_outbox_relay.name,
        schedule=timedelta(seconds=settings.JOBS_OUTBOX_RELAY_SECONDS),
        # A relay run still queued when the next one is due has nothing left to do that the next
        # one will not do; expiring just before the interval keeps a backlog from stacking runs.
        expires_seconds=settings.JOBS_OUTBOX_RELAY_SECONDS * 0.9,
    )
)
periodic_job_register(
    PeriodicJob(
        name="jobs.outbox_prune",
        task=maintenance_outbox_prune.name,
        # 03:17 UTC: traffic is low, and off the full hour when everyone's cron jobs start.
        schedule=crontab(minute=17, hour=3),
        # Pruning can wait a day: a run stuck behind a backlog for an hour is skipped, not late.
        expires_seconds=3600,
    )
)
periodic_job_register(
    PeriodicJob(
        name="jobs.idempotency_keys_prune",
        task=maintenance_idempotency_keys_prune.name,
        # 03:37 UTC: quiet hours, apart from the outbox prune.
        schedule=crontab(minute=37, hour=3),
        expires_seconds=3600,
    )
)
if brokers.broker_is_rabbitmq():
    periodic_job_register(
        PeriodicJob(
            name="jobs.broker_dead_letters_collect",
            task=maintenance_broker_dead_letters_collect.name,
            # A message RabbitMQ gave up on shows in the admin within a minute.
            schedule=timedelta(minutes=1),
            expires_seconds=50,
        )
    )


periodic_job_register(
    PeriodicJob(
        name="jobs.batches_sweep",
        task=maintenance_batches_sweep.name,
        # Every minute: a lost chunk runs at most a minute after its lease lapses (~2.5 minutes),
        # and a run that finds nothing is two small queries.
        schedule=timedelta(minutes=1),
        # A run still queued when the next is due would only repeat it.
        expires_seconds=54,
    )
)
