"""Signed, expiring, single-use tokens for the links in emails.

A token is `signing.dumps({"u": user id, "s": state})` under a salt per purpose. The signature
(HMAC with SECRET_KEY, checked in constant time by Django's signer) makes it unforgeable; the
timestamp inside makes it expire; the state makes it single-use: it is a digest of what using
the token changes (the verification time for a verification link, the password hash and last
login for a reset link), so once used it no longer matches and is refused.

A verification link's state covers the password hash too: it confirms the password of the
signup that asked for it. A repeat signup of an unverified address replaces the password, and
every link sent before it stops working, so nobody can sign up with someone else's address,
wait for its owner to verify, and log in with a password of their own.

Emails store the state, never a token: the token is signed when the email is sent
(`token_sign`), so nothing readable in the database or the admin can log anyone in.
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


def token_state(*, purpose: str, user: User) -> str:
    """What a token for `user` must still match when it is used."""
    if purpose == PURPOSE_VERIFY:
        parts = [user.email, str(user.email_verified_at), user.password]
    else:
        parts = [user.password, str(user.last_login)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def _max_age(purpose: str) -> int:
    if purpose == PURPOSE_VERIFY:
        return settings.EMAIL_VERIFICATION_MAX_AGE
    return settings.PASSWORD_RESET_TIMEOUT


def token_make(*, purpose: str, user: User) -> str:
    return token_sign(
        purpose=purpose, user_id=user.pk, state=token_state(purpose=purpose, user=user)
    )


def token_sign(*, purpose: str, user_id: int, state: str) -> str:
    """A token for a state taken earlier: it expires `max_age` after this call."""
    return signing.dumps({"u": user_id, "s": state}, salt=purpose, compress=True)


def token_user(*, purpose: str, token: str, for_update: bool = False) -> User:
    """The user a valid token was made for; InvalidToken for anything else.

    `for_update` (inside a transaction, for a caller about to use the token): the state is
    compared on the locked row, so nothing that changes it (a repeat signup replacing the
    password, another use of the same link) can commit between the check and the use.
    """
    users = User.objects.select_for_update() if for_update else User.objects
    try:
        payload = signing.loads(token, salt=purpose, max_age=_max_age(purpose))
        user = users.get(pk=int(payload["u"]), is_active=True)
        state = str(payload["s"])
    except (signing.BadSignature, KeyError, TypeError, ValueError, User.DoesNotExist) as error:
        raise InvalidToken("This link is invalid or has expired.") from error
    if not constant_time_compare(state, token_state(purpose=purpose, user=user)):
        raise InvalidToken("This link has already been used.")
    return user
