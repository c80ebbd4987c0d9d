from celery import shared_task
from celery.signals import worker_ready

from jobs import outbox


@shared_task(name="jobs.maintenance_outbox_relay", idempotent=True, expires=30)
def maintenance_outbox_relay() -> int:
    return outbox.outbox_relay()


@shared_task(name="jobs.maintenance_outbox_prune", idempotent=True)
def maintenance_outbox_prune() -> int:
    return outbox.outbox_prune()


@worker_ready.connect
def relay_outbox_when_a_worker_starts(sender, **kwargs) -> None:
    # A worker starting is often a broker coming back or a deploy after an outage: publish what
    # piled up now rather than at the next beat tick.
    maintenance_outbox_relay.apply_async()
