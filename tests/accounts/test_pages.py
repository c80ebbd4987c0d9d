"""The accounts web pages: forms with CSRF, the emailed links, sessions and abuse limits."""

import re

import pytest
from django.contrib.auth import SESSION_KEY, get_user_model
from django.test import Client
from django.utils import timezone

from accounts import tokens

User = get_user_model()
PASSWORD = "correct horse battery staple"
EMAIL_FORMS = ["/signup", "/login", "/resend-verification", "/password-reset"]


def verified_user(email: str = "grace@example.com"):
    return User.objects.create_user(email, PASSWORD, email_verified_at=timezone.now())


def emailed_link(message, path: str) -> str:
    """The path and query of the link in an email, as a browser would request it."""
    text = message.get_body(preferencelist=("plain",)).get_content()
    return re.search(rf"http://testserver(/{path}\?token=\S+)", text).group(1)


def hidden_token(response) -> str:
    """The token the page's form would send back."""
    return re.search(r'name="token" value="([^"]+)"', response.content.decode()).group(1)


def assert_forms_carry_csrf(response) -> None:
    content = response.content.decode()
    assert response.status_code == 200
    assert content.count('<form method="post"') == content.count('name="csrfmiddlewaretoken"')


def logged_in(client) -> bool:
    return SESSION_KEY in client.session


# --- Every page renders ----------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    "path",
    [
        "/",
        *EMAIL_FORMS,
        "/signup/check-email",
        "/verify-email/done",
        "/password-reset/sent",
        "/password-reset/done",
    ],
)
def test_public_pages_render_with_a_csrf_token_in_every_form(client, path):
    # when anyone opens the page
    response = client.get(path)
    # then it renders, and each of its forms carries a CSRF token
    assert_forms_carry_csrf(response)
    assert b"site.css" in response.content


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("path", "purpose"),
    [("/verify-email", tokens.PURPOSE_VERIFY), ("/password-reset/confirm", tokens.PURPOSE_RESET)],
)
def test_emailed_link_pages_render_a_form_with_a_csrf_token(client, path, purpose):
    # given a valid link
    token = tokens.token_make(purpose=purpose, user=User.objects.create_user("ada@example.com"))
    # when it is opened
    response = client.get(path, {"token": token})
    # then the page holds a form that posts the token back with a CSRF token
    assert_forms_carry_csrf(response)
    assert hidden_token(response) == token


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/", "/dashboard"])
def test_pages_for_a_logged_in_user_render_with_a_logout_form(client, path):
    # given a logged-in user
    client.force_login(verified_user())
    # when they open the page
    response = client.get(path)
    # then it renders with the logout form and its CSRF token
    assert_forms_carry_csrf(response)
    assert b'action="/logout"' in response.content


# --- The flows, through the real worker and SMTP server -------------------------------------


def test_signup_verify_login_logout_through_the_pages(client, smtp, celery_worker):
    # when someone signs up through the form
    response = client.post("/signup", {"email": "Ada@Example.com", "password": PASSWORD})
    # then they are sent to the "check your email" page
    assert response.status_code == 302 and response["Location"] == "/signup/check-email"
    assert b"Check your email" in client.get(response["Location"]).content
    # when they open the emailed link
    link = emailed_link(
        smtp.wait_for("ada@example.com", subject="Confirm your email"), "verify-email"
    )
    page = client.get(link)
    # then the page asks for a click, and opening it has not confirmed anything
    assert page.status_code == 200 and b"Confirm my email" in page.content
    assert not User.objects.get().email_verified
    # when they click the button
    confirmed = client.post("/verify-email", {"token": hidden_token(page)}, follow=True)
    # then the address is confirmed and the page leads to login
    assert confirmed.redirect_chain == [("/verify-email/done", 302)]
    assert b'href="/login"' in confirmed.content
    assert User.objects.get().email_verified
    smtp.wait_for("ada@example.com", subject="Welcome to Celery SaaS")
    # when they log in through the form
    response = client.post("/login", {"email": "ada@example.com", "password": PASSWORD})
    # then the dashboard shows their address
    assert response.status_code == 302 and response["Location"] == "/dashboard"
    dashboard = client.get("/dashboard")
    assert b"ada@example.com" in dashboard.content and b"Email confirmed" in dashboard.content
    # when they log out
    assert client.post("/logout")["Location"] == "/"
    # then the dashboard sends them to the login page
    assert client.get("/dashboard")["Location"] == "/login?next=/dashboard"


def test_password_reset_through_the_pages(client, smtp, celery_worker):
    # given a verified user
    verified_user()
    # when they ask for a reset through the form
    response = client.post("/password-reset", {"email": "grace@example.com"})
    assert response["Location"] == "/password-reset/sent"
    link = emailed_link(
        smtp.wait_for("grace@example.com", subject="Reset your password"), "password-reset/confirm"
    )
    # and open the emailed link (twice: opening it does not use it)
    assert client.get(link).status_code == 200
    page = client.get(link)
    assert page.status_code == 200 and b"New password" in page.content
    # and choose a new password
    new_password = "a brand new passphrase"
    response = client.post(
        "/password-reset/confirm", {"token": hidden_token(page), "password": new_password}
    )
    # then it is set, the link is spent, and a notice arrives
    assert response["Location"] == "/password-reset/done"
    assert client.get(link).status_code == 400
    smtp.wait_for("grace@example.com", subject="Your password was changed")
    # and only the new password logs in
    old = client.post("/login", {"email": "grace@example.com", "password": PASSWORD})
    assert old.status_code == 200 and not logged_in(client)
    new = client.post("/login", {"email": "grace@example.com", "password": new_password})
    assert new["Location"] == "/dashboard"
    assert b"grace@example.com" in client.get("/dashboard").content


# --- Emailed links ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_opening_the_verification_link_does_not_use_it(client):
    # given a verification link, as a mail scanner or a link preview would see it
    user = User.objects.create_user("ada@example.com", PASSWORD)
    token = tokens.token_make(purpose=tokens.PURPOSE_VERIFY, user=user)
    # when it is fetched again and again
    for _ in range(3):
        assert client.get("/verify-email", {"token": token}).status_code == 200
    assert client.head("/verify-email", {"token": token}).status_code == 200
    # then the address is still unconfirmed, and the link still works for the person
    user.refresh_from_db()
    assert not user.email_verified
    assert client.post("/verify-email", {"token": token})["Location"] == "/verify-email/done"
    user.refresh_from_db()
    assert user.email_verified


@pytest.mark.django_db
def test_a_used_verification_link_answers_400_with_a_way_to_a_new_one(client):
    # given a link that was used
    user = User.objects.create_user("ada@example.com", PASSWORD)
    token = tokens.token_make(purpose=tokens.PURPOSE_VERIFY, user=user)
    client.post("/verify-email", {"token": token})
    # when it is opened or posted again
    for response in (
        client.get("/verify-email", {"token": token}),
        client.post("/verify-email", {"token": token}),
    ):
        # then the page says so, and offers a new link and login
        assert response.status_code == 400
        assert b"already been used" in response.content
        assert b'href="/resend-verification"' in response.content
        assert b'href="/login"' in response.content


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("path", "purpose"),
    [("/verify-email", tokens.PURPOSE_VERIFY), ("/password-reset/confirm", tokens.PURPOSE_RESET)],
)
def test_a_tampered_link_answers_400_with_a_way_to_a_new_one(client, path, purpose):
    # given a valid link whose signature was altered
    token = tokens.token_make(purpose=purpose, user=verified_user())
    tampered = token[:-1] + ("A" if token[-1] != "A" else "B")
    # when it is opened
    response = client.get(path, {"token": tampered})
    # then the answer is a 400 page with a way to a new link
    assert response.status_code == 400
    assert b"This link is invalid or has expired." in response.content
    assert b"Send me a new link" in response.content


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/verify-email", "/password-reset/confirm"])
@pytest.mark.parametrize(
    "query", ["", "?token=", "?token=%00", "?token=%FF%FE", "?token=" + "a" * 10_000, "?token[]=x"]
)
def test_a_link_that_never_was_one_answers_400(client, path, query):
    # when a link with a missing, empty, NUL, non-UTF-8 or oversized token is opened
    response = client.get(path + query)
    # then the answer is the same 400 page, not a 500
    assert response.status_code == 400
    assert b"This link does not work" in response.content


@pytest.mark.django_db
def test_posting_a_tampered_reset_token_answers_400_and_changes_nothing(client):
    # given a reset link with a damaged signature
    user = verified_user()
    token = tokens.token_make(purpose=tokens.PURPOSE_RESET, user=user)
    tampered = token[:-1] + ("A" if token[-1] != "A" else "B")
    # when a new password is posted with it
    response = client.post(
        "/password-reset/confirm", {"token": tampered, "password": "a brand new passphrase"}
    )
    # then the answer is 400 and the password is unchanged
    assert response.status_code == 400
    user.refresh_from_db()
    assert user.check_password(PASSWORD)


@pytest.mark.django_db
def test_a_weak_new_password_is_a_form_error_and_keeps_the_link(client):
    # given a valid reset link
    user = verified_user()
    token = tokens.token_make(purpose=tokens.PURPOSE_RESET, user=user)
    # when a numeric password is posted
    response = client.post("/password-reset/confirm", {"token": token, "password": "12345678901"})
    # then the form says why, and the link still opens
    assert response.status_code == 200
    assert "This password is entirely numeric." in response.context["form"].errors["password"]
    assert client.get("/password-reset/confirm", {"token": token}).status_code == 200


# --- Signup ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_signup_answers_the_same_for_a_new_and_a_taken_address(client):
    # given an address that has an account
    verified_user("owner@example.com")
    # when both it and a new one sign up
    taken = client.post("/signup", {"email": "owner@example.com", "password": PASSWORD})
    fresh = client.post("/signup", {"email": "newcomer@example.com", "password": PASSWORD})
    # then the answers are the same, and the owner's password is untouched
    assert (taken.status_code, taken["Location"]) == (fresh.status_code, fresh["Location"])
    assert User.objects.get(email="owner@example.com").check_password(PASSWORD)


@pytest.mark.django_db
def test_signup_shows_the_password_validators_messages(client):
    # when someone signs up with a weak password
    response = client.post("/signup", {"email": "ada@example.com", "password": "12345678"})
    # then the form shows Django's validator messages, and nobody is signed up
    errors = response.context["form"].errors["password"]
    assert response.status_code == 200
    assert "This password is entirely numeric." in errors
    assert "This password is too common." in errors
    assert "This password is entirely numeric." in response.content.decode()
    assert not User.objects.exists()


# --- Login and logout ------------------------------------------------------------------------


@pytest.mark.django_db
def test_wrong_password_and_unknown_address_get_the_same_error(client):
    # given a verified user
    verified_user()
    # when one tries their address with a wrong password, and another an unknown address
    wrong = client.post("/login", {"email": "grace@example.com", "password": "not the password"})
    unknown = client.post("/login", {"email": "nobody@example.com", "password": PASSWORD})
    # then both get the same single error and no session
    for response in (wrong, unknown):
        assert response.status_code == 200
        assert response.context["form"].errors == {"__all__": ["Email or password is incorrect."]}
    assert not logged_in(client)


@pytest.mark.django_db
def test_unverified_login_says_so_and_offers_a_new_link(client):
    # given a user who never confirmed their address
    User.objects.create_user("ada@example.com", PASSWORD)
    # when they log in with the right password
    response = client.post("/login", {"email": "ada@example.com", "password": PASSWORD})
    # then they are told to confirm first, with a link to a new email, and get no session
    assert response.status_code == 200
    assert b"Confirm your email address first" in response.content
    assert b'href="/resend-verification"' in response.content
    assert not logged_in(client)


@pytest.mark.django_db
def test_login_returns_to_the_page_that_asked_for_it(client):
    # given a visitor sent to login by the dashboard
    verified_user()
    login_page = client.get(client.get("/dashboard?tab=reports")["Location"])
    assert b'name="next" value="/dashboard?tab=reports"' in login_page.content
    # when they log in with that next
    response = client.post(
        "/login",
        {"email": "grace@example.com", "password": PASSWORD, "next": "/dashboard?tab=reports"},
    )
    # then they go back there
    assert response["Location"] == "/dashboard?tab=reports"


@pytest.mark.django_db
@pytest.mark.parametrize(
    "next_url",
    [
        "https://evil.example/",
        "//evil.example/",
        "http:///evil.example/",
        "/\\evil.example",
        "javascript:alert(1)",
        "\x00//evil.example",
    ],
)
def test_login_ignores_a_next_that_leaves_the_site(client, next_url):
    # given a login link crafted to send people elsewhere afterwards
    verified_user()
    # when someone logs in through it
    response = client.post(
        "/login", {"email": "grace@example.com", "password": PASSWORD, "next": next_url}
    )
    # then they land on the dashboard instead
    assert response.status_code == 302 and response["Location"] == "/dashboard"


@pytest.mark.django_db
def test_logout_takes_only_a_post_with_a_csrf_token():
    # given a logged-in browser that checks CSRF as real ones do
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(verified_user())
    # when logout is a GET, or a POST from another site (no token)
    # then neither logs out
    assert browser.get("/logout").status_code == 405
    assert browser.post("/logout").status_code == 403
    assert logged_in(browser)
    # when the page's own form posts it
    token = re.search(
        r'name="csrfmiddlewaretoken" value="([^"]+)"', browser.get("/").content.decode()
    ).group(1)
    response = browser.post("/logout", {"csrfmiddlewaretoken": token})
    # then the session ends and the browser goes home
    assert response["Location"] == "/"
    assert not logged_in(browser)


# --- Abuse limits and bad input -------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/password-reset", "/resend-verification"])
def test_email_sending_forms_answer_429_with_retry_after_past_the_per_address_limit(
    client, settings, path
):
    # given a limit of two emails an hour per address
    settings.ACCOUNT_EMAIL_RATE_PER_ADDRESS = "2/h"
    verified_user()
    # when the form is sent three times for one address
    answers = [client.post(path, {"email": "grace@example.com"}) for _ in range(3)]
    # then the first two go through, and the third is refused with when to try again
    assert [answer.status_code for answer in answers] == [302, 302, 429]
    refused = answers[2]
    assert 0 < int(refused["Retry-After"]) <= 3600
    assert b"Try again in" in refused.content


@pytest.mark.django_db
def test_password_reset_answers_the_same_for_every_address(client):
    # given one address with an account
    verified_user()
    # when a reset is asked for it and for an unknown one
    known = client.post("/password-reset", {"email": "grace@example.com"})
    unknown = client.post("/password-reset", {"email": "nobody@example.com"})
    # then the answers are the same
    assert (known.status_code, known["Location"]) == (unknown.status_code, unknown["Location"])


@pytest.mark.django_db
@pytest.mark.parametrize("path", EMAIL_FORMS)
def test_email_forms_refuse_crlf_in_the_address(client, path):
    # when an address carries an injected header
    response = client.post(
        path, {"email": "ada@example.com\r\nBcc: victim@example.com", "password": PASSWORD}
    )
    # then the form says the address is invalid, and nothing was created
    assert response.status_code == 200
    assert response.context["form"].errors["email"] == ["Enter a valid email address."]
    assert not User.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("path", [*EMAIL_FORMS, "/password-reset/confirm"])
@pytest.mark.parametrize(
    "body",
    [
        "",
        "email=" + "a" * 10_000 + "@example.com&password=" + "p" * 10_000,
        "email=ada%00@example.com&password=correct%00horse",
        "email=%FF%FEada@example.com&password=%ED%A0%80",
        "email[]=ada@example.com&password=x&password=y",
    ],
)
def test_malformed_form_bodies_are_form_errors_not_500s(client, path, body):
    # when a form arrives missing fields, oversized, with NUL or with bytes that are not UTF-8
    response = client.post(path, body, content_type="application/x-www-form-urlencoded")
    # then it is refused as a client error, with the form or the link page explaining why
    assert response.status_code in {200, 400}
    assert not User.objects.exists()
    if response.status_code == 200:
        assert response.context["form"].errors


@pytest.mark.django_db
@pytest.mark.parametrize("password", ["", "correct%00horse battery", "p" * 10_000])
def test_a_malformed_new_password_is_a_form_error_with_a_valid_link(client, password):
    # given a valid reset link
    user = verified_user()
    token = tokens.token_make(purpose=tokens.PURPOSE_RESET, user=user)
    # when the new password is missing, holds NUL or is oversized
    response = client.post(
        "/password-reset/confirm",
        f"token={token}&password={password}",
        content_type="application/x-www-form-urlencoded",
    )
    # then the form says so and the old password still works
    assert response.status_code == 200
    assert response.context["form"].errors["password"]
    user.refresh_from_db()
    assert user.check_password(PASSWORD)
