"""One id from a request to every line it causes: the web's access log, and the worker's lines of
the tasks the request enqueued (at once or through the outbox) and of the tasks those started."""

import json
import logging
import re

import httpx
import pytest
from celery import signals
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.utils import timezone

from accounts.services import api_token_create
from jobs.models import OutboxMessage
from jobs.outbox import enqueue, outbox_send
from jobs.request_ids import MESSAGE_HEADER, RequestIdFilter, current_request_id, request_id_held
from tests.media.images_for_tests import jpeg
from tests.services import eventually
from tests.worker_tasks.platform import flaky

PASSWORD = "correct horse battery staple"
GENERATED_ID = re.compile(r"[0-9a-f]{32}")


def signup(web, email: str) -> str:
    """Signs up through the web process; the request id its response names."""
    response = httpx.post(
        f"{web.url}/api/v1/auth/signup", json={"email": email, "password": PASSWORD}, timeout=30
    )
    assert response.status_code == 202, response.text
    return response.headers["X-Request-ID"]


def lines_naming(process, request_id: str, fragment: str) -> list[str]:
    return [
        line
        for line in process.logfile.read_text(errors="replace").splitlines()
        if request_id in line and fragment in line
    ]


def test_a_signups_request_id_is_on_the_workers_line_of_the_email_it_caused_and_the_access_log(
    start_web, celery_worker, smtp
):
    # given the web server and a worker, as production runs them
    web = start_web()
    # when someone signs up
    request_id = signup(web, "traced@example.com")
    # then the response names a fresh id
    assert GENERATED_ID.fullmatch(request_id)
    smtp.wait_for("traced@example.com", subject="Confirm your email", timeout=30)
    # and the worker's line of the email's task names it, beside the task
    email_lines = eventually(
        lambda: lines_naming(celery_worker, request_id, "task=accounts.send_email"), timeout=10
    )
    assert "outcome=success" in email_lines[0]
    assert f"[{request_id} accounts.send_email " in email_lines[0]
    # and so does the access log line of the request
    assert eventually(lambda: lines_naming(web, request_id, '"POST /api/v1/auth/signup'))


def test_through_the_outbox_the_id_reaches_the_worker_and_every_line_is_json(
    no_worker_running, start_web, start_worker, start_beat, broker_server, smtp
):
    # given every process logging JSON (the only worker too), and beat driving the outbox relay
    json_logs = {"LOG_FORMAT": "json"}
    call_command("sync_periodic_tasks")
    worker = start_worker(extra_env=json_logs)
    start_beat(extra_env=json_logs)
    web = start_web(extra_env=json_logs)
    # and a broker that goes down
    broker_server.stop()
    # when someone signs up, their email waits in the outbox with the request's id
    request_id = signup(web, "relayed@example.com")
    assert OutboxMessage.objects.get(status=OutboxMessage.Status.PENDING).request_id == request_id
    # and the broker comes back
    broker_server.start()
    smtp.wait_for("relayed@example.com", subject="Confirm your email", timeout=60)

    # then the worker's line of the email, published by the relay, carries the request's id
    def email_entry() -> dict | None:
        for entry in json_entries(worker):
            if entry["message"].startswith("task=accounts.send_email"):
                return entry
        return None

    entry = eventually(email_entry, timeout=10)
    assert entry["request_id"] == request_id
    assert entry["task_name"] == "accounts.send_email"
    assert entry["level"] == "INFO" and entry["logger"] == "jobs.task"
    # and the web's lines, gunicorn's access log among them, are JSON too
    access = [e for e in json_entries(web) if "POST /api/v1/auth/signup" in e["message"]]
    assert access and access[0]["request_id"] == request_id


def json_entries(process) -> list[dict]:
    """Every line of the process's log, each of which must be one JSON object. The worker is
    started quiet (no banner); Celery's only other print, its shutdown notice, comes after."""
    lines = [line for line in process.logfile.read_text().splitlines() if line.strip()]
    assert lines, f"{process.name} logged nothing"
    return [json.loads(line) for line in lines]


def test_the_tasks_a_request_starts_start_others_under_the_same_id(start_web, celery_worker):
    # given someone with an API token, and the web server
    owner = get_user_model().objects.create_user(
        "owner@example.com", PASSWORD, email_verified_at=timezone.now()
    )
    web = start_web()
    # when they upload a photo large enough for a canvas: a chain, a chord of variants, a callback
    response = httpx.post(
        f"{web.url}/api/v1/uploads",
        files={"file": ("photo.jpg", jpeg(8000, 6000))},
        headers={"Authorization": f"Bearer {api_token_create(user=owner)}"},
        timeout=30,
    )
    assert response.status_code == 202, response.text
    request_id = response.headers["X-Request-ID"]
    # then each step, started by the one before it in the worker, logs the upload's request id
    pipeline = {
        "media.start_pipeline",
        "media.normalize",
        "media.make_variant",
        "media.finalize",
        "media.notify",
    }

    def steps_logged() -> set[str] | None:
        lines = lines_naming(celery_worker, request_id, "outcome=success")
        logged = {re.search(r"task=(\S+)", line).group(1) for line in lines}
        return logged if pipeline <= logged else None

    eventually(steps_logged, timeout=60)


def test_an_outbox_row_is_published_under_its_own_request_id_never_the_publishers(
    broker_server, transactional_db
):
    # given two rows (published once already, as they were written), one written during a
    # request and one by a beat task, which has none
    with request_id_held("signup-request"):
        of_a_request = enqueue(flaky, key="a", failures=0)
    of_nobody = enqueue(flaky, key="b", failures=0)
    carried = {}

    def seen(sender=None, headers=None, **details) -> None:
        carried[headers["id"]] = headers.get(MESSAGE_HEADER)

    signals.before_task_publish.connect(seen)
    try:
        # when someone else publishes them: an operator's request, the relay
        with request_id_held("operators-request"):
            for row in (of_a_request, of_nobody):
                outbox_send(message=OutboxMessage.objects.get(pk=row.pk))
    finally:
        signals.before_task_publish.disconnect(seen)
    # then each carries its own request's id, or none
    assert carried[of_a_request.celery_task_id] == "signup-request"
    assert carried[of_nobody.celery_task_id] is None


def test_djangos_own_lines_after_the_middleware_carry_the_id_too(client):
    # Django logs a 4xx ("Not Found: …") once the middleware chain has returned
    seen = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append((record.getMessage(), record.request_id))

    handler = Collect()
    handler.addFilter(RequestIdFilter())
    logger = logging.getLogger("django.request")
    logger.addHandler(handler)
    try:
        response = client.get("/api/v1/no-such-endpoint")
    finally:
        logger.removeHandler(handler)
    assert ("Not Found: /api/v1/no-such-endpoint", response["X-Request-ID"]) in seen
    # and nothing of it is held once the response is closed
    assert current_request_id() is None


@pytest.mark.parametrize(
    ("trusted_proxies", "sent", "kept"),
    [
        # a proxy of ours sets it: the id its own logs use
        (["127.0.0.1"], "edge-7f3a9c.req:42", True),
        # anyone else could make their requests look like someone else's
        ([], "edge-7f3a9c.req:42", False),
        # a proxy's header that would forge or flood a log line is not used either
        (["127.0.0.1"], "a b", False),
        (["127.0.0.1"], "x" * 129, False),
        (["127.0.0.1"], "", False),
    ],
)
def test_an_id_from_x_request_id_is_used_only_from_a_trusted_proxy_and_only_when_sane(
    client, settings, trusted_proxies, sent, kept
):
    settings.TRUSTED_PROXIES = trusted_proxies
    response = client.get("/healthz", headers={"X-Request-ID": sent}, REMOTE_ADDR="127.0.0.1")
    returned = response["X-Request-ID"]
    if kept:
        assert returned == sent
    else:
        assert GENERATED_ID.fullmatch(returned)


def test_a_proxys_id_is_not_read_when_the_proxy_passes_its_clients_along(client, settings):
    settings.TRUSTED_PROXIES = ["127.0.0.1"]
    settings.REQUEST_ID_FROM_PROXY = False
    response = client.get("/healthz", headers={"X-Request-ID": "from-a-client"})
    assert GENERATED_ID.fullmatch(response["X-Request-ID"])


def test_every_response_names_its_own_id_even_an_error(client):
    first = client.get("/api/v1/no-such-endpoint")
    second = client.get("/api/v1/no-such-endpoint")
    assert first.status_code == 404
    assert GENERATED_ID.fullmatch(first["X-Request-ID"])
    assert first["X-Request-ID"] != second["X-Request-ID"]
