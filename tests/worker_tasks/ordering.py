"""Test-only task for per-key ordering (`jobs.outbox.enqueue(..., ordering_key=...)`).

Each run pushes "start <key> <item>" when it begins and "end <key> <item>" when its work is
done onto one Redis list per test run. The list's order is the order in which the pushes
happened, across every worker process: the order the test checks.
"""

import os
import signal
import time

from celery import shared_task, signals
from django.db import OperationalError

import jobs.base
from jobs.redis import redis_client
from jobs.retry import PermanentError


def events_key(run: str) -> str:
    return f"test:ordering:{run}"


def allow_key(run: str, key: str, item: int) -> str:
    """While this key is missing, a step told to fail until allowed fails permanently."""
    return f"test:ordering-allow:{run}:{key}:{item}"


def events(run: str) -> list[tuple[str, str, int]]:
    """(event, key, item) in the order they happened."""
    entries = redis_client().lrange(events_key(run), 0, -1)
    return [(event, key, int(item)) for event, key, item in (e.decode().split() for e in entries)]


@shared_task(name="tests.ordered_step", idempotent=True)
def ordered_step(
    run: str,
    key: str,
    item: int,
    seconds: float = 0.0,
    fails_until_allowed: bool = False,
    kills_its_worker_once: bool = False,
    dies_once_after_finishing: bool = False,
    database_fails_once_at_its_finish: bool = False,
) -> None:
    """Records its start, works for `seconds`, records its end. Told to, it fails permanently
    until the test allows it (the fix an operator deploys), takes its whole worker down on its
    first delivery, midway (run by a worker with one pool process, so none is left over),
    kills its pool process once it has finished, before the worker could acknowledge it, or
    finds the database failing, once, when the platform marks its row finished."""
    redis_client().rpush(events_key(run), f"start {key} {item}")
    if kills_its_worker_once and _first_delivery(run, key, item):
        os.kill(os.getppid(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)
    if database_fails_once_at_its_finish and _first_delivery(run, key, item):
        _fail_the_next_finish()
    time.sleep(seconds)
    if fails_until_allowed and not redis_client().exists(allow_key(run, key, item)):
        raise PermanentError("the provider rejected this step")
    redis_client().rpush(events_key(run), f"end {key} {item}")


@signals.task_postrun.connect
def _die_once_after_finishing(sender=None, kwargs=None, **details) -> None:
    # After the platform marked the ordered row finished and published the next task of its key,
    # before the worker's main process acknowledges the message: it gets the message back.
    if sender is not None and sender.name == ordered_step.name:
        told = (kwargs or {}).get("dies_once_after_finishing")
        if told and _first_delivery(kwargs["run"], kwargs["key"], kwargs["item"]):
            os.kill(os.getpid(), signal.SIGKILL)


def _first_delivery(run: str, key: str, item: int) -> bool:
    return redis_client().incr(f"test:ordering-deliveries:{run}:{key}:{item}") == 1


def _fail_the_next_finish() -> None:
    # In this pool process only, the next call of the platform's finish step raises what a
    # database that went away raises, then the real step is back.
    finish = jobs.base.ordered_message_finished

    def fail_once(**kwargs) -> None:
        jobs.base.ordered_message_finished = finish
        raise OperationalError("database is locked")

    jobs.base.ordered_message_finished = fail_once
