"""What differs between the two brokers the platform runs on: Redis (the default) and RabbitMQ.

On RabbitMQ every work queue is a durable quorum queue, replicated and written to disk, so a
broker restart loses no message, and the broker itself gives a dead consumer's messages back as
soon as its connection drops (Redis needs jobs/recovery.py for that). The queues carry:

- a delivery limit: a message returned more than BROKER_DELIVERY_LIMIT times without being
  acknowledged is moved by the broker to DEAD_LETTER_QUEUE. The platform dead-letters a poison
  message earlier (JOBS_MAX_DELIVERIES, jobs/base.py) with its arguments and error in the
  database; the broker's limit is the backstop for when the platform cannot count (its Redis is
  down) or the message never reaches a task (it cannot be decoded). `broker_dead_letters_collect`
  turns what lands there into the same dead-letter rows, so a person sees and re-drives it.
- a topic exchange: Celery's native delayed delivery (countdowns and retries wait in the
  broker, in its `celery_delayed_*` queues, not unacknowledged in a worker) needs one.

Publisher confirms are on (settings.CELERY_BROKER_TRANSPORT_OPTIONS), so a publish that returned
was stored by the broker.
"""

import json
import logging
from datetime import datetime, timedelta
from typing import Any

from celery import Celery
from django.conf import settings
from kombu import Connection, Exchange, Queue

logger = logging.getLogger(__name__)

RABBITMQ_SCHEMES = frozenset({"amqp", "amqps", "pyamqp"})

WORK_EXCHANGE = Exchange("jobs", type="topic", durable=True)
DEAD_LETTER_EXCHANGE = Exchange("jobs.dead_letters", type="fanout", durable=True)
DEAD_LETTER_QUEUE = Queue(
    "jobs.dead_letters",
    DEAD_LETTER_EXCHANGE,
    routing_key="",
    queue_arguments={"x-queue-type": "quorum"},
)
# Deliveries the broker allows a message before dead-lettering it. Fixed rather than derived from
# JOBS_MAX_DELIVERIES: a quorum queue's arguments cannot change once it exists, and a worker that
# declared it with other arguments would be refused. The platform, which records why, must act
# first, with a margin for deliveries of a prefetched message that a dying worker never ran (both
# count those): a system check keeps JOBS_MAX_DELIVERIES at least that far below.
BROKER_DELIVERY_LIMIT = 6
BROKER_DELIVERY_LIMIT_MARGIN = 2
# Dead letters one collection moves; more wait for the next run (every minute).
COLLECT_BATCH = 500


def broker_is_rabbitmq(url: str | None = None) -> bool:
    url = url or settings.CELERY_BROKER_URL
    return url.split("://", 1)[0].split("+", 1)[0] in RABBITMQ_SCHEMES


def work_queues() -> list[Queue]:
    """The queues of settings.JOB_QUEUES, declared by every worker and publisher."""
    if not broker_is_rabbitmq():
        return [Queue(name, routing_key=name) for name in settings.JOB_QUEUES]
    return [
        Queue(
            name,
            WORK_EXCHANGE,
            routing_key=name,
            durable=True,
            queue_arguments={
                "x-queue-type": "quorum",
                "x-delivery-limit": BROKER_DELIVERY_LIMIT,
                "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE.name,
                # At-least-once dead-lettering: the broker keeps the message until the dead
                # letter queue confirmed it, so a dead letter is never dropped on the way.
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",  # required by at-least-once
            },
        )
        for name in settings.JOB_QUEUES
    ]


class PlatformCelery(Celery):
    """Celery, with delays under a second working on RabbitMQ.

    With quorum queues Celery routes every countdown through RabbitMQ's delay queues, which count
    whole seconds, and a countdown under one second fails to publish (kombu's
    `calculate_routing_key` refuses 0). The platform's own short waits (a rate-limit slot 50 ms
    away, a quick retry) would fail with it. Such a message goes straight to its queue with its
    ETA, and the worker holds it for that fraction of a second, as it does on Redis.
    """

    def send_task(self, name, args=None, kwargs=None, countdown=None, eta=None, **options):
        if broker_is_rabbitmq(self.conf.broker_url):
            due = self.now() + timedelta(seconds=countdown) if countdown else eta
            if isinstance(due, datetime) and timedelta(0) < due - self.now() < timedelta(seconds=1):
                options["headers"] = {**(options.get("headers") or {}), "eta": due.isoformat()}
                countdown = eta = None
        return super().send_task(name, args, kwargs, countdown=countdown, eta=eta, **options)


def dead_letter_queue_declare(connection: Connection) -> None:
    """Declare where the work queues' dead letters go; a fanout exchange with no queue bound
    would drop them."""
    DEAD_LETTER_QUEUE.bind(connection.default_channel).declare()


class BrokerDeadLettered(Exception):
    """RabbitMQ stopped delivering the message: returned unacknowledged too many times."""


def broker_dead_letters_collect(connection: Connection, *, limit: int = COLLECT_BATCH) -> int:
    """Move messages RabbitMQ dead-lettered into the dead-letter store; returns how many.

    Each message is acknowledged only after its row is committed: a crash in between records it
    again, into the same row (dead letters are keyed by task id).
    """
    from jobs.deadletters import dead_letter_record  # it imports the outbox, which imports us

    dead_letter_queue_declare(connection)
    queue = DEAD_LETTER_QUEUE.bind(connection.default_channel)
    collected = 0
    while collected < limit:
        message = queue.get(no_ack=False, accept=["json"])
        if message is None:
            break
        headers = message.headers or {}
        args, kwargs = _call_arguments(message.body)
        death = (headers.get("x-death") or [{}])[0]
        dead_letter_record(
            task_name=headers.get("task", "(unknown)"),
            task_id=headers.get("id") or message.properties.get("correlation_id") or "",
            args=args,
            kwargs=kwargs,
            queue=death.get("queue", ""),
            error=BrokerDeadLettered(
                f"RabbitMQ dead-lettered it ({death.get('reason', 'unknown reason')}) after "
                f"{headers.get('x-delivery-count', '?')} deliveries that were never acknowledged"
            ),
            attempts=int(headers.get("x-delivery-count") or 0),
        )
        message.ack()
        collected += 1
    return collected


def _call_arguments(body: Any) -> tuple[list, dict]:
    # Celery's message protocol 2: [args, kwargs, embed]. A body that is not what the platform
    # publishes is kept, as text, for the person who looks at it.
    if isinstance(body, (bytes, str)):
        try:
            body = json.loads(body)
        except ValueError:
            return [str(body)[:5000]], {}
    if isinstance(body, list) and len(body) == 3:
        return list(body[0]), dict(body[1])
    return [body], {}
