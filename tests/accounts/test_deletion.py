"""Account deletion through the API: the request, the grace period, the cancel, and what is
refused (accounts/deletion.py). The erasure itself: tests/accounts/test_erasure.py."""

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from accounts.deletion import account_erasures_queue_due
from accounts.models import AccountErasure, AccountSession, ApiToken, EmailDelivery
from jobs.models import OutboxMessage
from tests.services import at_the_same_moment, eventually

User = get_user_model()
PASSWORD = "correct horse battery staple"
URL = "/api/v1/account/deletion"


def verified_user(email: str = "ada@example.com", **fields):
    return User.objects.create_user(email, PASSWORD, email_verified_at=timezone.now(), **fields)


def token_client(email: str = "ada@example.com") -> Client:
    """An API client logged in with a bearer token, as a mobile app is."""
    token = Client().post(
        "/api/v1/auth/login",
        {"email": email, "password": PASSWORD},
        content_type="application/json",
    )
    assert token.status_code == 200, token.content
    return Client(headers={"Authorization": f"Bearer {token.json()['token']}"})


def ask(client: Client, password: str = PASSWORD):
    return client.post(URL, {"password": password}, content_type="application/json")


def kinds(user) -> list[str]:
    return list(
        EmailDelivery.objects.filter(recipient=user.email)
        .order_by("pk")
        .values_list("kind", flat=True)
    )


@pytest.mark.django_db
def test_a_deletion_request_schedules_the_erasure_and_ends_every_session_and_token(settings):
    # given an account logged in twice by token and once in a browser
    settings.ACCOUNT_DELETION_GRACE_DAYS = 7
    user = verified_user()
    phone, laptop = token_client(), token_client()
    browser = Client()
    browser.force_login(user)
    # when one of them asks for the account's deletion with the password
    before = timezone.now()
    response = ask(phone)
    # then it is scheduled for seven days from now
    assert response.status_code == 202, response.content
    scheduled_for = parse_datetime(response.json()["scheduled_for"])
    assert before + timedelta(days=7) <= scheduled_for <= timezone.now() + timedelta(days=7)
    user.refresh_from_db()
    assert user.deletion_scheduled_for == scheduled_for
    # and every session and token of the account ended, the asking one too
    for client in (phone, laptop):
        assert client.get("/api/v1/me").status_code == 401
    assert browser.get("/api/v1/me").status_code == 401
    assert not ApiToken.objects.filter(user=user).exists()
    assert not AccountSession.objects.filter(account_id=user.pk).exists()
    # and an email says when, through the outbox; nothing is erased yet
    assert kinds(user) == [EmailDelivery.Kind.DELETION_SCHEDULED]
    assert not AccountErasure.objects.exists()


@pytest.mark.django_db
def test_during_the_grace_period_the_person_logs_in_sees_the_date_and_cancels(settings):
    # given an account scheduled for deletion
    settings.ACCOUNT_DELETION_GRACE_DAYS = 7
    user = verified_user()
    assert ask(token_client()).status_code == 202
    # when the person logs in again
    client = token_client()
    me = client.get("/api/v1/me").json()
    # then they see when it will be erased
    assert parse_datetime(me["deletion_scheduled_for"]) > timezone.now() + timedelta(days=6)
    # and when they cancel, it is no longer scheduled, and an email says so
    response = client.delete(URL)
    assert response.status_code == 200, response.content
    assert client.get("/api/v1/me").json()["deletion_scheduled_for"] is None
    assert kinds(user) == [
        EmailDelivery.Kind.DELETION_SCHEDULED,
        EmailDelivery.Kind.DELETION_CANCELLED,
    ]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "body", [{"password": "not the password"}, {}, {"password": ""}, {"password": ["a"]}]
)
def test_a_request_without_the_right_password_is_refused_and_changes_nothing(settings, body):
    # given an account logged in by token
    user = verified_user()
    client = token_client()
    # when it asks for the deletion without the right password
    response = client.post(URL, body, content_type="application/json")
    # then a 400 says which field is wrong, and the account, its token and mail are untouched
    assert response.status_code == 400, response.content
    assert "password" in response.json()["errors"]
    user.refresh_from_db()
    assert user.deletion_scheduled_for is None
    assert client.get("/api/v1/me").status_code == 200
    assert kinds(user) == []


@pytest.mark.django_db
def test_password_guesses_through_the_deletion_request_are_limited(settings):
    # given a stolen token, and the limit of attempts per address
    settings.ACCOUNT_EMAIL_RATE_PER_ADDRESS = "3/h"
    verified_user()
    client = token_client()
    # when it guesses the password again and again
    answers = [ask(client, password=f"guess {n}").status_code for n in range(5)]
    # then after the limit it is told to wait, even with the right password
    assert answers == [400, 400, 400, 429, 429]
    assert ask(client).status_code == 429


@pytest.mark.django_db
def test_cancel_with_nothing_scheduled_and_a_second_request_are_conflicts(settings):
    # given an account with nothing scheduled
    settings.ACCOUNT_DELETION_GRACE_DAYS = 7
    user = verified_user()
    # when it cancels, then it is told there is nothing to cancel
    response = token_client().delete(URL)
    assert response.status_code == 409
    assert response.json()["detail"] == "Your account is not scheduled for deletion."
    # when it asks twice (logging in again in between: the first request ended its token)
    assert ask(token_client()).status_code == 202
    second = ask(token_client())
    # then the second is refused with the date that stands, and sends no second email
    assert second.status_code == 409
    assert "already scheduled" in second.json()["detail"]
    assert kinds(user) == [EmailDelivery.Kind.DELETION_SCHEDULED]


@pytest.mark.django_db
def test_a_staff_account_cannot_delete_itself(settings):
    # given a staff account
    user = verified_user(is_staff=True)
    # when it asks for its deletion with the right password
    response = ask(token_client())
    # then it is refused: another administrator deactivates it in the admin
    assert response.status_code == 403
    assert "another administrator" in response.json()["detail"]
    user.refresh_from_db()
    assert user.deletion_scheduled_for is None


@pytest.mark.django_db
def test_anonymous_requests_are_refused():
    assert Client().post(
        URL, {"password": PASSWORD}, content_type="application/json"
    ).status_code in (
        401,
        403,
    )
    assert Client().delete(URL).status_code in (401, 403)


@pytest.mark.django_db(transaction=True)
def test_the_periodic_job_queues_one_erasure_per_ended_grace_period_however_often_it_runs(
    no_worker_running, settings
):
    # given two accounts whose grace period ended, one still in it, one cancelled
    settings.ACCOUNT_DELETION_GRACE_DAYS = 7
    ended = [verified_user(f"ended{n}@example.com") for n in range(2)]
    waiting = verified_user("waiting@example.com")
    for user in (*ended, waiting):
        assert ask(token_client(user.email)).status_code == 202
    User.objects.filter(pk__in=[user.pk for user in ended]).update(
        deletion_scheduled_for=timezone.now() - timedelta(minutes=1)
    )
    # when two runs of the periodic job happen at the same moment, then a third
    queued = at_the_same_moment(account_erasures_queue_due, account_erasures_queue_due)
    assert account_erasures_queue_due() == 0
    # then each ended account has one erasure queued, in one ordered task of its own key
    assert sum(queued) == 2
    erasures = AccountErasure.objects.order_by("user_id")
    assert [erasure.user_id for erasure in erasures] == [user.pk for user in ended]
    assert {erasure.status for erasure in erasures} == {AccountErasure.Status.QUEUED}
    tasks = OutboxMessage.objects.filter(task_name="accounts.erase_account")
    assert sorted(task.ordering_key for task in tasks) == [f"account:{u.pk}" for u in ended]
    # and the account still in its grace period has none
    assert not AccountErasure.objects.filter(user=waiting).exists()


@pytest.mark.django_db(transaction=True)
def test_a_cancel_while_the_erasure_is_queued_wins_and_the_queued_task_does_nothing(
    no_worker_running, start_worker, settings
):
    # given an account whose erasure is queued, no worker running yet
    settings.ACCOUNT_DELETION_GRACE_DAYS = 0
    user = verified_user()
    assert ask(token_client()).status_code == 202
    assert AccountErasure.objects.get(user=user).status == AccountErasure.Status.QUEUED
    # when the person logs in and cancels before any worker took the task
    assert token_client().delete(URL).status_code == 200
    # then the erasure is gone, and once a worker runs the queued task, nothing is erased
    assert not AccountErasure.objects.exists()
    start_worker()
    task = OutboxMessage.objects.get(task_name="accounts.erase_account")
    eventually(lambda: OutboxMessage.objects.get(pk=task.pk).finished_at is not None, timeout=30)
    user.refresh_from_db()
    assert user.is_active and user.deletion_scheduled_for is None
    assert token_client().get("/api/v1/me").status_code == 200


@pytest.mark.django_db
def test_staff_erase_an_account_from_the_admin_and_cannot_delete_its_row_alone():
    # given an administrator, a person's account and another staff account
    admin = User.objects.create_superuser("boss@example.com", PASSWORD)
    person, colleague = verified_user(), verified_user("colleague@example.com", is_staff=True)
    browser = Client()
    browser.force_login(admin)
    # when the administrator erases both with the admin's action
    response = browser.post(
        "/admin/accounts/user/",
        {"action": "erase_now", "_selected_action": [person.pk, colleague.pk]},
        follow=True,
    )
    # then the person's erasure is queued at once, and the staff account is left as it is
    assert response.status_code == 200
    assert "1 erasure(s) queued" in response.content.decode()
    assert AccountErasure.objects.get(user=person).status == AccountErasure.Status.QUEUED
    assert not AccountErasure.objects.filter(user=colleague).exists()
    # and deleting an account's row alone (its files, emails and jobs left behind) is not offered
    assert browser.get(f"/admin/accounts/user/{person.pk}/delete/").status_code == 403
