"""Effects that happen once per key, however often the message that asks for them arrives.

A message can arrive twice: the outbox relay re-publishes a row whose confirmation was lost, a
worker dies after the effect but before the acknowledgement, an operator re-drives by hand.
`run_once` ties the effect to a row with a unique key, written in the same transaction as the
effect: if the transaction commits, the key and the effect exist together; if it rolls back,
neither does and the next delivery tries again. Two deliveries at the same instant both try to
insert the key; the database lets one through and makes the other wait, then fail on the
unique constraint, so the second does nothing. A Redis lock alone could not promise that: it
expires, and Redis may lose it on failover.

Use it for effects that live in the database. An effect outside it (an email, a push) cannot
join a database transaction; those use a status row instead (queued -> sending -> sent) and
accept at-most-once on the rare crash between the provider's answer and the status write.
"""

from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from jobs.models import IdempotencyKey

T = TypeVar("T")
NOT_RUN = object()


def run_once(*, key: str, effect: Callable[[], T]) -> T | object:
    """Run `effect` unless an effect with this key already committed; returns its result, or
    `NOT_RUN` when this was a repeat."""
    try:
        with transaction.atomic():
            IdempotencyKey.objects.create(key=key)
            return effect()
    except IntegrityError:
        if IdempotencyKey.objects.filter(key=key).exists():
            return NOT_RUN
        raise  # an integrity error of the effect itself, not a repeat


def idempotency_keys_prune(*, older_than: timedelta | None = None) -> int:
    """Forget keys older than JOBS_IDEMPOTENCY_KEY_RETENTION_DAYS.

    A key must outlive every message that could repeat its effect: a redelivery (within the
    visibility timeout), a relay re-publish (within the outbox's retention), and a re-drive of a
    dead letter. A re-drive can come any time, and its message carries new task ids but keys
    built from the same subject (`media.upload_ready:<upload id>`): so dead letters older than
    the retention are not re-driven (jobs/deadletters.py), and nothing that could repeat an
    effect outlives its key."""
    older_than = older_than or timedelta(days=settings.JOBS_IDEMPOTENCY_KEY_RETENTION_DAYS)
    deleted, _ = IdempotencyKey.objects.filter(created_at__lt=timezone.now() - older_than).delete()
    return deleted
