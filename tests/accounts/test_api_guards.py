"""No enumeration, abuse limits, expiring single-use tokens, and 4xx for every bad input."""

import json
import math
import statistics
import time
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core import signing

from accounts import tokens
from accounts.models import ApiToken
from jobs.models import OutboxMessage

User = get_user_model()
PASSWORD = "correct horse battery staple"
VERIFIED = "2026-01-01T00:00Z"
# No test here needs a worker; the work they enqueue (emails) must not run while the test's
# tables are flushed.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("no_worker_running")]


def post(client, path, body, **extra):
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    return client.post(f"/api/v1/{path}", data, content_type="application/json", **extra)


@pytest.fixture
def known_users():
    User.objects.create_user("verified@example.com", PASSWORD, email_verified_at=VERIFIED)
    User.objects.create_user("unverified@example.com", PASSWORD)


# --- enumeration ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["auth/signup", "auth/resend-verification", "auth/password-reset"])
def test_known_unknown_and_unverified_addresses_get_the_same_answer(client, known_users, path):
    answers = set()
    for email in ("verified@example.com", "unverified@example.com", "stranger@example.com"):
        response = post(client, path, {"email": email, "password": "a good long passphrase"})
        answers.add((response.status_code, response.content))
    assert len(answers) == 1
    assert answers.pop()[0] == 202


def test_signup_takes_about_as_long_for_a_taken_address_as_for_a_new_one(client, known_users):
    # the password is hashed on both paths; without that, "taken" answers ~100x faster
    def timed(email: str) -> float:
        started = time.perf_counter()
        post(client, "auth/signup", {"email": email, "password": "a good long passphrase"})
        return time.perf_counter() - started

    taken = statistics.median(timed("verified@example.com") for _ in range(5))
    fresh = statistics.median(timed(f"new{i}@example.com") for i in range(5))
    assert 0.5 < taken / fresh < 2.0, (taken, fresh)


def rank_sum_p_value(first: list[float], second: list[float]) -> float:
    """Two-sided p-value of the Mann-Whitney U test (normal approximation, fine from ~20
    samples each): how likely samples this far apart are if both come from one distribution."""
    ranked = sorted([(value, 0) for value in first] + [(value, 1) for value in second])
    rank_sum = sum(rank for rank, (_, group) in enumerate(ranked, start=1) if group == 0)
    n1, n2 = len(first), len(second)
    u = rank_sum - n1 * (n1 + 1) / 2
    z = (u - n1 * n2 / 2) / math.sqrt(n1 * n2 * (n1 + n2 + 1) / 12)
    return math.erfc(abs(z) / math.sqrt(2))


@pytest.mark.parametrize(
    ("path", "existing"),
    [
        ("auth/password-reset", "verified@example.com"),
        ("auth/resend-verification", "unverified@example.com"),
    ],
)
def test_reset_and_resend_take_as_long_for_an_account_as_for_an_unknown_address(
    client, settings, known_users, path, existing
):
    # given limits that do not get in the way of 100 requests
    settings.ACCOUNT_EMAIL_RATE_PER_ADDRESS = settings.ACCOUNT_EMAIL_RATE_PER_IP = "1000/m"

    def timed(email: str) -> float:
        started = time.perf_counter()
        assert post(client, path, {"email": email}).status_code == 202
        return time.perf_counter() - started

    for _ in range(5):  # warm-up: first requests pay for imports and connections
        timed(existing)
        timed("stranger@example.com")
    # when both are timed, interleaved so that drift on the machine hits both alike
    account, unknown = [], []
    for i in range(40):
        account.append(timed(existing))
        unknown.append(timed(f"stranger{i}@example.com"))
    # then the two distributions cannot be told apart: not both significantly and materially
    # different (before, an account took 15-23 ms and an unknown address 9-14 ms)
    ratio = statistics.median(account) / statistics.median(unknown)
    p_value = rank_sum_p_value(account, unknown)
    assert p_value > 0.001 or 0.87 < ratio < 1.15, (p_value, ratio)


def test_login_answers_the_same_for_an_unknown_address_and_a_wrong_password(client, known_users):
    unknown = post(client, "auth/login", {"email": "stranger@example.com", "password": PASSWORD})
    wrong = post(
        client, "auth/login", {"email": "verified@example.com", "password": "not it at all"}
    )
    assert unknown.status_code == wrong.status_code == 400
    assert (
        unknown.json()
        == wrong.json()
        == {"detail": "Email or password is incorrect.", "errors": {}}
    )


def test_an_unverified_account_gets_403_only_after_the_right_password(client, known_users):
    wrong = post(client, "auth/login", {"email": "unverified@example.com", "password": "nope nope"})
    right = post(client, "auth/login", {"email": "unverified@example.com", "password": PASSWORD})
    assert wrong.status_code == 400
    assert right.status_code == 403
    assert not ApiToken.objects.exists()


# --- abuse limits --------------------------------------------------------------------------


def test_reset_requests_are_limited_per_address_with_retry_after(client, settings, known_users):
    settings.ACCOUNT_EMAIL_RATE_PER_ADDRESS = "3/h"
    statuses = [
        post(client, "auth/password-reset", {"email": "verified@example.com"}).status_code
        for _ in range(4)
    ]
    assert statuses == [202, 202, 202, 429]
    refused = post(client, "auth/password-reset", {"email": "Verified@Example.com"})
    assert refused.status_code == 429
    assert 0 < int(refused["Retry-After"]) <= 3600
    assert refused.json()["detail"].startswith("Too many attempts")
    assert OutboxMessage.objects.filter(task_name="accounts.send_password_reset_email").count() == 3
    # another address is not affected
    assert post(client, "auth/password-reset", {"email": "other@example.com"}).status_code == 202


def test_resend_is_limited_per_client_ip(client, settings):
    settings.ACCOUNT_EMAIL_RATE_PER_IP = "2/m"
    statuses = [
        post(client, "auth/resend-verification", {"email": f"u{i}@example.com"}).status_code
        for i in range(3)
    ]
    assert statuses == [202, 202, 429]
    # a different client is not affected
    other = post(
        client, "auth/resend-verification", {"email": "x@example.com"}, REMOTE_ADDR="10.9.9.9"
    )
    assert other.status_code == 202


def test_x_forwarded_for_counts_only_from_a_trusted_proxy(client, settings):
    settings.ACCOUNT_EMAIL_RATE_PER_IP = "1/m"
    # from an untrusted client, a forged header does not buy a fresh quota
    first = post(
        client,
        "auth/resend-verification",
        {"email": "a@example.com"},
        HTTP_X_FORWARDED_FOR="1.1.1.1",
    )
    forged = post(
        client,
        "auth/resend-verification",
        {"email": "b@example.com"},
        HTTP_X_FORWARDED_FOR="2.2.2.2",
    )
    assert (first.status_code, forged.status_code) == (202, 429)
    # behind the trusted proxy, each real client has its own quota
    settings.TRUSTED_PROXIES = ["10.0.0.1"]
    behind = {"REMOTE_ADDR": "10.0.0.1"}
    one = post(
        client,
        "auth/resend-verification",
        {"email": "c@example.com"},
        HTTP_X_FORWARDED_FOR="3.3.3.3",
        **behind,
    )
    two = post(
        client,
        "auth/resend-verification",
        {"email": "d@example.com"},
        HTTP_X_FORWARDED_FOR="4.4.4.4",
        **behind,
    )
    again = post(
        client,
        "auth/resend-verification",
        {"email": "e@example.com"},
        HTTP_X_FORWARDED_FOR="9.9.9.9, 4.4.4.4",
        **behind,
    )
    assert (one.status_code, two.status_code, again.status_code) == (202, 202, 429)


def test_trusted_proxies_may_be_networks_and_a_header_from_anyone_else_is_logged(
    client, settings, caplog, monkeypatch
):
    from accounts import throttling

    monkeypatch.setattr(throttling, "_last_warning", -math.inf)  # no warning logged yet
    settings.ACCOUNT_EMAIL_RATE_PER_IP = "1/m"
    settings.TRUSTED_PROXIES = ["10.0.0.0/8"]

    def resend(email: str, **extra) -> int:
        return post(client, "auth/resend-verification", {"email": email}, **extra).status_code

    # behind any proxy of the network, each client has its own bucket
    assert resend("a@example.com", REMOTE_ADDR="10.1.2.3", HTTP_X_FORWARDED_FOR="3.3.3.3") == 202
    assert resend("b@example.com", REMOTE_ADDR="10.9.8.7", HTTP_X_FORWARDED_FOR="4.4.4.4") == 202
    assert resend("c@example.com", REMOTE_ADDR="10.9.8.7", HTTP_X_FORWARDED_FOR="3.3.3.3") == 429
    # a forwarded header from a peer outside it is ignored, and the log says how that fails
    assert resend("d@example.com", REMOTE_ADDR="192.0.2.1", HTTP_X_FORWARDED_FOR="5.5.5.5") == 202
    assert "192.0.2.1, which is not in TRUSTED_PROXIES" in caplog.text


def test_limits_fail_open_when_redis_is_down_so_resets_still_work(
    client, redis_server, known_users
):
    redis_server.stop()
    response = post(client, "auth/password-reset", {"email": "verified@example.com"})
    assert response.status_code == 202
    # the request's work waits in the outbox for the broker
    assert OutboxMessage.objects.get().kwargs == {"email": "verified@example.com"}


# --- tokens --------------------------------------------------------------------------------


def test_expired_tampered_and_foreign_tokens_are_refused(client, settings, known_users):
    user = User.objects.get(email="unverified@example.com")
    good = tokens.token_make(purpose=tokens.PURPOSE_VERIFY, user=user)
    reset = tokens.token_make(purpose=tokens.PURPOSE_RESET, user=user)
    tampered = good[:-3] + ("AAA" if not good.endswith("AAA") else "BBB")
    forged = signing.dumps(
        {"u": user.pk, "s": "x"}, salt=tokens.PURPOSE_VERIFY, key="not-our-secret"
    )
    for bad in (tampered, forged, reset, "", "garbage", "a" * 600):
        response = post(client, "auth/verify-email", {"token": bad})
        assert response.status_code == 400, bad
    settings.EMAIL_VERIFICATION_MAX_AGE = 0
    time.sleep(1.1)
    expired = post(client, "auth/verify-email", {"token": good})
    assert expired.status_code == 400
    assert "expired" in expired.json()["detail"]


def test_a_reset_token_is_single_use_and_dies_when_the_password_changes_anyway(client, known_users):
    user = User.objects.get(email="verified@example.com")
    token = tokens.token_make(purpose=tokens.PURPOSE_RESET, user=user)
    user.set_password("changed some other way")
    user.save()
    response = post(
        client, "auth/password-reset/confirm", {"token": token, "password": "new passphrase 42"}
    )
    assert response.status_code == 400
    assert response.json()["errors"]["token"] == ["This link has already been used."]


def test_a_weak_new_password_is_refused_with_the_validators_messages(client, known_users):
    user = User.objects.get(email="verified@example.com")
    token = tokens.token_make(purpose=tokens.PURPOSE_RESET, user=user)
    response = post(client, "auth/password-reset/confirm", {"token": token, "password": "123"})
    assert response.status_code == 400
    assert any("too short" in message for message in response.json()["errors"]["password"])
    assert User.objects.get(pk=user.pk).check_password(PASSWORD)


# --- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ("{not json", 400),
        ("", 400),
        ("[1, 2]", 400),
        ('"a string"', 400),
        ("null", 400),
        (b"\xff\xfe\x00garbage", 400),
        ('{"email": "\\ud800@example.com", "password": "a good long passphrase"}', 400),
        ('{"email": "a@example.com", "password": "\\udfff\\ud800 surrogates"}', 400),
        ({"email": 42, "password": "a good long passphrase"}, 400),
        ({"email": ["a@example.com"], "password": "a good long passphrase"}, 400),
        ({"email": {"$gt": ""}, "password": "a good long passphrase"}, 400),
        ({"email": "a@example.com", "password": None}, 400),
        ({"email": "a@example.com", "password": 12345678}, 400),
        (
            {
                "email": "a@example.com\r\nBcc: victim@example.com",
                "password": "a good long passphrase",
            },
            400,
        ),
        ({"email": "a\x00@example.com", "password": "a good long passphrase"}, 400),
        ({"email": "a@example.com", "password": "nul\x00inside the password"}, 400),
        ({"email": "x" * 10_000 + "@example.com", "password": "a good long passphrase"}, 400),
        ({"email": "a@example.com", "password": "p" * 100_000}, 400),
        ({"email": "a@example.com"}, 400),
        ({}, 400),
        ({"email": "not-an-address", "password": "a good long passphrase"}, 400),
        # An internationalised domain is an address; a non-ASCII local part needs SMTPUTF8,
        # which not every server speaks, so it is refused up front.
        ({"email": "ada@exämple.com", "password": "a good long passphrase"}, 202),
        ({"email": "ünïcödé@example.com", "password": "a good long passphrase"}, 400),
        ({"email": "zero\u200bwidth@example.com", "password": "a good long passphrase"}, 400),
    ],
)
def test_bad_signup_bodies_get_a_clear_4xx_and_never_a_500(client, body, status):
    response = post(client, "auth/signup", body)
    assert response.status_code == status, response.content
    payload = response.json()
    assert set(payload) == ({"detail", "errors"} if status >= 400 else {"detail"})
    if status >= 400:
        assert payload["detail"]


def test_a_body_over_the_upload_limit_is_refused_with_413(client, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = post(client, "auth/signup", {"email": "a@example.com", "password": "x" * 5000})
    assert response.status_code == 413


@pytest.mark.parametrize(
    "path",
    ["auth/verify-email", "auth/password-reset/confirm", "auth/login", "auth/password-reset"],
)
def test_every_public_endpoint_refuses_garbage_with_400(client, path):
    for body in ("{", "[]", {"token": 5, "email": 5, "password": 5}, {"token": ["x"]}):
        response = post(client, path, body)
        assert response.status_code == 400, (path, body, response.content)


def test_other_methods_and_bad_bearers_are_4xx(client):
    assert client.get("/api/v1/auth/signup").status_code == 405
    assert client.get("/api/v1/me").status_code == 401
    for header in ("Bearer", "Bearer a b", "Bearer \u00e9t\u00e9", "Bearer nonsense"):
        assert client.get("/api/v1/me", HTTP_AUTHORIZATION=header).status_code == 401, header


def test_unverified_accounts_are_deleted_after_the_grace_days(settings):
    from accounts import services

    old = User.objects.create_user("old@example.com", PASSWORD)
    User.objects.filter(pk=old.pk).update(date_joined=old.date_joined - timedelta(days=8))
    User.objects.create_user("recent@example.com", PASSWORD)
    User.objects.create_user("oldverified@example.com", PASSWORD, email_verified_at=VERIFIED)
    User.objects.filter(email="oldverified@example.com").update(
        date_joined=old.date_joined - timedelta(days=30)
    )
    assert services.unverified_accounts_delete(older_than=timedelta(days=7)) == 1
    assert set(User.objects.values_list("email", flat=True)) == {
        "recent@example.com",
        "oldverified@example.com",
    }


def test_signup_and_login_have_their_own_abuse_limits(client, settings, known_users):
    # signups for one address (each one emails its owner) are capped
    settings.ACCOUNT_EMAIL_RATE_PER_ADDRESS = "2/h"
    body = {"email": "verified@example.com", "password": "a good long passphrase"}
    assert [post(client, "auth/signup", body).status_code for _ in range(3)] == [202, 202, 429]
    # password guessing is locked too, counted apart from signups
    settings.ACCOUNT_LOGIN_FREE_FAILURES = 3
    guess = {"email": "verified@example.com", "password": "guess guess guess"}
    statuses = [post(client, "auth/login", guess).status_code for _ in range(5)]
    assert statuses == [400, 400, 400, 400, 429]


def test_the_client_ip_is_never_an_entry_the_client_wrote_and_ipv6_counts_by_its_block(settings):
    from django.test import RequestFactory

    from accounts.throttling import client_ip

    settings.TRUSTED_PROXIES = ["10.0.0.0/8"]

    def ip(remote: str, forwarded: str = "") -> str:
        request = RequestFactory().get("/", REMOTE_ADDR=remote, HTTP_X_FORWARDED_FOR=forwarded)
        return client_ip(request)

    # the proxy's own entry is not an address (a port, "unknown"): the proxy, not the client's
    assert ip("10.0.0.1", "6.6.6.6, 203.0.113.5:51234") == "10.0.0.1"
    assert ip("10.0.0.1", "6.6.6.6, unknown") == "10.0.0.1"
    # a dual-stack socket's mapped address is the proxy it names
    assert ip("::ffff:10.0.0.1", "203.0.113.5") == "203.0.113.5"
    # one customer's IPv6 block is one client, however many addresses it uses
    assert ip("2001:db8:1:2::1") == ip("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert ip("2001:db8:1:3::1") != ip("2001:db8:1:2::1")


def test_forwarded_headers_from_many_peers_log_one_warning(caplog, monkeypatch):
    from django.test import RequestFactory

    from accounts import throttling

    monkeypatch.setattr(throttling, "_last_warning", -math.inf)
    for peer in range(50):
        throttling.client_ip(
            RequestFactory().get("/", REMOTE_ADDR=f"192.0.2.{peer}", HTTP_X_FORWARDED_FOR="1.1.1.1")
        )
    assert caplog.text.count("not in TRUSTED_PROXIES") == 1
