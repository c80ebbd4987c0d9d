"""Signup to login through the emailed link, with a real SMTP server and a real worker."""

import re
import time

import pytest
from django.contrib.auth import get_user_model

from accounts.models import EmailDelivery
from accounts.tasks import send_email
from jobs.deadletters import DeadLetterNotActionable, dead_letter_redrive
from jobs.models import DeadLetter, OutboxMessage
from tests.services import eventually

User = get_user_model()
PASSWORD = "correct horse battery staple"


def post(client, path, body, **extra):
    return client.post(f"/api/v1/{path}", body, content_type="application/json", **extra)


def link_in(message, path: str) -> str:
    text = message.get_body(preferencelist=("plain",)).get_content()
    return re.search(rf"http://testserver/{path}\?token=(\S+)", text).group(1)


@pytest.fixture
def flow(client, smtp, celery_worker):
    return client


def test_signup_verify_login_me_logout_through_the_emailed_link(flow, smtp):
    # when someone signs up
    response = post(flow, "auth/signup", {"email": "Ada@Example.com", "password": PASSWORD})
    assert response.status_code == 202
    # then a verification email arrives, with a proper From, Message-ID and both parts
    message = smtp.wait_for("ada@example.com", subject="Confirm your email")
    assert message["From"] and message["Message-ID"].endswith("@testserver>")
    assert message.get_body(preferencelist=("html",)) is not None
    # and before verifying, login answers 403 (only after the right password)
    assert (
        post(flow, "auth/login", {"email": "ada@example.com", "password": PASSWORD}).status_code
        == 403
    )
    # when the link's token is used
    token = link_in(message, "verify-email")
    assert post(flow, "auth/verify-email", {"token": token}).status_code == 200
    # then a welcome email follows, and the token is spent
    smtp.wait_for("ada@example.com", subject="Welcome to Celery SaaS")
    assert post(flow, "auth/verify-email", {"token": token}).status_code == 400
    # and login gives a bearer token that opens /me, until logout
    login = post(flow, "auth/login", {"email": "ADA@example.com", "password": PASSWORD})
    bearer = {"HTTP_AUTHORIZATION": f"Bearer {login.json()['token']}"}
    me = flow.get("/api/v1/me", **bearer)
    assert me.status_code == 200
    assert me.json() == {
        "id": User.objects.get().pk, "email": "ada@example.com",
        "email_verified": True, "deletion_scheduled_for": None,
    }  # fmt: skip
    assert post(flow, "auth/logout", {}, **bearer).status_code == 204
    assert flow.get("/api/v1/me", **bearer).status_code == 401


def test_password_reset_through_the_emailed_link_ends_other_sessions(flow, smtp):
    # given a verified user logged in on two devices
    user = User.objects.create_user(
        "grace@example.com", PASSWORD, email_verified_at="2026-01-01T00:00Z"
    )
    tokens = [
        post(flow, "auth/login", {"email": user.email, "password": PASSWORD}).json()["token"]
        for _ in range(2)
    ]
    # when they reset their password through the emailed link
    assert post(flow, "auth/password-reset", {"email": "grace@example.com"}).status_code == 202
    token = link_in(
        smtp.wait_for("grace@example.com", subject="Reset your password"), "password-reset/confirm"
    )
    new_password = "a brand new passphrase"
    response = post(flow, "auth/password-reset/confirm", {"token": token, "password": new_password})
    assert response.status_code == 200
    # then the link is spent, the old tokens are dead, and a notice arrives
    again = post(
        flow, "auth/password-reset/confirm", {"token": token, "password": "another one entirely"}
    )
    assert again.status_code == 400
    for old in tokens:
        assert flow.get("/api/v1/me", HTTP_AUTHORIZATION=f"Bearer {old}").status_code == 401
    smtp.wait_for("grace@example.com", subject="Your password was changed")
    assert (
        post(flow, "auth/login", {"email": user.email, "password": new_password}).status_code == 200
    )


def test_signup_with_a_taken_address_answers_the_same_and_warns_the_owner(flow, smtp):
    User.objects.create_user("owner@example.com", PASSWORD, email_verified_at="2026-01-01T00:00Z")
    taken = post(
        flow, "auth/signup", {"email": "owner@example.com", "password": "whatever it takes 1"}
    )
    fresh = post(
        flow, "auth/signup", {"email": "newcomer@example.com", "password": "whatever it takes 1"}
    )
    assert (taken.status_code, taken.json()) == (fresh.status_code, fresh.json())
    smtp.wait_for("owner@example.com", subject="Someone tried to sign up with your address")
    assert User.objects.get(email="owner@example.com").check_password(PASSWORD)


def test_smtp_down_for_a_while_signup_stays_fast_and_the_email_arrives_once_back(flow, smtp):
    # given an SMTP server that is down
    smtp.stop()
    # when someone signs up
    started = time.monotonic()
    response = post(flow, "auth/signup", {"email": "patient@example.com", "password": PASSWORD})
    elapsed = time.monotonic() - started
    # then the request succeeds at once
    assert response.status_code == 202
    assert elapsed < 1.5, elapsed
    # and the email arrives, once, when SMTP is back
    eventually(lambda: EmailDelivery.objects.filter(attempts__gte=2).exists(), timeout=15)
    smtp.start()
    smtp.wait_for("patient@example.com", subject="Confirm your email", timeout=30)
    time.sleep(1)
    assert len(smtp.sent_to("patient@example.com")) == 1
    assert EmailDelivery.objects.get().status == EmailDelivery.Status.SENT


def test_smtp_451_twice_then_accepted_sends_exactly_one_email(flow, smtp):
    smtp.fail_next("451 4.3.0 try again later", times=2)
    post(flow, "auth/signup", {"email": "twice@example.com", "password": PASSWORD})
    smtp.wait_for("twice@example.com", timeout=30)
    delivery = eventually(lambda: EmailDelivery.objects.filter(status="sent").first())
    time.sleep(1)
    assert len(smtp.sent_to("twice@example.com")) == 1
    assert delivery.attempts == 3
    assert smtp.conversations == 3


def test_smtp_550_fails_at_once_and_is_dead_lettered(flow, smtp):
    smtp.fail_next("550 5.1.1 no such user", times=1)
    post(flow, "auth/signup", {"email": "nobody@example.com", "password": PASSWORD})
    letter = eventually(lambda: DeadLetter.objects.filter(task_name="accounts.send_email").first())
    delivery = EmailDelivery.objects.get()
    assert delivery.status == EmailDelivery.Status.FAILED
    assert delivery.attempts == 1 and "550" in delivery.last_error
    assert letter.exception_class == "jobs.retry.PermanentError"
    assert smtp.conversations == 1


def test_a_refused_emails_dead_letter_redriven_once_the_cause_is_fixed_sends_it_once(flow, smtp):
    # given an email the server refused for good
    smtp.fail_next("550 5.7.1 relaying temporarily denied", times=1)
    post(flow, "auth/signup", {"email": "refused@example.com", "password": PASSWORD})
    letter = eventually(lambda: DeadLetter.objects.filter(task_name="accounts.send_email").first())
    eventually(lambda: EmailDelivery.objects.get().status == EmailDelivery.Status.FAILED)
    # when an operator re-drives it, the server accepting again
    dead_letter_redrive(dead_letter_id=letter.pk, by="ops@example.com")
    # then it goes out, once, and its row says so
    smtp.wait_for("refused@example.com", subject="Confirm your email")
    eventually(lambda: EmailDelivery.objects.get().status == EmailDelivery.Status.SENT)
    time.sleep(1)
    assert len(smtp.sent_to("refused@example.com")) == 1


def test_a_failed_emails_message_delivered_again_sends_nothing(flow, smtp):
    # given an email the server refused for good, its dead letter discarded by a person
    smtp.fail_next("550 5.1.1 no such user", times=1)
    post(flow, "auth/signup", {"email": "gone@example.com", "password": PASSWORD})
    letter = eventually(lambda: DeadLetter.objects.filter(task_name="accounts.send_email").first())
    eventually(lambda: EmailDelivery.objects.get().status == EmailDelivery.Status.FAILED)
    # when its old message comes again (a redelivery, a relay publishing twice)
    send_email.delay(**letter.kwargs)
    # then nothing is sent: only a re-drive reopens a failed email
    time.sleep(2)
    assert smtp.sent_to("gone@example.com") == []
    assert EmailDelivery.objects.get().status == EmailDelivery.Status.FAILED


def delivery_dead_lettered(status: str, **fields) -> DeadLetter:
    delivery = EmailDelivery.objects.create(
        **{
            "kind": EmailDelivery.Kind.VERIFICATION,
            "recipient": "someone@example.com",
            "subject": "Confirm your email",
            "body_text": "Confirm: …",
            "message_id": f"<{status}-{time.monotonic_ns()}@example.com>",
            "status": status,
            **fields,
        }
    )
    return DeadLetter.objects.create(
        task_name="accounts.send_email",
        task_id=f"send-{delivery.pk}",
        kwargs={"delivery_id": delivery.pk},
        exception_class="jobs.retry.OutcomeUnknown",
    )


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("status", "fields", "reason"),
    [
        (EmailDelivery.Status.UNKNOWN, {}, "may have been delivered"),
        (EmailDelivery.Status.FAILED, {"recipient": ""}, "forgotten"),
        (EmailDelivery.Status.FAILED, {"body_pruned_at": "2026-01-01T00:00Z"}, "forgotten"),
    ],
)
def test_an_email_that_may_have_gone_out_or_is_forgotten_is_not_redriven(status, fields, reason):
    letter = delivery_dead_lettered(status, **fields)
    with pytest.raises(DeadLetterNotActionable, match=reason):
        dead_letter_redrive(dead_letter_id=letter.pk)
    letter.refresh_from_db()
    assert letter.status == DeadLetter.Status.DEAD
    assert not OutboxMessage.objects.exists()


def test_a_reply_lost_after_the_message_arrived_is_never_sent_again(flow, smtp):
    # given a server that queues the next message, then drops the connection without replying
    smtp.hang_up_after_data_next()
    # when an email goes out
    post(flow, "auth/signup", {"email": "once@example.com", "password": PASSWORD})
    # then it is marked "may have been delivered" and dead-lettered for a person, not retried
    letter = eventually(lambda: DeadLetter.objects.filter(task_name="accounts.send_email").first())
    assert letter.exception_class == "jobs.retry.OutcomeUnknown"
    delivery = EmailDelivery.objects.get()
    assert delivery.status == EmailDelivery.Status.UNKNOWN
    assert "may have been delivered" in delivery.last_error
    time.sleep(3)  # longer than the first retry waits in tests
    assert len(smtp.sent_to("once@example.com")) == 1
    assert smtp.conversations == 1


def test_a_failure_before_the_message_was_handed_over_is_retried(flow, smtp):
    # a server that refuses the connection cannot have the message: retrying is safe
    smtp.stop()
    post(flow, "auth/signup", {"email": "retry@example.com", "password": PASSWORD})
    eventually(lambda: EmailDelivery.objects.filter(attempts__gte=1, status="queued").exists())
    smtp.start()
    smtp.wait_for("retry@example.com", timeout=30)
    eventually(lambda: EmailDelivery.objects.get().status == EmailDelivery.Status.SENT)


@pytest.mark.django_db(transaction=True)
def test_a_delivery_found_mid_send_is_marked_unknown_not_sent_again(smtp):
    from accounts.emails import email_delivery_send

    # given a delivery a worker started sending when it died
    User.objects.create_user("crash@example.com", PASSWORD)
    delivery = EmailDelivery.objects.create(
        kind="welcome", recipient="crash@example.com", subject="s", body_text="b",
        message_id="<crash@testserver>", status=EmailDelivery.Status.SENDING,
    )  # fmt: skip
    # when its message is delivered again
    email_delivery_send(delivery_id=delivery.pk)
    # then it is left to a person, and nothing is sent
    delivery.refresh_from_db()
    assert delivery.status == EmailDelivery.Status.UNKNOWN
    assert smtp.conversations == 0
