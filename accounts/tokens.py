"""Signed, expiring, single-use tokens for the links in emails.

A token is `signing.dumps({"u": user id, "s": state})` under a salt per purpose. The signature
(HMAC with SECRET_KEY, checked in constant time by Django's signer) makes it unforgeable; the
timestamp inside makes it expire; the state makes it single-use: it is a digest of what using
the token changes (the verification time for a verification link, the password hash and last
login for a reset link), so once used it no longer matches and is refused.
"""

import hashlib

from django.conf import settings
from django.core import signing
from django.utils.crypto import constant_time_compare

from accounts.models import User

# Longer than any real token; anything bigger is garbage and is refused before any work.
TOKEN_MAX_LENGTH = 512

PURPOSE_VERIFY = "accounts.verify-email"
PURPOSE_RESET = "accounts.reset-password"


class InvalidToken(Exception):
    """The link is malformed, tampered with, expired or already used."""


def _state(purpose: str, user: User) -> str:
    if purpose == PURPOSE_VERIFY:
        parts = [user.email, str(user.email_verified_at)]
    else:
        parts = [user.password, str(user.last_login)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def _max_age(purpose: str) -> int:
    if purpose == PURPOSE_VERIFY:
        return settings.EMAIL_VERIFICATION_MAX_AGE
    return settings.PASSWORD_RESET_TIMEOUT


def token_make(*, purpose: str, user: User) -> str:
    return signing.dumps({"u": user.pk, "s": _state(purpose, user)}, salt=purpose, compress=True)


def token_user(*, purpose: str, token: str) -> User:
    """The user a valid token was made for; InvalidToken for anything else."""
    try:
        payload = signing.loads(token, salt=purpose, max_age=_max_age(purpose))
        user = User.objects.get(pk=int(payload["u"]), is_active=True)
        state = str(payload["s"])
    except (signing.BadSignature, KeyError, TypeError, ValueError, User.DoesNotExist) as error:
        raise InvalidToken("This link is invalid or has expired.") from error
    if not constant_time_compare(state, _state(purpose, user)):
        raise InvalidToken("This link has already been used.")
    return user
