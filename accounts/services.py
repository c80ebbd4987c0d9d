"""Account business logic: signup, verification, login, password reset, maintenance.

No function here says whether an address has an account: callers answer every address alike,
and the differences (which email goes out) happen in the background.
"""

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from django.contrib.auth import authenticate, password_validation
from django.contrib.auth.hashers import make_password
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts import throttling, tokens
from accounts.emails import email_delivery_create
from accounts.models import ApiToken, EmailDelivery, User, address_normalize
from accounts.sessions import SessionStore
from jobs.idempotency import run_once
from jobs.outbox import enqueue

# Django's hashers accept any length, but hashing megabytes is a denial of service.
PASSWORD_MAX_LENGTH = 256


class LoginFailed(Exception):
    """Wrong email or password; deliberately does not say which."""


class EmailNotVerified(Exception):
    """The password was right but the address is not verified yet."""


def password_check(*, password: str, email: str) -> None:
    """Django's validators (length, common, numeric, similar to the email); ValidationError."""
    password_validation.validate_password(password, User(email=email))


def user_signup(*, email: str, password: str) -> None:
    """Sign up, or, for a taken address, tell its owner by email. The caller cannot tell which.

    The password is hashed on both paths so the two take the same time.
    """
    email = address_normalize(email)
    password_check(password=password, email=email)
    password_hash = make_password(password)
    try:
        with transaction.atomic():
            user = User.objects.create(email=email, password=password_hash)
            _verification_email_queue(user)
            return
    except IntegrityError:
        pass  # taken, perhaps by a signup that committed a moment ago: same as below
    with transaction.atomic():
        existing = User.objects.select_for_update().get(email=email)
        if existing.email_verified:
            email_delivery_create(
                kind=EmailDelivery.Kind.SIGNUP_ATTEMPT, recipient=existing.email, user=existing
            )
        else:
            # Nobody has proven they own this address yet, so this signup's password is as good
            # as the first one's: it replaces it, and every link sent before dies with it (the
            # link's state covers the password). Otherwise whoever signed up first with someone
            # else's address would own the account the moment its real owner verified it.
            existing.password = password_hash
            # Its age starts now too: the cleanup of unverified accounts must not delete the
            # owner's fresh signup for the age of a stranger's first one.
            existing.date_joined = timezone.now()
            existing.save(update_fields=["password", "date_joined"])
            _verification_email_queue(existing)


def verification_resend_request(*, email: str) -> None:
    """Ask for a new verification link. The request does the same work for every address (one
    outbox row), so its timing says nothing about which have accounts; the worker decides."""
    from accounts import tasks  # the task module imports this one

    with transaction.atomic():
        enqueue(tasks.send_verification_email, email=address_normalize(email))


def verification_resend_carry_out(*, email: str, request_key: str) -> None:
    """A new link for an unverified account; nothing for any other address. Once per request."""

    def effect() -> None:
        user = _active_user(email)
        if user is not None and not user.email_verified:
            _verification_email_queue(user)

    run_once(key=f"accounts.verification-resend:{request_key}", effect=effect)


def email_verify(*, token: str) -> User:
    """Mark the address verified and welcome the user. tokens.InvalidToken otherwise."""
    with transaction.atomic():
        user = tokens.token_user(purpose=tokens.PURPOSE_VERIFY, token=token, for_update=True)
        if user.email_verified:
            raise tokens.InvalidToken("This link has already been used.")
        user.email_verified_at = timezone.now()
        user.save(update_fields=["email_verified_at"])
        email_delivery_create(kind=EmailDelivery.Kind.WELCOME, recipient=user.email, user=user)
    return user


@dataclass(frozen=True)
class LoginResult:
    user: User
    device_cookie: str  # to set on the response; empty when the browser's own stays valid


def user_login(*, email: str, password: str, ip: str, device_cookie: str | None) -> LoginResult:
    """`user_authenticate` behind the guessing lock (throttling.LoginGuard): TooManyAttempts
    while locked, and each wrong password counted."""
    guard = throttling.LoginGuard(email=email, ip=ip, device_cookie=device_cookie)
    guard.check()
    try:
        user = user_authenticate(email=email, password=password)
    except LoginFailed:
        guard.failed()
        raise
    return LoginResult(user=user, device_cookie=guard.succeeded())


def user_authenticate(*, email: str, password: str) -> User:
    """The user for these credentials. LoginFailed for an unknown address or a wrong password
    alike (Django hashes a dummy password for unknown users, so timing matches too);
    EmailNotVerified only after the right password."""
    user = authenticate(email=address_normalize(email), password=password)
    if user is None:
        raise LoginFailed("Email or password is incorrect.")
    if not user.email_verified:
        raise EmailNotVerified("Confirm your email address first; we sent you a link.")
    return user


def api_token_create(*, user: User) -> str:
    """A new bearer token for one device. Only its hash is stored; the caller gets it once."""
    raw = secrets.token_urlsafe(32)
    ApiToken.objects.create(user=user, key_hash=api_token_hash(raw))
    User.objects.filter(pk=user.pk).update(last_login=timezone.now())
    return raw


def api_token_hash(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def api_token_revoke(*, token: ApiToken) -> None:
    token.delete()


def password_reset_request(*, email: str) -> None:
    """Ask for a reset link: like `verification_resend_request`, the same work for every
    address before the answer."""
    from accounts import tasks  # the task module imports this one

    with transaction.atomic():
        enqueue(tasks.send_password_reset_email, email=address_normalize(email))


def password_reset_carry_out(*, email: str, request_key: str) -> None:
    """A reset link for an active account; nothing for any other address. Once per request."""

    def effect() -> None:
        user = _active_user(email)
        if user is not None:
            email_delivery_create(
                kind=EmailDelivery.Kind.PASSWORD_RESET,
                recipient=user.email,
                user=user,
                link_purpose=tokens.PURPOSE_RESET,
            )

    run_once(key=f"accounts.password-reset:{request_key}", effect=effect)


def password_reset_confirm(*, token: str, password: str) -> User:
    """Set the new password, end every other session and API token, tell the user by email."""
    with transaction.atomic():
        user = tokens.token_user(purpose=tokens.PURPOSE_RESET, token=token, for_update=True)
        password_check(password=password, email=user.email)
        user.set_password(password)  # changes the token's state: the link dies here
        user.save(update_fields=["password"])
        # Every session carries a hash of the password it logged in with, which Django checks
        # on each request: they all end now. API tokens carry nothing, so they are deleted.
        user.api_tokens.all().delete()
        # Pushes too: a browser that a thief's session subscribed would go on receiving them.
        user.devices.all().delete()
        # Proving the mailbox is proof enough: whoever locked the address out by failing on
        # purpose no longer keeps its owner out.
        throttling.login_failures_clear(email=user.email)
        email_delivery_create(
            kind=EmailDelivery.Kind.PASSWORD_CHANGED, recipient=user.email, user=user
        )
    return user


def expired_sessions_clear() -> None:
    # Django never deletes expired database sessions by itself.
    SessionStore.clear_expired()


def unverified_accounts_delete(*, older_than: timedelta) -> int:
    """Accounts nobody verified: someone else's address or a typo; they hold nothing."""
    unverified = User.objects.filter(
        email_verified_at__isnull=True,
        is_staff=False,
        date_joined__lt=timezone.now() - older_than,
    )
    with transaction.atomic():
        # Locked, then deleted by the same conditions: Django's delete() collects ids and deletes
        # by id, and a verification committing in between would lose its just-verified account.
        ids = list(unverified.select_for_update().values_list("pk", flat=True))
        deleted, _ = unverified.filter(pk__in=ids).delete()
    return deleted


def _verification_email_queue(user: User) -> EmailDelivery:
    return email_delivery_create(
        kind=EmailDelivery.Kind.VERIFICATION,
        recipient=user.email,
        user=user,
        link_purpose=tokens.PURPOSE_VERIFY,
    )


def _active_user(email: str) -> User | None:
    return User.objects.filter(email=address_normalize(email), is_active=True).first()
