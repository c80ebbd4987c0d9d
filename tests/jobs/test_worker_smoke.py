from django.contrib.auth import get_user_model

from tests.services import eventually
from tests.worker_tasks.basics import create_user


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
