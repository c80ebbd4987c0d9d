"""The operator's page (/admin/operations/): staff only; queues, workers, beat, outbox, dead
letters by task and exception with links that filter, stuck jobs, batches; what it can when a
source is down."""

import re
import time
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.utils import timezone

from config.celery import app
from jobs.models import Batch, DeadLetter
from tests.harness import TEST_BROKER
from tests.services import eventually

PAGE = "/admin/operations/"


@pytest.fixture
def staff_client(transactional_db, client):
    """An operator: staff, who may see the job platform's rows in the admin."""
    operator = get_user_model().objects.create_user(
        "operator@example.com", "an operator's passphrase", is_staff=True
    )
    operator.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label="jobs",
            codename__in=["view_deadletter", "view_batch", "view_outboxmessage"],
        )
    )
    client.force_login(operator)
    return client


def page_text(client) -> str:
    response = client.get(PAGE)
    assert response.status_code == 200
    return response.content.decode()


def section(html: str, name: str) -> str:
    return re.search(rf'<section id="{name}".*?</section>', html, re.S).group(0)


def queue_row(html: str, queue: str) -> list[str]:
    """The queue's cells after its name, as text."""
    row = re.search(rf"<tr>\s*<td>{queue}</td>(.*?)</tr>", section(html, "queues"), re.S).group(1)
    return [re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<td.*?</td>", row, re.S)]


def dead_letter(task: str, exception: str, *, failed_ago: timedelta) -> DeadLetter:
    at = timezone.now() - failed_ago
    return DeadLetter.objects.create(
        task_name=task,
        task_id=f"{task}-{exception}-{time.monotonic_ns()}",
        exception_class=exception,
        first_failed_at=at,
        last_failed_at=at,
    )


@pytest.mark.django_db
def test_only_staff_who_may_see_dead_letters_see_the_page(client):
    # anyone not staff is sent to the admin's login
    response = client.get(PAGE)
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
    person = get_user_model().objects.create_user("person@example.com", "a person's passphrase")
    client.force_login(person)
    response = client.get(PAGE)
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
    # and staff who may not see dead letters are refused, with no link to it
    person.is_staff = True
    person.save()
    assert client.get(PAGE).status_code == 403
    assert PAGE not in client.get("/admin/").content.decode()


def test_the_page_shows_queues_workers_beat_and_the_days_dead_letters_with_filtering_links(
    staff_client, no_worker_running, start_worker, start_beat
):
    # given a worker for some queues only, a beat, and work waiting for the queue nobody takes
    worker = start_worker(queues=["default", "emails", "media", "notifications", "maintenance"])
    start_beat()
    for index in range(3):
        app.send_task("tests.flaky", kwargs={"key": str(index), "failures": 0}, queue="reports")
    # and dead letters: two alike and one other today, and one from the day before yesterday
    for _ in range(2):
        dead_letter("tests.flaky", "ValueError", failed_ago=timedelta(hours=1))
    dead_letter("media.normalize", "OSError", failed_ago=timedelta(hours=3))
    dead_letter("tests.flaky", "ValueError", failed_ago=timedelta(days=2))
    batch = Batch.objects.create(kind="tests.noop", total=10, done=4, failed=1)

    # when an operator opens the page once the canaries came back from the consumed queues
    def canaries_back() -> str | None:
        html = page_text(staff_client)
        return html if queue_row(html, "default")[3].endswith("ago") else None

    html = eventually(canaries_back, timeout=20)
    # then each queue says what waits, since when, who consumes it and its canary
    waiting, oldest, consumers, canary = queue_row(html, "reports")
    # (beat's canaries wait there too, beside the three tasks)
    assert int(waiting) >= 3 and (consumers, canary) == ("0", "never")
    # (an age on Redis, from the message's header; RabbitMQ shows no message undelivered)
    assert oldest.endswith(" s") if TEST_BROKER == "redis" else oldest == "\N{EN DASH}"
    assert queue_row(html, "emails")[2] == "1"
    # and the worker with its queues and heartbeat, beat with its holder
    workers = section(html, "workers")
    assert worker.name in workers and "default, emails, maintenance" in workers
    assert "Last tick" in section(html, "beat")
    # and the day's dead letters by task and exception, the old one left out
    letters = section(html, "dead-letters")
    assert "4 waiting for a person" in letters
    links = re.findall(r'<td class="number"><a href="([^"]+)">(\d+)</a>', letters)
    assert [count for _, count in links] == ["2", "1"]
    # whose links open the admin's list filtered to exactly those
    listed = staff_client.get(links[0][0].replace("&amp;", "&"))
    assert listed.status_code == 200
    assert listed.context["cl"].result_count == 2
    # and the batch in progress, linked to its page
    assert f"/admin/jobs/batch/{batch.pk}/change/" in section(html, "batches")
    # and Flower, behind its password, is one click away
    assert 'href="http://localhost:5555/"' in html


def test_the_page_shows_what_it_can_while_the_broker_hangs(staff_client, broker_server, settings):
    # given a broker that accepts connections and answers nothing (on Redis, the platform's
    # Redis is that same server)
    dead_letter("tests.flaky", "ValueError", failed_ago=timedelta(minutes=5))
    staff_client.get(PAGE)  # the first request's imports are not the page's time
    broker_server.freeze()
    time.sleep(1.1)  # past the second for which the broker's figures are reused
    try:
        # when an operator opens the page
        started = time.monotonic()
        html = page_text(staff_client)
        elapsed = time.monotonic() - started
    finally:
        broker_server.thaw()
    # then it answers within the broker's bound (and Redis's timeouts), saying what is missing
    assert elapsed < settings.METRICS_BROKER_TIMEOUT + 2.0, elapsed
    assert "The broker did not answer" in section(html, "queues")
    assert queue_row(html, "default")[0] == "\N{EN DASH}"
    if TEST_BROKER == "redis":
        assert "Redis did not answer" in section(html, "workers")
    # and what the database holds is all there
    assert "1 waiting for a person" in section(html, "dead-letters")
    assert "tests.flaky" in section(html, "dead-letters")


@pytest.mark.django_db
def test_every_admin_page_links_to_the_operators_page(staff_client):
    assert 'href="/admin/operations/"' in staff_client.get("/admin/").content.decode()
