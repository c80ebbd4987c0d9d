import uuid

from django.contrib.auth import get_user_model

from tests.services import eventually
from tests.worker_tasks.basics import create_user
from tests.worker_tasks.platform import page_faults_of_a_reused_buffer, recorded


def test_a_task_travels_through_the_broker_to_a_worker_and_changes_the_database(celery_worker):
    # given a real worker consuming from the private Redis
    # when a task is published by name, as a web process would publish it
    create_user.delay("smoke@example.com")

    # then the worker, in its own process, writes the row the task promised
    user = eventually(lambda: get_user_model().objects.filter(email="smoke@example.com").first())
    assert user.has_usable_password() is False


def test_the_worker_consumes_every_queue(celery_worker, celery_app):
    # given the queues the platform declares
    active = celery_app.control.inspect(destination=[celery_worker.name], timeout=5).active_queues()

    # then the test worker listens on all of them, so no test's task is silently left unconsumed
    consumed = {queue["name"] for queue in active[celery_worker.name]}
    assert consumed == {"default", "emails", "media", "reports", "notifications", "maintenance"}


def test_a_pool_process_reuses_the_memory_a_task_freed_instead_of_faulting_in_fresh_pages(
    celery_worker,
):
    # given a task in a pool process that frees a 24 MB buffer (a 2 MP image's pixels, three
    # times over) and then fills one of the same size
    key = uuid.uuid4().hex
    page_faults_of_a_reused_buffer.delay(key=key, megabytes=24)
    # then the second buffer came from the memory the process kept: almost no fresh pages (with
    # glibc's defaults, one fault for every page of it)
    (_, value), *_ = eventually(lambda: recorded("faults", key))
    faults, pages = (int(number) for number in value.split())
    assert faults < pages / 10, (faults, pages)
