"""What differs between the two brokers the platform runs on: Redis (the default) and RabbitMQ.

On RabbitMQ every work queue is a durable quorum queue, replicated and written to disk, so a
broker restart loses no message, and the broker itself gives a dead consumer's messages back as
soon as its connection drops (Redis needs jobs/recovery.py for that). The queues carry:

- a delivery limit: a message returned more than BROKER_DELIVERY_LIMIT times without being
  acknowledged is moved by the broker to DEAD_LETTER_QUEUE. The platform dead-letters a poison
  message earlier (JOBS_MAX_DELIVERIES, jobs/base.py) with its arguments and error in the
  database; the broker's limit is the backstop for when the platform cannot count (its Redis is
  down) or the message never reaches a task (it cannot be decoded, and a worker rejects it).
  `broker_dead_letters_collect` turns those into the same dead-letter rows, so a person sees
  and re-drives them; a message dead-lettered because it expired (`expires`) is dropped.
- a topic exchange: Celery's native delayed delivery (countdowns and retries wait in the
  broker, in its `celery_delayed_*` queues, not unacknowledged in a worker) needs one.

Publisher confirms are on (settings.CELERY_BROKER_TRANSPORT_OPTIONS), so a publish that returned
was stored by the broker.
"""

import hashlib
import json
import logging
import logging.config
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any

from celery import Celery
from celery.utils.time import maybe_make_aware
from dateutil.parser import isoparse
from django.conf import settings
from kombu import Connection, Exchange, Queue
from kombu.exceptions import OperationalError
from kombu.message import Message
from kombu.transport.native_delayed_delivery import (
    bind_queue_to_native_delayed_delivery_exchange,
    declare_native_delayed_delivery_exchanges_and_queues,
)

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


def messages_waiting(queue: str) -> int:
    """How many messages wait in `queue` on the broker, not counting those workers hold; 0 for
    a queue the broker does not have (never declared, or on Redis empty: its list does not
    exist). Raises if the broker cannot be reached or refuses (access, a read-only Redis)."""
    return messages_waiting_in([queue])[queue]


def _not_found(error: Exception) -> bool:
    """A passive declare's answer that the queue does not exist: AMQP's 404, which kombu's
    virtual transports (Redis) give as a channel error with the same code and text."""
    return str(getattr(error, "code", "")) == "404" or "NOT_FOUND" in str(error)


def messages_waiting_in(queues: list[str]) -> dict[str, int]:
    """messages_waiting for each queue, over one connection."""
    from config.celery import app

    waiting = {}
    with app.connection_for_read() as connection:
        for queue in queues:
            channel = connection.channel()
            try:
                waiting[queue] = channel.queue_declare(queue=queue, passive=True).message_count
            except connection.channel_errors as error:
                if not _not_found(error):
                    raise
                waiting[queue] = 0  # a passive declare of a missing queue closes its channel
            else:
                channel.close()
    return waiting


def queue_drained(queue: str) -> bool:
    """Whether `queue` holds no waiting message: then a job still waiting for its message past
    its deadline has lost it. False when the broker cannot say (down, refusing), so a sweep that
    asks acts only on a sure answer."""
    from config.celery import app

    with app.connection_for_read() as connection:
        broker_errors = (
            OperationalError,
            OSError,
            *connection.connection_errors,
            *connection.channel_errors,
        )
    try:
        return messages_waiting(queue) == 0
    except broker_errors as error:
        logger.warning("the broker could not say what waits in %s: %r", queue, error)
        return False


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
    """Celery, with what the platform needs of publishing on RabbitMQ:

    - Delays under a second work. With quorum queues Celery routes every delay through RabbitMQ's
      delay queues, which count whole seconds, and a delay under one second fails to publish
      (kombu's `calculate_routing_key` refuses 0). The platform's own short waits (a rate-limit
      slot 50 ms away, a quick retry) would fail with it. Such a message goes straight to its
      queue with its ETA, and the worker holds it for that fraction of a second, as on Redis.
    - Delays work before any worker ran. Only a starting worker declares the delay exchanges;
      a web process publishing a delay on a fresh broker would get "no exchange
      'celery_delayed_27'". Each process declares them (and binds the work queues) before its
      first delayed publish.
    - A publish waits for the broker's confirmation no longer than a Redis publish waits for its
      reply (the broker transport's `socket_timeout`): with confirms on, a broker that blocks
      publishers (a memory or disk alarm) or hangs would otherwise hold a worker's retry, a
      canvas step or beat for as long as it lasts. A publish that times out fails as on Redis,
      and a failed retry waits in the outbox.

    And one thing of logging: with LOG_FORMAT=json, workers and beat start quiet, as with
    `celery --quiet`, and with logging set up already. Their start-up banners and warnings are
    printed to stdout and stderr, past logging, and would be the only lines that are not JSON.
    """

    _delay_topology_declared = False

    @cached_property
    def Worker(self):
        return _quiet_when_logging_json(super().Worker)

    @cached_property
    def Beat(self):
        return _quiet_when_logging_json(super().Beat)

    def send_task(self, name, args=None, kwargs=None, countdown=None, eta=None, **options):
        if broker_is_rabbitmq(self.conf.broker_url):
            # A caller's own publish timeout (the outbox's) bounds the confirmation too.
            reply_timeout = self.conf.broker_transport_options["socket_timeout"]
            options.setdefault("confirm_timeout", options.get("timeout") or reply_timeout)
            delay = _seconds_until(self, countdown=countdown, eta=eta)
            if delay is not None and 0 < delay < 1:
                due = self.now() + timedelta(seconds=delay)
                options["headers"] = {**(options.get("headers") or {}), "eta": due.isoformat()}
                countdown = eta = None
            elif delay is not None and delay >= 1:
                # One figure for Celery to route by: given an ETA, it would compute the delay
                # again, a moment later, and could round it down to zero.
                countdown, eta = delay, None
                self._delay_topology_declare(options.get("connection"))
        return super().send_task(name, args, kwargs, countdown=countdown, eta=eta, **options)

    def _delay_topology_declare(self, connection: Connection | None) -> None:
        if PlatformCelery._delay_topology_declared:
            return
        if connection is None:
            with self.connection_for_write() as own:
                self._delay_topology_declare(own)
            return
        declare_native_delayed_delivery_exchanges_and_queues(connection, "quorum")
        for queue in self.amqp.queues.values():
            bind_queue_to_native_delayed_delivery_exchange(connection, queue)
        PlatformCelery._delay_topology_declared = True


def _quiet_when_logging_json(program: type) -> Callable[..., Any]:
    def started(*args: Any, **options: Any) -> Any:
        if settings.LOG_FORMAT == "json":
            options["quiet"] = True
            # What Celery warns of before it sets logging up (running as root) is JSON too.
            logging.captureWarnings(True)
            logging.config.dictConfig(settings.LOGGING)
        return program(*args, **options)

    return started


def _seconds_until(
    app: Celery, *, countdown: float | None, eta: datetime | str | None
) -> float | None:
    if countdown is not None:
        return countdown
    if eta is None:
        return None
    # As Celery reads an ETA: an ISO string or a datetime, a naive one being UTC.
    due = maybe_make_aware(isoparse(eta) if isinstance(eta, str) else eta)
    return (due - app.now()).total_seconds()


def dead_letter_queue_declare(connection: Connection) -> None:
    """Declare where the work queues' dead letters go; a fanout exchange with no queue bound
    would drop them."""
    DEAD_LETTER_QUEUE.bind(connection.default_channel).declare()


class BrokerDeadLettered(Exception):
    """RabbitMQ stopped delivering the message: returned unacknowledged too many times, or
    rejected as one no worker can read."""


# Why RabbitMQ dead-letters a message, and whether a person must hear of it. A message past its
# `expires` (every periodic job has one) was meant to be dropped: recording it would fill the
# dead letters with stale relay runs after any pause of the maintenance workers, and re-driving
# one would run a periodic job late.
_DEATHS_FOR_A_PERSON = frozenset({"delivery_limit", "rejected"})


def broker_dead_letters_collect(connection: Connection, *, limit: int = COLLECT_BATCH) -> int:
    """Move messages RabbitMQ dead-lettered into the dead-letter store; returns how many.

    Each message is acknowledged only after its row is committed: a crash in between records it
    again, into the same row (dead letters are keyed by task id).
    """
    dead_letter_queue_declare(connection)
    queue = DEAD_LETTER_QUEUE.bind(connection.default_channel)
    collected = 0
    while collected < limit and (message := queue.get(no_ack=False)) is not None:
        death = ((message.headers or {}).get("x-death") or [{}])[0]
        if death.get("reason") in _DEATHS_FOR_A_PERSON:
            _dead_letter_record_from(message, death)
        else:
            logger.info("dropped a message RabbitMQ dead-lettered as %s", death.get("reason"))
        message.ack()
        collected += 1
    return collected


def _dead_letter_record_from(message: Message, death: dict) -> None:
    from jobs.deadletters import dead_letter_record  # it imports the outbox, which imports us

    headers = message.headers or {}
    body = message.body if isinstance(message.body, bytes) else str(message.body).encode()
    args, kwargs = _call_arguments(body)
    # A message the platform did not publish may carry no task id; its own message id, or its
    # content, keeps two such messages apart.
    task_id = headers.get("id") or (
        "broker:"
        + (
            message.properties.get("message_id")
            or hashlib.sha256(body + repr(death).encode()).hexdigest()[:32]
        )
    )
    dead_letter_record(
        task_name=str(headers.get("task") or "(not a task message)"),
        task_id=str(task_id),
        args=args,
        kwargs=kwargs,
        queue=death.get("queue", ""),
        error=BrokerDeadLettered(
            f"RabbitMQ dead-lettered it ({death.get('reason')}) after "
            f"{headers.get('x-delivery-count', '?')} deliveries that were never acknowledged"
        ),
        attempts=int(headers.get("x-delivery-count") or 0),
    )


def _call_arguments(body: bytes) -> tuple[list, dict]:
    # Celery's message protocol 2: [args, kwargs, embed]. Anything else is kept, as text, for
    # the person who looks at it.
    try:
        decoded = json.loads(body)
    except ValueError:
        decoded = None
    if (
        isinstance(decoded, list)
        and len(decoded) == 3
        and isinstance(decoded[0], list)
        and isinstance(decoded[1], dict)
    ):
        return decoded[0], decoded[1]
    return [body.decode(errors="replace")[:5000]], {}
