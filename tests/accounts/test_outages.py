"""Signup survives a broker outage: the request succeeds, the email goes out once it is back."""

import time

from django.contrib.auth import get_user_model
from django.core.management import call_command

from jobs.models import OutboxMessage

PASSWORD = "correct horse battery staple"


def test_signup_succeeds_while_the_broker_is_down_and_its_email_arrives_after(
    client, smtp, redis_server, celery_worker, start_beat
):
    # given the platform's periodic jobs synced and a beat running (it drives the outbox relay)
    call_command("sync_periodic_tasks")
    start_beat()
    # and a broker that goes down
    redis_server.stop()
    # when someone signs up
    started = time.monotonic()
    response = client.post(
        "/api/v1/auth/signup",
        {"email": "outage@example.com", "password": PASSWORD},
        content_type="application/json",
    )
    elapsed = time.monotonic() - started
    # then the request succeeds fast and the account exists, its email waiting in the outbox
    assert response.status_code == 202
    assert elapsed < 2.0, f"signup took {elapsed:.2f}s with the broker down"
    assert get_user_model().objects.filter(email="outage@example.com").exists()
    assert OutboxMessage.objects.filter(status=OutboxMessage.Status.PENDING).count() == 1
    # when the broker comes back, empty
    redis_server.start()
    # then the relay publishes the email, the worker sends it, exactly once
    smtp.wait_for("outage@example.com", subject="Confirm your email", timeout=60)
    time.sleep(2)
    assert len(smtp.sent_to("outage@example.com")) == 1
