"""Account business logic: signup, verification, login, password reset, maintenance.

No function here says whether an address has an account: callers answer every address alike,
and the differences (which email goes out) happen in the background.
"""

import hashlib
import secrets
from datetime import timedelta

from django.contrib.auth import authenticate, password_validation
from django.contrib.auth.hashers import make_password
from django.contrib.sessions.backends.db import SessionStore
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts import tokens
from accounts.emails import email_delivery_create
from accounts.models import ApiToken, EmailDelivery, User, UserManager

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
    email = UserManager.normalize_address(email)
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
        existing = User.objects.get(email=email)
        if existing.email_verified:
            email_delivery_create(
                kind=EmailDelivery.Kind.SIGNUP_ATTEMPT, recipient=existing.email, user=existing
            )
        else:
            # Most likely the same person, who lost the first email: send a fresh link.
            _verification_email_queue(existing)


def verification_resend(*, email: str) -> None:
    with transaction.atomic():
        user = _active_user(email)
        if user is not None and not user.email_verified:
            _verification_email_queue(user)


def email_verify(*, token: str) -> User:
    """Mark the address verified and welcome the user. tokens.InvalidToken otherwise."""
    with transaction.atomic():
        user = tokens.token_user(purpose=tokens.PURPOSE_VERIFY, token=token)
        user = User.objects.select_for_update().get(pk=user.pk)
        if user.email_verified:
            raise tokens.InvalidToken("This link has already been used.")
        user.email_verified_at = timezone.now()
        user.save(update_fields=["email_verified_at"])
        email_delivery_create(kind=EmailDelivery.Kind.WELCOME, recipient=user.email, user=user)
    return user


def user_authenticate(*, email: str, password: str) -> User:
    """The user for these credentials. LoginFailed for an unknown address or a wrong password
    alike (Django hashes a dummy password for unknown users, so timing matches too);
    EmailNotVerified only after the right password."""
    user = authenticate(email=UserManager.normalize_address(email), password=password)
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
    with transaction.atomic():
        user = _active_user(email)
        if user is not None:
            link_token = tokens.token_make(purpose=tokens.PURPOSE_RESET, user=user)
            email_delivery_create(
                kind=EmailDelivery.Kind.PASSWORD_RESET,
                recipient=user.email,
                user=user,
                context={"token": link_token},
            )


def password_reset_confirm(*, token: str, password: str) -> User:
    """Set the new password, end every other session and API token, tell the user by email."""
    with transaction.atomic():
        user = tokens.token_user(purpose=tokens.PURPOSE_RESET, token=token)
        user = User.objects.select_for_update().get(pk=user.pk)
        password_check(password=password, email=user.email)
        user.set_password(password)  # changes the token's state: the link dies here
        user.save(update_fields=["password"])
        # Every session carries a hash of the password it logged in with, which Django checks
        # on each request: they all end now. API tokens carry nothing, so they are deleted.
        user.api_tokens.all().delete()
        email_delivery_create(
            kind=EmailDelivery.Kind.PASSWORD_CHANGED, recipient=user.email, user=user
        )
    return user


def expired_sessions_clear() -> None:
    # Django never deletes expired database sessions by itself.
    SessionStore.clear_expired()


def unverified_accounts_delete(*, older_than: timedelta) -> int:
    """Accounts nobody verified: someone else's address or a typo; they hold nothing."""
    deleted, _ = User.objects.filter(
        email_verified_at__isnull=True,
        is_staff=False,
        date_joined__lt=timezone.now() - older_than,
    ).delete()
    return deleted


def _verification_email_queue(user: User) -> EmailDelivery:
    return email_delivery_create(
        kind=EmailDelivery.Kind.VERIFICATION,
        recipient=user.email,
        user=user,
        context={"token": tokens.token_make(purpose=tokens.PURPOSE_VERIFY, user=user)},
    )


def _active_user(email: str) -> User | None:
    return User.objects.filter(email=UserManager.normalize_address(email), is_active=True).first()
