"""The base class of every task in the project (set app-wide as Celery's `task_cls`).

A task declares what it is; this class turns that into behaviour:

    @shared_task(name="accounts.send_email", idempotent=True, retry_policy=SMTP_TRANSIENT)

- `idempotent=True`: the task may safely run twice, so its message is acknowledged only after
  it ran (late ack) and a worker that dies mid-task hands the message back. A message that
  kills its worker every time is dead-lettered after JOBS_MAX_DELIVERIES deliveries; only
  deliveries that follow one that was never acknowledged are counted, so a task's first run
  costs no round trip for it.
- `retry_policy`: which errors are transient, how many retries, what backoff. Transient errors
  are retried with jittered exponential backoff; anything else, or the last failed retry,
  ends in the dead-letter store.
- publishing waits for the current transaction to commit, so a worker never looks for a row
  that is not there yet and a rolled-back request sends nothing.
- a message with an ordering key (`jobs.outbox.enqueue(..., ordering_key=...)`) marks its
  outbox row finished when it succeeds, which publishes the next task of its key; one that
  fails for good holds its key up until its dead letter is re-driven or discarded; one whose
  row is already finished (redelivered after its worker died) is acknowledged unrun.
- one log line per outcome: task, id, attempt, duration, outcome, exception class; and the
  same outcome counted for /metrics (jobs/counters.py), with the time the message waited in
  its queue.
"""

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any, TypeVar

import redis
from celery import signals
from celery.contrib.django.task import DjangoTask
from celery.exceptions import Ignore, Reject, Retry, TimeLimitExceeded
from celery.result import AsyncResult
from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, transaction
from kombu.utils.uuid import uuid

from jobs.counters import queue_wait_of, task_run_count
from jobs.deadletters import dead_letter_record
from jobs.outbox import (
    ORDERED_ROW_HEADER,
    ORDERING_KEY_HEADER,
    enqueue_retry,
    ordered_message_finished,
    ordered_run_start,
)
from jobs.redis import redis_client
from jobs.retry import DEFAULT_BACKOFF, NEVER_RETRY, RetryPolicy, TransientError

# The database failing a task for a while: a connection cut or refused (a restart, a failover)
# and, as psycopg and SQLite report them too, a deadlock, a lock or statement timeout.
DATABASE_UNAVAILABLE = (OperationalError, InterfaceError)

logger = logging.getLogger("jobs.task")
T = TypeVar("T")

# Set on a message re-published by a deferral (jobs.ratelimit) of a delivery that was counted:
# the deferred message is new to the broker, not redelivered, yet continues that count.
DELIVERIES_COUNTED_HEADER = "jobs_deliveries_counted"


class PoisonMessage(Exception):
    """The message's task killed its worker on every delivery; it is not delivered again."""


class PlatformTask(DjangoTask):
    idempotent: bool = False
    retry_policy: RetryPolicy = NEVER_RETRY
    # Called as a method, with the task's arguments, in a re-drive's transaction before the task
    # is enqueued again (jobs/deadletters.py): a task whose row records that it failed for good
    # reopens it there, or refuses the re-drive with DeadLetterNotActionable.
    before_redrive: Callable[..., None] | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Late ack is safe only for idempotent tasks: the message comes back after a crash
        # and runs again. For the others a crash loses the run rather than repeating an
        # effect (an email twice, a charge twice), which is the lesser harm.
        cls.acks_late = cls.idempotent
        cls.reject_on_worker_lost = cls.idempotent

    # --- publishing ---------------------------------------------------------------------

    def apply_async(self, args=None, kwargs=None, task_id=None, **options) -> AsyncResult:
        """Inside a transaction, publish once it commits (and not at all on rollback).

        Not durable: if the broker is down at commit, the message is lost. Work that must not
        be lost goes through `jobs.outbox.enqueue`.
        """
        if not transaction.get_connection().in_atomic_block:
            return super().apply_async(args, kwargs, task_id=task_id, **options)
        task_id = task_id or uuid()
        transaction.on_commit(
            lambda: super(PlatformTask, self).apply_async(args, kwargs, task_id=task_id, **options)
        )
        return self.AsyncResult(task_id)

    # --- running ------------------------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request
        if request.called_directly:  # a plain function call, e.g. from a shell
            return super().__call__(*args, **kwargs)
        started = time.monotonic()
        attempt = request.retries + 1
        # Only an ordered message has headers of the platform's own: for the others this costs
        # a dictionary lookup, no round trip.
        ordered_message_id = (request.headers or {}).get(ORDERED_ROW_HEADER)
        ordered_run = ordered_message_id and self._ordering_step(
            lambda: ordered_run_start(
                message_id=ordered_message_id, ordering_key=request.headers[ORDERING_KEY_HEADER]
            ),
            started,
            attempt,
        )
        if ordered_run and ordered_run.finished:
            # Its worker died after marking it finished, before the acknowledgement, or the
            # relay published it twice: the next task of its key may be running already.
            self._log_outcome("skip", started, attempt)
            return None
        delivery_key = f"jobs:deliveries:{request.id}:{request.retries}"
        counted = self.idempotent and deliveries_counted(request)
        if counted and self._deliveries_exceeded(delivery_key):
            error = PoisonMessage(
                f"killed its worker {settings.JOBS_MAX_DELIVERIES} times; not delivered again"
            )
            self._dead_letter(args, kwargs, error, attempt)
            self._log_outcome("failure", started, attempt, error)
            request.failed_for_good = True
            raise error  # acknowledged as a failure: the message is not requeued again
        try:
            result = super().__call__(*args, **kwargs)
        except (Retry, Ignore, Reject) as control:
            # The task steered its own fate (self.retry(), a deferral): not a failure, and this
            # delivery ended without killing its worker, so it does not count toward a poison
            # message. A deferral comes back with the same id and retry count, hence the same
            # key: forgetting the count instead would let a message that kills its worker every
            # other delivery, deferred in between under a backlog, loop forever.
            self._log_outcome(type(control).__name__.lower(), started, attempt)
            if counted:
                self._delivery_ended(delivery_key)
            raise
        except Exception as error:
            if counted:
                self._forget_deliveries(delivery_key)
            policy = self.retry_policy
            verdict = policy.classified(error)
            if self.idempotent and isinstance(error, DATABASE_UNAVAILABLE):
                # The database went away under the run (a restart, a failover) or refused it for
                # a while (a deadlock, a lock timeout): nothing about the task failed, and
                # running it again is safe, whatever its own policy. A dead letter could not
                # even be written during an outage: the message would be acknowledged, lost.
                # Counted with the task's own retries, so at least the default number is left.
                policy = replace(
                    DEFAULT_BACKOFF,
                    max_retries=max(policy.retries_allowed, DEFAULT_BACKOFF.retries_allowed),
                )
                verdict = TransientError(f"{type(error).__name__}: {error}")
            if isinstance(verdict, TransientError) and request.retries < policy.retries_allowed:
                wait = policy.wait_seconds(
                    retries_so_far=request.retries, retry_after=verdict.retry_after
                )
                self._log_outcome("retry", started, attempt, error, wait=wait)
                try:
                    raise self.retry(
                        exc=error, countdown=wait, max_retries=policy.retries_allowed
                    ) from error
                except Reject:
                    # Celery could not publish the retry: the broker failed too (often the same
                    # Redis blip that made the error transient). The retry waits in the outbox,
                    # under this task's id and retry count, and the relay publishes it once the
                    # broker is back. A canvas step's retry loses its canvas this way; the job's
                    # sweep resumes what the canvas would have run.
                    enqueue_retry(
                        self,
                        task_id=request.id,
                        retries=request.retries + 1,
                        delay=timedelta(seconds=wait),
                        args=args,
                        kwargs=kwargs,
                        ordered_message_id=ordered_message_id,
                    )
                    raise Ignore() from error
            self._dead_letter(args, kwargs, error, attempt)
            self._log_outcome("failure", started, attempt, error)
            request.failed_for_good = True
            raise
        if counted:
            self._forget_deliveries(delivery_key)
        if ordered_run:
            self._ordering_step(
                lambda: ordered_message_finished(
                    message_id=ordered_message_id,
                    ordering_key=request.headers[ORDERING_KEY_HEADER],
                    successor=ordered_run.successor,
                ),
                started,
                attempt,
            )
        self._log_outcome("success", started, attempt)
        return result

    def _ordering_step(self, step: Callable[[], T], started: float, attempt: int) -> T:
        """Run a step of an ordered message's bookkeeping: is its row finished, mark it finished.
        The database failing there is not the task failing: the task runs again later, in its
        place, through the broker, which needs no database. Failing the run instead would leave
        the key waiting behind a row that never finishes, without even a dead letter (that needs
        the database too) for a person to act on."""
        try:
            return step()
        except DatabaseError as error:
            wait = DEFAULT_BACKOFF.wait_seconds(retries_so_far=self.request.retries)
            self._log_outcome("retry", started, attempt, error, wait=wait)
            # Not bounded by the task's retry policy: the task did not fail, and giving up would
            # hold its key up for good. The backoff's cap spaces the attempts during an outage.
            raise self.retry(exc=error, countdown=wait, max_retries=None) from error

    def _deliveries_exceeded(self, key: str) -> bool:
        """Count this delivery of this attempt. A message redelivered because its worker died
        arrives with the same id and retry count, so the count says how often it killed one;
        the first delivery, never counted, is the one more."""
        try:
            pipeline = redis_client().pipeline()
            pipeline.incr(key)
            pipeline.expire(key, settings.CELERY_VISIBILITY_TIMEOUT * 2)
            redeliveries, _ = pipeline.execute()
        except redis.RedisError:
            return False  # cannot count: run it; the visibility timeout still bounds the loop
        return 1 + redeliveries > settings.JOBS_MAX_DELIVERIES

    @staticmethod
    def _forget_deliveries(key: str) -> None:
        with contextlib.suppress(redis.RedisError):  # the key expires by itself anyway
            redis_client().delete(key)

    @staticmethod
    def _delivery_ended(key: str) -> None:
        with contextlib.suppress(redis.RedisError):  # uncounted: at worst one delivery early
            redis_client().decr(key)

    def _dead_letter(self, args: tuple, kwargs: dict, error: BaseException, attempt: int) -> None:
        delivery_info = self.request.delivery_info or {}
        dead_letter_record(
            task_name=self.name,
            task_id=self.request.id,
            args=args,
            kwargs=kwargs,
            queue=delivery_info.get("routing_key") or "",
            error=error,
            attempts=attempt,
        )

    def _log_outcome(
        self,
        outcome: str,
        started: float,
        attempt: int,
        error: BaseException | None = None,
        wait: float | None = None,
    ) -> None:
        # One logfmt line per outcome: greppable by eye, parseable by any log pipeline.
        line = (
            f"task={self.name} id={self.request.id} attempt={attempt} "
            f"duration_ms={(time.monotonic() - started) * 1000:.1f} outcome={outcome}"
        )
        if error is not None:
            line += f" exception={type(error).__name__}"
        if wait is not None:
            line += f" retry_in_s={wait:.2f}"
        level = (
            logging.INFO if outcome in {"success", "retry", "ignore", "skip"} else logging.WARNING
        )
        logger.log(level, line)
        runtime = time.monotonic() - started
        task_run_count(
            self.name,
            outcome=outcome,
            runtime=runtime,
            queue_wait=queue_wait_of(self.request, started_at=time.time() - runtime),
            exception=type(error).__name__ if error is not None else "",
        )


def failed_for_good(task: PlatformTask, error: BaseException) -> bool:
    """For a task's `on_failure`: whether the run failed for good, dead-lettered (its body
    raised, past its retries, or it hit its hard time limit). Celery also calls `on_failure`
    for a run whose body returned, when storing its result failed (the result backend's Redis
    down at that moment): the work is done, and nothing about it failed for good."""
    return isinstance(error, TimeLimitExceeded) or getattr(task.request, "failed_for_good", False)


def deliveries_counted(request) -> bool:
    """Whether this delivery counts toward a poison message: the broker delivered the message
    again because an earlier delivery was never acknowledged (its worker died, or shut down
    holding it; Redis and RabbitMQ both flag such a message redelivered), or it is the deferral
    of a counted delivery. A first delivery is not counted: counting it would cost every task
    two Redis round trips, and a message that kills its worker is redelivered, and counted,
    from the next delivery on. A message taken back unrun by a worker's warm shutdown is
    redelivered too: its first run counts as a second delivery, one delivery early at worst."""
    return bool(
        (request.delivery_info or {}).get("redelivered")
        or (request.headers or {}).get(DELIVERIES_COUNTED_HEADER)
    )


@signals.task_failure.connect
def _dead_letter_a_hard_time_limit(sender=None, task_id=None, exception=None, **details) -> None:
    # A task killed at its hard time limit never reaches __call__'s failure path: its pool
    # process is gone. Celery reports it from the worker's main process, through this signal,
    # and acknowledges the message: without this it would leave no trace a person could act on.
    if isinstance(exception, TimeLimitExceeded) and isinstance(sender, PlatformTask):
        dead_letter_record(
            task_name=sender.name,
            task_id=task_id,
            args=details.get("args") or (),
            kwargs=details.get("kwargs") or {},
            queue="",  # not known in the main process; the task's route says it
            error=exception,
            attempts=1,
        )
        task_run_count(
            sender.name,
            outcome="failure",
            runtime=0.0,
            queue_wait=None,
            exception="TimeLimitExceeded",
        )
