"""Flower's configuration file (`celery -A config flower --conf=config/flower.py`).

Flower shows task arguments and can revoke tasks and shut workers down, so it never starts
without a password: FLOWER_BASIC_AUTH ("user:password", comma-separated for several) is
required, and every entry needs a user name and a password of at least MIN_PASSWORD_LENGTH
characters. Flower compares the whole "user:password" a browser sends with each entry, so an
entry "admin:" would let in anyone who types "admin" and leaves the password empty.
"""

import os
from typing import NoReturn

# Flower's basic auth never locks anyone out: whoever reaches the port may guess as fast as the
# network allows, so a short password falls to brute force. Twelve random characters are out of
# reach; `make run` generates sixteen.
MIN_PASSWORD_LENGTH = 12


def _basic_auth_from_environment() -> list[str]:
    entries = [entry for entry in os.environ.get("FLOWER_BASIC_AUTH", "").split(",") if entry]
    if not entries:
        _refuse("must be set as user:password")
    for entry in entries:
        # Messages name the user, never the entry: it holds a password.
        user, colon, password = entry.partition(":")
        if not colon:
            _refuse("has an entry without ':' (expected user:password)")
        if not user:
            _refuse("has an entry without a user name (expected user:password)")
        if not password:
            _refuse(f"gives the user {user!r} an empty password")
        if len(password) < MIN_PASSWORD_LENGTH:
            _refuse(
                f"gives the user {user!r} a password shorter than {MIN_PASSWORD_LENGTH} characters"
            )
    return entries


def _refuse(problem: str) -> NoReturn:
    raise SystemExit(f"FLOWER_BASIC_AUTH {problem}; Flower will not run unprotected.")


basic_auth = _basic_auth_from_environment()
port = int(os.environ.get("FLOWER_PORT", "5555"))
address = os.environ.get("FLOWER_ADDRESS", "127.0.0.1")
# Workers that stopped answering disappear from the dashboard after 10 minutes instead of
# piling up across deploys.
purge_offline_workers = 600
