"""Password guessing is locked by failures, on every login path, without locking owners out."""

import time

import pytest
from django.test import Client

from accounts import throttling, tokens
from accounts.models import User
from tests.accounts.test_email_flow import post

PASSWORD = "correct horse battery staple"
ATTACKER = {"REMOTE_ADDR": "203.0.113.9"}
# No test here needs a worker; the work they enqueue (emails) must not run while the test's
# tables are flushed.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("no_worker_running")]


@pytest.fixture
def owner():
    return User.objects.create_user(
        "owner@example.com", PASSWORD, email_verified_at="2026-01-01T00:00Z"
    )


def login(client, password: str, **extra):
    return post(client, "auth/login", {"email": "owner@example.com", "password": password}, **extra)


def admin_login(client, password: str):
    return client.post(
        "/admin/login/", {"username": "owner@example.com", "password": password, "next": "/admin/"}
    )


def test_the_lock_doubles_with_each_failure_past_the_free_ones_up_to_the_cap(settings):
    settings.ACCOUNT_LOGIN_MAX_LOCK_SECONDS = 900
    locks = [throttling.login_lock_seconds(n, free_failures=5) for n in range(1, 20)]
    assert locks == [0] * 5 + [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 900, 900, 900, 900]


def test_successful_logins_are_never_counted(client, owner):
    # a person (or an app) logging in often is not a guesser
    assert {login(client, PASSWORD).status_code for _ in range(30)} == {200}


def test_failures_lock_the_address_with_retry_after_and_the_owners_browser_still_gets_in(
    client, settings, owner
):
    settings.ACCOUNT_LOGIN_FREE_FAILURES = 3
    # given the owner, logged in once from their browser (which keeps its device cookie)
    browser = Client()
    assert login(browser, PASSWORD).status_code == 200
    assert throttling.DEVICE_COOKIE in browser.cookies
    # when a stranger fails on purpose from elsewhere
    statuses = [login(client, "a wrong guess", **ATTACKER).status_code for _ in range(6)]
    # then the stranger is locked after the free failures, for a time that is said
    assert statuses[:4] == [400, 400, 400, 400] and statuses[-1] == 429
    refused = login(client, PASSWORD, **ATTACKER)
    assert refused.status_code == 429 and int(refused["Retry-After"]) >= 1
    # a browser the owner never used is locked too (no way to tell it from the stranger)
    assert login(Client(), PASSWORD).status_code == 429
    # but the owner's own browser gets in at once
    assert login(browser, PASSWORD).status_code == 200


def test_a_device_cookie_for_another_address_or_forged_counts_for_nothing(client, settings, owner):
    settings.ACCOUNT_LOGIN_FREE_FAILURES = 1
    User.objects.create_user("other@example.com", PASSWORD, email_verified_at="2026-01-01T00:00Z")
    other = Client()
    post(other, "auth/login", {"email": "other@example.com", "password": PASSWORD})
    for _ in range(3):
        login(client, "a wrong guess")
    assert login(other, PASSWORD).status_code == 429
    forged = Client()
    forged.cookies[throttling.DEVICE_COOKIE] = "forged:value"
    assert login(forged, PASSWORD).status_code == 429


def test_a_reset_through_the_emailed_link_unlocks_the_address(client, settings, owner):
    settings.ACCOUNT_LOGIN_FREE_FAILURES = 1
    for _ in range(4):
        login(client, "a wrong guess", **ATTACKER)
    assert login(Client(), PASSWORD).status_code == 429
    # when the owner resets the password through the link (it proves the mailbox)
    token = tokens.token_make(purpose=tokens.PURPOSE_RESET, user=owner)
    new = {"token": token, "password": "a new passphrase 42"}
    assert post(client, "auth/password-reset/confirm", new).status_code == 200
    # then a browser without a device cookie gets in again
    assert login(Client(), "a new passphrase 42").status_code == 200


def test_the_lock_lasts_only_as_long_as_it_says(client, settings, owner):
    settings.ACCOUNT_LOGIN_FREE_FAILURES = 0
    assert login(client, "a wrong guess").status_code == 400  # locked for 1 s
    refused = login(client, PASSWORD)
    assert refused.status_code == 429 and refused["Retry-After"] == "1"
    time.sleep(1.1)
    assert login(client, PASSWORD).status_code == 200


def test_the_admin_login_shares_the_lock_both_ways(client, settings, owner):
    settings.ACCOUNT_LOGIN_FREE_FAILURES = 2
    User.objects.filter(pk=owner.pk).update(is_staff=True, is_superuser=True)
    # failures on the API lock the admin login
    for _ in range(3):
        login(client, "a wrong guess")
    page = admin_login(Client(), PASSWORD)
    assert page.status_code == 200 and "Too many attempts" in page.content.decode()
    # and failures on the admin login lock the API
    throttling.login_failures_clear(email="owner@example.com")
    for _ in range(3):
        assert "Too many attempts" not in admin_login(Client(), "a wrong guess").content.decode()
    assert login(Client(), PASSWORD).status_code == 429
    # once unlocked, the right password opens the admin
    throttling.login_failures_clear(email="owner@example.com")
    assert admin_login(Client(), PASSWORD).status_code == 302


def test_the_login_page_answers_429_while_locked(client, settings, owner):
    settings.ACCOUNT_LOGIN_FREE_FAILURES = 0
    form = {"email": "owner@example.com", "password": "a wrong guess"}
    assert client.post("/login", form).status_code == 200  # the form, with its error
    locked = client.post("/login", {**form, "password": PASSWORD})
    assert locked.status_code == 429 and locked.has_header("Retry-After")


def test_an_owner_logging_in_changes_nothing_a_stranger_can_see(client, settings, owner):
    # given one free failure per address, and the owner's browser
    settings.ACCOUNT_LOGIN_FREE_FAILURES = 1
    browser = Client()
    login(browser, PASSWORD)

    def probe(email: str) -> list[int]:
        guess = {"email": email, "password": "a wrong guess"}
        first = post(client, "auth/login", guess, **ATTACKER).status_code
        login(browser, PASSWORD)  # the owner logs in meanwhile, as they do every day
        return [first, *(post(client, "auth/login", guess, **ATTACKER).status_code for _ in "ab")]

    # then a stranger's probes answer alike for the owner's address and an unknown one: a
    # successful login does not clear the address's failures
    assert probe("owner@example.com") == probe("nobody@example.com") == [400, 400, 429]


def test_the_owners_own_typos_on_their_browser_never_add_up_to_a_lock(client, settings, owner):
    settings.ACCOUNT_LOGIN_FREE_FAILURES = 2
    browser = Client()
    login(browser, PASSWORD)
    for _ in range(4):  # typo, typo, success, again and again
        typos = [login(browser, typo).status_code for typo in ("a typo", "another typo")]
        assert typos == [400, 400]
        assert login(browser, PASSWORD).status_code == 200


def test_the_device_cookie_cannot_be_tested_against_a_list_of_addresses(client, owner):
    import hashlib

    from django.core import signing

    login(client, PASSWORD)
    payload = signing.loads(
        client.cookies[throttling.DEVICE_COOKIE].value, salt="accounts.login-device"
    )
    assert payload["a"] != hashlib.sha256(b"owner@example.com").hexdigest()[:32]
    assert "owner" not in str(payload)
