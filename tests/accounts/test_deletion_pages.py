"""The account deletion pages: the request with the password, the logout it brings, the banner
and the cancel."""

import re
from datetime import timedelta

import pytest
from django.contrib.auth import SESSION_KEY, get_user_model
from django.test import Client
from django.utils import dateformat, timezone

from accounts.models import AccountErasure, EmailDelivery
from tests.accounts.test_pages import PASSWORD, assert_forms_carry_csrf, logged_in, verified_user

User = get_user_model()


def shown_date(moment) -> str:
    """A date as the pages write it, before " UTC"."""
    return dateformat.format(moment, "j F Y, H:i")


def scheduled_user(email: str = "grace@example.com"):
    user = verified_user(email)
    user.deletion_scheduled_for = timezone.now() + timedelta(days=7)
    user.save(update_fields=["deletion_scheduled_for"])
    return user


def banner(response) -> str:
    """The deletion banner of a page, or "" when it has none."""
    found = re.search(r'<div class="deletion-banner".*?</div>', response.content.decode(), re.S)
    return found.group(0) if found else ""


def email_kinds() -> list[str]:
    return list(EmailDelivery.objects.values_list("kind", flat=True))


# --- The pages render ------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_page_explains_and_asks_for_the_password_with_a_csrf_token(client, settings):
    # given a logged-in user and a grace period of a week
    settings.ACCOUNT_DELETION_GRACE_DAYS = 7
    client.force_login(verified_user())
    # when they open the page
    response = client.get("/account/delete")
    # then it says what happens, and its forms carry CSRF tokens
    assert_forms_carry_csrf(response)
    content = response.content.decode()
    assert "erased for good 7 days after you ask" in content
    assert "cancel the deletion" in content
    assert "logged out at once" in content
    assert 'name="password"' in content
    assert response["Cache-Control"].startswith("max-age=0")


@pytest.mark.django_db
def test_without_a_grace_period_the_page_says_the_erasure_is_at_once(client, settings):
    # given no grace period
    settings.ACCOUNT_DELETION_GRACE_DAYS = 0
    client.force_login(verified_user())
    # when the page is opened
    response = client.get("/account/delete")
    # then it says the data goes straight away
    assert b"erased for good, straight away" in response.content


@pytest.mark.django_db
def test_the_page_asks_to_log_in_first(client):
    # when an anonymous visitor opens the page or posts to it
    for response in (
        client.get("/account/delete"),
        client.post("/account/delete", {"password": PASSWORD}),
    ):
        # then they are sent to the login page, which returns them here
        assert response.status_code == 302
        assert response["Location"] == "/login?next=/account/delete"


@pytest.mark.django_db
def test_the_dashboard_links_to_the_page(client):
    # given a logged-in user
    client.force_login(verified_user())
    # when they open the dashboard
    response = client.get("/dashboard")
    # then it links to the deletion page, and shows no banner
    assert b'href="/account/delete"' in response.content
    assert banner(response) == ""


# --- The request -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_wrong_password_is_a_form_error_and_schedules_nothing(client):
    # given a logged-in user
    user = verified_user()
    client.force_login(user)
    # when they ask for the deletion with a wrong password
    response = client.post("/account/delete", {"password": "not the password"})
    # then the form says so, and nothing is scheduled, sent, or logged out
    assert response.status_code == 200
    assert response.context["form"].errors == {"password": ["The password is not right."]}
    assert "The password is not right." in response.content.decode()
    user.refresh_from_db()
    assert user.deletion_scheduled_for is None
    assert email_kinds() == []
    assert logged_in(client)


@pytest.mark.django_db
def test_the_right_password_schedules_the_deletion_and_logs_out_every_session(client, settings):
    # given a user logged in in two browsers, and a grace period of a week
    settings.ACCOUNT_DELETION_GRACE_DAYS = 7
    user = verified_user()
    client.force_login(user)
    other_browser = Client()
    other_browser.force_login(user)
    # when they ask for the deletion with their password in one of them
    asked_at = timezone.now()
    response = client.post("/account/delete", {"password": PASSWORD})
    # then the deletion is scheduled a week on, and the email saying so is on its way
    user.refresh_from_db()
    assert user.deletion_scheduled_for - asked_at >= timedelta(days=7)
    assert email_kinds() == [EmailDelivery.Kind.DELETION_SCHEDULED]
    # and the page shows the date, to a browser that is logged out
    assert response.status_code == 200
    assert f"{shown_date(user.deletion_scheduled_for)} UTC" in response.content.decode()
    assert SESSION_KEY not in client.session
    assert b'action="/logout"' not in response.content
    # and the other browser is logged out too
    assert not logged_in(other_browser)
    assert other_browser.get("/dashboard")["Location"] == "/login?next=/dashboard"


@pytest.mark.django_db
def test_without_a_grace_period_the_erasure_is_queued_at_once(client, settings):
    # given no grace period
    settings.ACCOUNT_DELETION_GRACE_DAYS = 0
    user = verified_user()
    client.force_login(user)
    # when the user asks for the deletion
    response = client.post("/account/delete", {"password": PASSWORD})
    # then the erasure is queued, the page says it is under way, and no date email is sent
    assert response.status_code == 200
    assert b"Your account is being deleted" in response.content
    assert AccountErasure.objects.filter(user=user).exists()
    assert EmailDelivery.Kind.DELETION_SCHEDULED not in email_kinds()
    assert not logged_in(client)


@pytest.mark.django_db
def test_password_guesses_answer_429_past_the_limit(client, settings):
    # given a limit of two attempts an hour per address
    settings.ACCOUNT_EMAIL_RATE_PER_ADDRESS = "2/h"
    user = verified_user()
    client.force_login(user)
    # when three passwords are tried, the right one last
    answers = [
        client.post("/account/delete", {"password": password})
        for password in ("guess one", "guess two", PASSWORD)
    ]
    # then the third is refused with when to try again, and nothing is scheduled
    assert [answer.status_code for answer in answers] == [200, 200, 429]
    assert 0 < int(answers[2]["Retry-After"]) <= 3600
    user.refresh_from_db()
    assert user.deletion_scheduled_for is None


@pytest.mark.django_db
@pytest.mark.parametrize(
    "body", ["", "password=", "password=" + "p" * 10_000, "password[]=x&password=y%00"]
)
def test_a_malformed_password_is_a_form_error_not_a_500(client, body):
    # given a logged-in user
    user = verified_user()
    client.force_login(user)
    # when the form arrives without a password, oversized, or with NUL
    response = client.post(
        "/account/delete", body, content_type="application/x-www-form-urlencoded"
    )
    # then the form says so, and nothing is scheduled
    assert response.status_code == 200
    assert response.context["form"].errors
    user.refresh_from_db()
    assert user.deletion_scheduled_for is None


@pytest.mark.django_db
def test_the_request_takes_only_a_post_with_a_csrf_token():
    # given a logged-in browser that checks CSRF as real ones do
    browser = Client(enforce_csrf_checks=True)
    user = verified_user()
    browser.force_login(user)
    # when another site posts the password to the page (no token)
    response = browser.post("/account/delete", {"password": PASSWORD})
    # then it is refused, and nothing is scheduled
    assert response.status_code == 403
    user.refresh_from_db()
    assert user.deletion_scheduled_for is None


@pytest.mark.django_db
def test_a_staff_account_gets_no_form_and_its_post_schedules_nothing(client):
    # given a logged-in staff member
    staff = verified_user("admin@example.com")
    staff.is_staff = True
    staff.save(update_fields=["is_staff"])
    client.force_login(staff)
    # when they open the page
    page = client.get("/account/delete")
    # then it says why they cannot, with no password form
    assert page.status_code == 200
    assert b"A staff account cannot delete itself" in page.content
    assert b'name="password"' not in page.content
    # when they post their password anyway
    response = client.post("/account/delete", {"password": PASSWORD})
    # then it is refused, nothing is scheduled, and they stay logged in
    assert response.status_code == 403
    assert b"A staff account cannot delete itself" in response.content
    staff.refresh_from_db()
    assert staff.deletion_scheduled_for is None
    assert email_kinds() == []
    assert logged_in(client)


# --- While it is scheduled: the banner and the cancel ----------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/", "/dashboard", "/uploads"])
def test_every_page_shows_the_banner_with_a_cancel_form(client, path):
    # given a user whose deletion is scheduled, logged in again
    user = scheduled_user()
    client.force_login(user)
    # when they open a page
    response = client.get(path)
    # then the banner shows the date, with a cancel form that carries a CSRF token
    assert response.status_code == 200
    shown = banner(response)
    date = shown_date(user.deletion_scheduled_for)
    assert f"Your account will be deleted on {date} UTC." in shown
    assert '<form method="post" action="/account/delete">' in shown
    assert 'name="action" value="cancel"' in shown
    assert 'name="csrfmiddlewaretoken"' in shown


@pytest.mark.django_db
def test_the_page_shows_the_date_and_a_cancel_button_instead_of_the_form(client):
    # given a user whose deletion is scheduled, logged in again
    user = scheduled_user()
    client.force_login(user)
    # when they open the deletion page
    response = client.get("/account/delete")
    # then it shows the date and one cancel form, and asks for no password
    content = response.content.decode()
    assert_forms_carry_csrf(response)
    assert f"{shown_date(user.deletion_scheduled_for)} UTC" in content
    assert content.count('name="action" value="cancel"') == 1
    assert 'name="password"' not in content


@pytest.mark.django_db
def test_cancel_from_the_banner_clears_the_schedule(client):
    # given a user whose deletion is scheduled, on their dashboard
    user = scheduled_user()
    client.force_login(user)
    assert banner(client.get("/dashboard"))
    # when they press the banner's cancel button
    response = client.post("/account/delete", {"action": "cancel"}, follow=True)
    # then the deletion is cancelled, the page says so, and an email confirms it
    assert response.redirect_chain == [("/account/delete/cancelled", 302)]
    assert b"The deletion is cancelled" in response.content
    user.refresh_from_db()
    assert user.deletion_scheduled_for is None
    assert email_kinds() == [EmailDelivery.Kind.DELETION_CANCELLED]
    # and the banner is gone, the user still logged in
    assert banner(client.get("/dashboard")) == ""
    assert logged_in(client)


@pytest.mark.django_db
def test_a_cancel_with_nothing_scheduled_says_so(client):
    # given a user with no deletion scheduled
    client.force_login(verified_user())
    # when a cancel is posted (a second tab, a button pressed twice)
    response = client.post("/account/delete", {"action": "cancel"})
    # then the page says nothing is scheduled, and sends no email
    assert response.status_code == 409
    assert b"Your account is not scheduled for deletion." in response.content
    assert email_kinds() == []


@pytest.mark.django_db
def test_a_cancel_once_the_erasure_started_is_refused(client):
    # given a user whose erasure has started
    user = scheduled_user()
    AccountErasure.objects.create(
        user=user, account_hash="0" * 64, status=AccountErasure.Status.RUNNING
    )
    client.force_login(user)
    # when they press cancel
    response = client.post("/account/delete", {"action": "cancel"})
    # then the page says it is too late, and the deletion stays scheduled
    assert response.status_code == 409
    assert b"cannot be cancelled now" in response.content
    user.refresh_from_db()
    assert user.deletion_scheduled_for is not None


@pytest.mark.django_db
def test_a_second_request_while_scheduled_says_so(client):
    # given a user whose deletion is scheduled, logged in again (a stale tab still has the form)
    user = scheduled_user()
    client.force_login(user)
    scheduled_for = user.deletion_scheduled_for
    # when the password is posted again
    response = client.post("/account/delete", {"password": PASSWORD})
    # then the page says it is scheduled already, the date unchanged
    assert response.status_code == 409
    assert b"already scheduled for deletion" in response.content
    user.refresh_from_db()
    assert user.deletion_scheduled_for == scheduled_for
    assert logged_in(client)
