"""Nobody can own an account in someone else's name, and nothing stored can log anyone in."""

import importlib
import re

import pytest
from django.contrib.auth.models import Permission

from accounts import tokens
from accounts.emails import TOKEN_PLACEHOLDER
from accounts.models import EmailDelivery, User
from jobs.models import OutboxMessage
from tests.accounts.test_email_flow import link_in, post
from tests.services import eventually

VICTIM_PASSWORD = "the owner's own passphrase"
ATTACKER_PASSWORD = "the attacker's passphrase"


@pytest.fixture
def flow(client, smtp, celery_worker):
    return client


def test_a_signup_made_before_the_owners_cannot_take_the_account_over(flow, smtp):
    # given an attacker who signed up first with the victim's address and a password of theirs
    attacker = {"email": "victim@example.com", "password": ATTACKER_PASSWORD}
    assert post(flow, "auth/signup", attacker).status_code == 202
    first = smtp.wait_for("victim@example.com", subject="Confirm your email")
    # when the victim signs up with their own password and uses the link of their own signup
    victim = {"email": "victim@example.com", "password": VICTIM_PASSWORD}
    assert post(flow, "auth/signup", victim).status_code == 202
    eventually(lambda: len(smtp.sent_to("victim@example.com")) == 2)
    own_link = link_in(smtp.sent_to("victim@example.com")[1], "verify-email")
    # then the link of the attacker's signup no longer works: it confirmed the attacker's password
    dead = post(flow, "auth/verify-email", {"token": link_in(first, "verify-email")})
    assert dead.status_code == 400
    assert post(flow, "auth/verify-email", {"token": own_link}).status_code == 200
    # and the verified account opens with the victim's password, never the attacker's
    assert post(flow, "auth/login", attacker).status_code == 400
    assert post(flow, "auth/login", victim).status_code == 200


def test_no_stored_email_and_no_admin_page_holds_a_working_token(flow, smtp, client):
    # given a verification and a reset email, both sent
    post(flow, "auth/signup", {"email": "ada@example.com", "password": VICTIM_PASSWORD})
    User.objects.create_user(
        "grace@example.com", VICTIM_PASSWORD, email_verified_at="2026-01-01T00:00Z"
    )
    post(flow, "auth/password-reset", {"email": "grace@example.com"})
    emailed = {
        "verify-email": link_in(smtp.wait_for("ada@example.com"), "verify-email"),
        "password-reset/confirm": link_in(
            smtp.wait_for("grace@example.com"), "password-reset/confirm"
        ),
    }
    eventually(lambda: EmailDelivery.objects.filter(status="sent").count() == 2)
    # then the stored bodies hold the placeholder, not the emailed tokens
    for delivery in EmailDelivery.objects.all():
        stored = delivery.body_text + delivery.body_html
        assert TOKEN_PLACEHOLDER in stored
        assert not any(token in stored for token in emailed.values())
    # and staff who may only view deliveries see no token either
    staff = User.objects.create_user(
        "staff@example.com",
        "a staff passphrase",
        is_staff=True,
        email_verified_at="2026-01-01T00:00Z",
    )
    staff.user_permissions.add(Permission.objects.get(codename="view_emaildelivery"))
    client.force_login(staff)
    for delivery in EmailDelivery.objects.all():
        page = client.get(f"/admin/accounts/emaildelivery/{delivery.pk}/change/")
        assert page.status_code == 200
        assert TOKEN_PLACEHOLDER in page.content.decode()
        assert not any(token in page.content.decode() for token in emailed.values())
    # while the emailed links work
    reset = {"token": emailed["password-reset/confirm"], "password": "a new passphrase 42"}
    assert post(flow, "auth/verify-email", {"token": emailed["verify-email"]}).status_code == 200
    assert post(flow, "auth/password-reset/confirm", reset).status_code == 200


# These request work no worker needs to run: with none consuming, nothing writes to the
# database while the test's tables are flushed.
@pytest.mark.django_db(transaction=True)
def test_spellings_of_one_mailbox_are_one_account_and_one_limit(
    client, settings, no_worker_running
):
    # given the per-address limit on signups
    settings.ACCOUNT_EMAIL_RATE_PER_ADDRESS = "3/h"
    spellings = [
        "dave@\uff45xample.com",  # a full-width "e"
        '"dave"@example.com',  # needless quotes
        "DAVE@Example.COM",
        "dave@example.com",
    ]
    # when someone signs up with each spelling of one address
    statuses = [
        post(client, "auth/signup", {"email": email, "password": VICTIM_PASSWORD}).status_code
        for email in spellings
    ]
    # then they are one account, one bucket: the fourth is over the limit
    assert statuses == [202, 202, 202, 429]
    assert list(User.objects.values_list("email", flat=True)) == ["dave@example.com"]


@pytest.mark.django_db(transaction=True)
def test_an_international_domain_is_one_account_in_unicode_and_in_punycode(
    client, no_worker_running
):
    for email in ("zoe@exämple.com", "zoe@xn--exmple-cua.com", "ZOE@EXÄMPLE.COM"):
        response = post(client, "auth/signup", {"email": email, "password": VICTIM_PASSWORD})
        assert response.status_code == 202
    assert list(User.objects.values_list("email", flat=True)) == ["zoe@xn--exmple-cua.com"]
    # and it is found by any spelling for a reset
    post(client, "auth/password-reset", {"email": "Zoe@Exämple.com"})
    request = OutboxMessage.objects.get(task_name="accounts.send_password_reset_email")
    assert request.kwargs == {"email": "zoe@xn--exmple-cua.com"}


def test_a_quoted_local_part_that_needs_its_quotes_stays_a_different_mailbox():
    from accounts.models import address_normalize

    assert address_normalize('"da ve"@example.com') == '"da ve"@example.com'
    assert address_normalize(" Dave@Example.com ") == "dave@example.com"
    assert re.fullmatch(r"[\x00-\x7f]+", address_normalize("x@bücher.de"))
    # escaped characters in quotes are the characters themselves: the same mailbox
    assert address_normalize('"d\\ave"@example.com') == "dave@example.com"
    assert address_normalize('"\\dave"@example.com') == "dave@example.com"
    # faß.de is its own domain (IDNA 2008), not fass.de, which belongs to someone else
    assert address_normalize("x@faß.de") == "x@xn--fa-hia.de"


@pytest.mark.django_db(transaction=True)
def test_the_upgrade_removes_working_tokens_from_stored_emails_and_keeps_queued_links():
    from django.apps import apps

    migration = importlib.import_module("accounts.migrations.0003_email_links_and_address_forms")
    user = User.objects.create_user("old@example.com", VICTIM_PASSWORD)
    body = "Confirm: http://testserver/verify-email?token=eyJ1IjoxfQ:1abc:sig\n"
    html = '<a href="http://testserver/verify-email?token=eyJ1IjoxfQ%3A1abc%3Asig">go</a>'
    fields = {"recipient": user.email, "user": user, "subject": "s", "body_html": html}
    sent = EmailDelivery.objects.create(
        kind="verification", status="sent", body_text=body, message_id="<1@x>", **fields
    )
    queued = EmailDelivery.objects.create(
        kind="verification", status="queued", body_text=body, message_id="<2@x>", **fields
    )
    migration.remove_stored_tokens(apps, None)
    sent.refresh_from_db()
    queued.refresh_from_db()
    assert "eyJ1" not in sent.body_text + sent.body_html and "token=removed" in sent.body_text
    assert f"token={TOKEN_PLACEHOLDER}" in queued.body_text + queued.body_html
    assert queued.link_purpose == tokens.PURPOSE_VERIFY
    assert queued.link_state == tokens.token_state(purpose=tokens.PURPOSE_VERIFY, user=user)


@pytest.mark.django_db(transaction=True)
def test_the_cleanup_counts_an_unverified_account_from_its_latest_signup(client, no_worker_running):
    from datetime import timedelta

    from accounts import services

    # given a stranger's signup with someone's address a week ago
    squatted = User.objects.create_user("late@example.com", ATTACKER_PASSWORD)
    User.objects.filter(pk=squatted.pk).update(date_joined=squatted.date_joined - timedelta(days=8))
    # when the owner signs up today (the signup replaces the password)
    body = {"email": "late@example.com", "password": VICTIM_PASSWORD}
    assert post(client, "auth/signup", body).status_code == 202
    # then the daily cleanup leaves the owner's fresh signup alone
    assert services.unverified_accounts_delete(older_than=timedelta(days=7)) == 0
    assert User.objects.get(email="late@example.com").check_password(VICTIM_PASSWORD)


@pytest.mark.django_db(transaction=True)
def test_the_upgrade_trusts_no_password_of_an_unverified_account():
    from django.apps import apps

    migration = importlib.import_module("accounts.migrations.0005_unverified_passwords_unusable")
    squatted = User.objects.create_user("squatted@example.com", ATTACKER_PASSWORD)
    owner = User.objects.create_user(
        "owner@example.com", VICTIM_PASSWORD, email_verified_at="2026-01-01T00:00Z"
    )
    migration.unverified_passwords_unusable(apps, None)
    squatted.refresh_from_db()
    owner.refresh_from_db()
    assert not squatted.has_usable_password()
    assert owner.check_password(VICTIM_PASSWORD)
