"""One id from a request to every log line it causes, in the web and in the workers.

- The web: `RequestIdMiddleware` takes the request's id from `X-Request-ID` when a trusted proxy
  (settings.TRUSTED_PROXIES) sent it and it is a sane token, else makes one; it answers with it in
  `X-Request-ID` and holds it in a context variable while the request runs.
- Publishing: every task published while an id is held carries it in a message header; the outbox
  keeps it in its row (OutboxMessage.request_id), so a task the relay publishes an hour later
  carries it too.
- The worker: a task runs holding its message's id, so its log lines show it and the tasks it
  starts (a retry, a chain's next step, a chunk of a batch) carry it on.
- Logging: `RequestIdFilter` writes the id (and, in a worker, the task's name and id) into every
  record, for the text format and for `LOG_FORMAT=json` (`JsonFormatter`).
"""

import contextlib
import contextvars
import json
import logging
import re
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from celery import signals
from celery._state import get_current_task
from django.conf import settings
from django.core.signals import request_finished
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse

from config.proxies import is_trusted_proxy

HEADER = "X-Request-ID"
# The message header a task's id travels in.
MESSAGE_HEADER = "jobs_request_id"
# What a proxy may send: the forms in use (UUIDs, hex trace ids, "req-…"), nothing that could
# forge a log line (a newline, a quote) or fill one (a megabyte).
_ACCEPTED_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

_current: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


def current_request_id() -> str | None:
    return _current.get()


@contextlib.contextmanager
def request_id_held(request_id: str | None) -> Iterator[None]:
    token = _current.set(request_id)
    try:
        yield
    finally:
        _current.reset(token)


def request_id_of(request: HttpRequest) -> str:
    """The proxy's id when a trusted proxy sent a sane one; a new one otherwise. A client's own
    header is not believed: it could make its requests look like someone else's."""
    given = request.headers.get(HEADER, "")
    if (
        settings.REQUEST_ID_FROM_PROXY
        and _ACCEPTED_ID.fullmatch(given)
        and is_trusted_proxy(request.META.get("REMOTE_ADDR", ""))
    ):
        return given
    return uuid.uuid4().hex


class RequestIdMiddleware:
    """Holds the request's id from the first middleware until the response is closed: Django
    logs a 4xx or 5xx ("Not Found: /…") after the last middleware returned, and the body of a
    streamed response is sent after that. Set, never restored: each request sets its own first,
    so nothing of one request's id reaches the next."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request_id = request_id_of(request)
        _current.set(request_id)
        response = self.get_response(request)
        response[HEADER] = request_id
        return response


@receiver(request_finished)
def _request_id_released(**details) -> None:
    _current.set(None)


# --- tasks ----------------------------------------------------------------------------------


@signals.before_task_publish.connect
def _carry_request_id(sender=None, headers=None, **details) -> None:
    # Defaulted, not set: the outbox relay publishes a row with the id of the request that wrote
    # it, whatever the relay itself holds.
    request_id = _current.get()
    if headers is not None and request_id and not headers.get(MESSAGE_HEADER):
        headers[MESSAGE_HEADER] = request_id


def message_request_id(task) -> str | None:
    """The request id a running task's message carries, if any."""
    return (task.request.headers or {}).get(MESSAGE_HEADER) or getattr(
        task.request, MESSAGE_HEADER, None
    )


# Kept on the run's own request context: two runs of one task id at once (a redelivery, in a
# threads pool) each restore their own.
_SAVED_ATTRIBUTE = "_jobs_request_id_saved"


@signals.task_prerun.connect
def _hold_task_request_id(task=None, **details) -> None:
    if task.request.is_eager:
        return  # run in its caller's process: it keeps the caller's id
    setattr(task.request, _SAVED_ATTRIBUTE, _current.set(message_request_id(task)))


@signals.task_postrun.connect
def _release_task_request_id(task=None, **details) -> None:
    token = getattr(task.request, _SAVED_ATTRIBUTE, None)
    if token is not None:
        _current.reset(token)


# --- logging --------------------------------------------------------------------------------


class RequestIdFilter(logging.Filter):
    """Adds `request_id`, `task_name` and `task_id` ("-" when none) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = _current.get() or "-"
        task = get_current_task()
        running = task is not None and not task.request.called_directly
        record.task_name = task.name if running else "-"
        record.task_id = task.request.id if running else "-"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: what a log pipeline indexes without a parsing rule."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.processName,
        }
        if record.name == "gunicorn.access" and isinstance(record.args, dict):
            # gunicorn logs a request once its response is sent, the id in the response's
            # header (config/gunicorn.py).
            record.request_id = record.args.get("{x-request-id}o", "-")
        for name in ("request_id", "task_name", "task_id"):
            value = getattr(record, name, "-")
            if value != "-":
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)
