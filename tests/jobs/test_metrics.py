"""/metrics (jobs/metrics.py): figures read at scrape time from the broker, Redis and the
database, the same from every web process, behind a bearer token, bounded when the broker
hangs."""

import time
import urllib.error
import urllib.request
import uuid
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from accounts.models import EmailDelivery
from accounts.tasks import send_email
from jobs.lost_messages import lost_after
from jobs.models import DeadLetter, OutboxMessage
from notifications.models import Device, Kind, Notification, PushDelivery
from notifications.services import push_lost_after
from tests.harness import TEST_BROKER, only_on_broker
from tests.services import eventually
from tests.worker_tasks.platform import flaky, permanent_unless_allowed

TOKEN = "metrics-token-for-tests"


def figures(text: str) -> dict[tuple[str, tuple], float]:
    """(sample name, its labels sorted) -> value."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(url: str, *, token: str = TOKEN) -> dict[tuple[str, tuple], float]:
    """GET /metrics from a web process as Prometheus does; HTTPError for a refusal."""
    request = urllib.request.Request(  # noqa: S310 (our own http:// URL)
        f"{url}/metrics", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
        return figures(answer.read().decode())


def queue(name: str) -> tuple:
    return (("queue_name", name),)


def test_messages_waiting_without_a_worker_show_their_length_and_age_until_one_starts(
    no_worker_running, start_web, start_worker
):
    # given a web server, and messages waiting in the default queue with no worker to take them
    web = start_web(extra_env={"METRICS_BEARER_TOKEN": TOKEN})
    key = uuid.uuid4().hex
    for _ in range(5):
        permanent_unless_allowed.delay(key=key)
    # then /metrics shows them, and (on Redis, which shows a message without delivering it)
    # their age grows
    first = eventually(
        lambda: (
            (found := scrape(web.url)).get(("celery_queue_length", queue("default"))) == 5 and found
        )
    )
    time.sleep(1.5)
    later = scrape(web.url)
    age = ("jobs_queue_oldest_message_age_seconds", queue("default"))
    if TEST_BROKER == "redis":
        assert later[age] >= first.get(age, 0) + 1.0
    else:
        assert age not in later
    assert later[("jobs_broker_up", ())] == 1
    # when a worker starts, then the queue empties and its age is gone
    start_worker(queues=["default"])
    emptied = eventually(
        lambda: (
            (found := scrape(web.url))[("celery_queue_length", queue("default"))] == 0 and found
        ),
        timeout=30,
    )
    assert age not in emptied
    # and each permanent failure is a dead letter, counted by status, and a failure counted
    # with its task and exception class, having waited in the queue as long as it did
    final = eventually(
        lambda: (
            (found := scrape(web.url))[("jobs_dead_letters", (("status", "dead"),))] == 5 and found
        ),
        timeout=30,
    )
    task = (("name", "tests.permanent_unless_allowed"),)
    assert final[("celery_task_sent_total", task)] == 5
    assert final[("celery_task_received_total", task)] == 5
    assert final[("celery_task_failed_total", (("exception", "PermanentError"), *task))] == 5
    assert ("celery_task_succeeded_total", task) not in final
    assert final[("celery_task_runtime_seconds_count", task)] == 5
    assert final[("jobs_task_queue_wait_seconds_count", task)] == 5
    # (each waited at least the 1.5 s above: none is in a bucket below one second)
    assert final[("jobs_task_queue_wait_seconds_bucket", (("le", "1.0"), *task))] == 0
    assert final[("jobs_task_queue_wait_seconds_sum", task)] >= 5 * 1.5
    assert final[("celery_active_worker_count", ())] >= 1
    assert final[("jobs_queue_consumers", queue("default"))] == 1
    assert final[("jobs_queue_consumers", queue("reports"))] == 0


def test_two_web_processes_and_two_workers_give_the_same_totals_as_one(
    no_worker_running, start_web, start_worker
):
    # given two web processes, and two workers that ran forty tasks between them
    webs = [start_web(extra_env={"METRICS_BEARER_TOKEN": TOKEN}) for _ in range(2)]
    workers = [start_worker(queues=["default"], concurrency=2) for _ in range(2)]
    key = uuid.uuid4().hex
    for _ in range(40):
        flaky.delay(key=key, failures=0)
    task = (("name", "tests.flaky"),)
    eventually(lambda: scrape(webs[0].url).get(("celery_task_succeeded_total", task)) == 40)
    ran_on = [worker for worker in workers if "task=tests.flaky" in worker.logfile.read_text()]
    for worker in workers:
        worker.stop()
    # and work waiting that neither of them holds
    for _ in range(3):
        permanent_unless_allowed.delay(key=uuid.uuid4().hex)
    DeadLetter.objects.create(
        task_name="tests.anything", task_id=uuid.uuid4().hex, exception_class="ValueError"
    )
    # then both say the same
    wanted = [
        ("celery_queue_length", queue("default")),
        ("jobs_dead_letters", (("status", "dead"),)),
        ("jobs_outbox_pending", ()),
        ("celery_task_succeeded_total", task),
        ("celery_task_received_total", task),
        ("celery_task_runtime_seconds_count", task),
    ]
    eventually(lambda: scrape(webs[0].url)[wanted[0]] == 3)
    answers = [scrape(web.url) for web in webs]
    assert [[answer[name] for name in wanted] for answer in answers] == [[3, 1, 0, 40, 40, 40]] * 2
    # (the forty ran on both workers, each counted once)
    assert len(ran_on) == 2


def test_a_scrape_answers_in_bounded_time_while_the_broker_hangs(
    no_worker_running, start_web, broker_server
):
    # given a web server whose broker keeps connections open and answers nothing (SIGSTOP)
    web = start_web(extra_env={"METRICS_BEARER_TOKEN": TOKEN, "METRICS_BROKER_TIMEOUT": "1"})
    OutboxMessage.objects.create(task_name="tests.anything")
    broker_server.freeze()
    try:
        # when Prometheus scrapes, twice
        started = time.monotonic()
        first = scrape(web.url)
        second = scrape(web.url)
        elapsed = time.monotonic() - started
    finally:
        broker_server.thaw()
    # then each scrape answered within the broker's timeout, saying the broker did not answer,
    # with the queue figures left out rather than made up, and the rest of the figures there
    assert elapsed < 2 * 1.0 + 1.5, elapsed
    for answer in (first, second):
        assert answer[("jobs_broker_up", ())] == 0
        assert not [name for name, _ in answer if name == "celery_queue_length"]
        assert answer[("jobs_outbox_pending", ())] == 1
    # and once the broker is back, so are its figures
    eventually(lambda: scrape(web.url)[("jobs_broker_up", ())] == 1)


@pytest.mark.django_db
def test_metrics_need_the_bearer_token_when_one_is_set(settings):
    settings.METRICS_BEARER_TOKEN = TOKEN
    client = Client()
    for given in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": TOKEN},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}x"},
    ):
        refused = client.get("/metrics", headers=given)
        assert refused.status_code == 401
        assert refused["WWW-Authenticate"] == 'Bearer realm="metrics"'
        assert b"celery" not in refused.content
    answer = client.get("/metrics", headers={"Authorization": f"bearer {TOKEN}"})
    assert answer.status_code == 200
    assert ("jobs_outbox_pending", ()) in figures(answer.content.decode())


@pytest.mark.django_db
def test_jobs_past_their_deadline_are_counted_by_kind(django_user_model, settings):
    # given a push delivery whose message was lost
    settings.METRICS_BEARER_TOKEN = ""
    user = django_user_model.objects.create_user("stuck@example.com", "x" * 12)
    device = Device.objects.create(user=user, platform="webpush", address="https://x.example/p")
    notification = Notification.objects.create(user=user, kind=Kind.UPLOAD_READY, title="t")
    long_ago = timezone.now() - push_lost_after() - timedelta(minutes=1)
    PushDelivery.objects.create(
        notification=notification, device=device, created_at=long_ago, updated_at=long_ago
    )
    # and an email whose message was lost the same way
    EmailDelivery.objects.create(
        kind=EmailDelivery.Kind.WELCOME, recipient="stuck@example.com", message_id="<m@x>"
    )
    EmailDelivery.objects.update(updated_at=timezone.now() - lost_after(send_email) - timedelta(1))
    # then /metrics counts them, and nothing else as stuck
    answer = figures(Client().get("/metrics").content.decode())
    stuck = {
        labels[0][1]: value for (name, labels), value in answer.items() if name == "jobs_stuck"
    }
    assert stuck == {
        "email_deliveries": 1,
        "erasures": 0,
        "push_deliveries": 1,
        "reports": 0,
        "uploads": 0,
    }


def test_a_web_process_refuses_a_scrape_without_the_token(start_web):
    web = start_web(extra_env={"METRICS_BEARER_TOKEN": TOKEN})
    with pytest.raises(urllib.error.HTTPError) as refused:
        scrape(web.url, token="guess")
    assert refused.value.code == 401


@only_on_broker("redis", "RabbitMQ shows no message without delivering it, so no age")
def test_a_message_waiting_for_its_eta_is_not_late(no_worker_running, start_web):
    # given a message due in ten minutes (a retry's backoff given back by a worker), waiting
    web = start_web(extra_env={"METRICS_BEARER_TOKEN": TOKEN})
    permanent_unless_allowed.apply_async(kwargs={"key": uuid.uuid4().hex}, countdown=600)
    eventually(lambda: scrape(web.url)[("celery_queue_length", queue("default"))] == 1)
    time.sleep(1.5)
    # then it is not counted as waiting late
    assert scrape(web.url)[("jobs_queue_oldest_message_age_seconds", queue("default"))] == 0


def test_redis_down_leaves_its_figures_out_and_the_rest_in(
    no_worker_running, start_web, redis_server
):
    # given a web server, and Redis gone (on Redis, the broker with it)
    web = start_web(extra_env={"METRICS_BEARER_TOKEN": TOKEN})
    OutboxMessage.objects.create(task_name="tests.anything")
    redis_server.stop()
    # when Prometheus scrapes, then it gets an answer saying what is missing, not an error
    answer = scrape(web.url)
    assert answer[("jobs_redis_up", ())] == 0
    assert answer[("jobs_broker_up", ())] == int(TEST_BROKER != "redis")
    assert answer[("jobs_database_up", ())] == 1
    assert answer[("jobs_outbox_pending", ())] == 1
    assert not [name for name, _ in answer if name.startswith("celery_task_")]
