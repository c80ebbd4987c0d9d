"""Abuse limits for endpoints that make the system email an address someone typed.

Fixed-window counters in Redis (INCR, and EXPIRE on the first hit, in one transaction), shared
by every web process, keyed by scope and by the address or the client IP. Fixed windows allow
up to twice the rate across a window boundary, which is fine for abuse control and costs one
round trip instead of a sorted set per key.
"""

import hashlib
import ipaddress
import logging
import math

import redis
from django.conf import settings
from django.http import HttpRequest

from jobs.ratelimit import parse_rate
from jobs.redis import redis_client

logger = logging.getLogger(__name__)


class TooManyAttempts(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__(f"Too many attempts. Try again in {retry_after} seconds.")
        self.retry_after = retry_after


def client_ip(request: HttpRequest) -> str:
    """The client's address: REMOTE_ADDR, unless that is a trusted proxy, in which case the
    right-most X-Forwarded-For entry that is not itself a trusted proxy (entries further left
    were written by the client and prove nothing)."""
    remote = request.META.get("REMOTE_ADDR", "")
    trusted = set(settings.TRUSTED_PROXIES)
    if remote not in trusted:
        return remote
    forwarded = [part.strip() for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")]
    for candidate in reversed(forwarded):
        if candidate and candidate not in trusted and _is_ip(candidate):
            return candidate
    return remote


def attempts_limit(*, scope: str, email: str, ip: str) -> None:
    """Count one attempt against the address and the IP; TooManyAttempts when either is over.

    Scopes: "signup", "resend", "reset" (each sends an email) and "login" (password guessing),
    each counted apart, so a burst of one does not lock a person out of another.
    """
    if scope == "login":
        per_address, per_ip = (
            settings.ACCOUNT_LOGIN_RATE_PER_ADDRESS,
            settings.ACCOUNT_LOGIN_RATE_PER_IP,
        )
    else:
        per_address, per_ip = (
            settings.ACCOUNT_EMAIL_RATE_PER_ADDRESS,
            settings.ACCOUNT_EMAIL_RATE_PER_IP,
        )
    for subject, rate in ((f"email:{email.strip().lower()}", per_address), (f"ip:{ip}", per_ip)):
        _count(scope=scope, subject=subject, rate=rate)


def _count(*, scope: str, subject: str, rate: str) -> None:
    limit, window = parse_rate(rate)
    # Hashed so addresses do not sit in Redis in clear text.
    digest = hashlib.sha256(subject.encode()).hexdigest()[:32]
    key = f"accounts:attempts:{scope}:{digest}"
    pipeline = redis_client().pipeline()
    pipeline.incr(key)
    pipeline.expire(key, math.ceil(window), nx=True)
    pipeline.ttl(key)
    try:
        count, _, ttl = pipeline.execute()
    except redis.RedisError as error:
        # Fail open: with Redis down, signups and resets must still work (their emails wait
        # in the outbox); an abuser gains a few minutes, a real user loses nothing.
        logger.warning("abuse limit not counted, Redis unavailable: %s", error)
        return
    if count > limit:
        raise TooManyAttempts(retry_after=max(1, ttl))


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True
