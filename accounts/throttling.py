"""Abuse limits: for the endpoints that email an address someone typed, and for logins.

Email-sending endpoints: fixed-window counters in Redis (jobs/windows.py), shared by every web
process, keyed by scope and by the address or the client IP.

Logins (API, pages and the admin alike): `LoginGuard` counts failed passwords, not attempts,
and locks for a time that doubles with each failure past a few free ones, up to a cap. A
browser that has logged in to an account before carries a signed device cookie; its attempts
are counted against that device alone, so a stranger failing on purpose cannot lock the owner
out of their usual browser (OWASP's "device cookies"). A password reset clears the address's
failures: proving the mailbox is proof enough.
"""

import hashlib
import ipaddress
import logging
import math
import secrets
import time

import redis
from django.conf import settings
from django.core import signing
from django.http import HttpRequest, HttpResponse
from django.utils.crypto import constant_time_compare, salted_hmac

from accounts.models import address_normalize
from config.proxies import is_trusted_proxy
from jobs.ratelimit import parse_rate
from jobs.redis import redis_client
from jobs.windows import WindowFull, WindowLimit, window_limits_spend

logger = logging.getLogger(__name__)

DEVICE_COOKIE = "login_device"
DEVICE_COOKIE_MAX_AGE = 365 * 24 * 3600
_DEVICE_SALT = "accounts.login-device"
# How long failures are remembered after the last one. An address: a day, so a slow guesser
# stays slowed. An IP: an hour, because a busy NAT (an office, a campus) collects its users'
# honest typos, which must not add up to a lock for everyone behind it.
_ADDRESS_FAILURES_TTL_SECONDS = 24 * 3600
_IP_FAILURES_TTL_SECONDS = 3600


class TooManyAttempts(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__(f"Too many attempts. Try again in {retry_after} seconds.")
        self.retry_after = retry_after


def client_ip(request: HttpRequest) -> str:
    """The client's address, as the key its per-IP limits count under: REMOTE_ADDR, unless that
    is a trusted proxy, in which case the right-most X-Forwarded-For entry that is not itself a
    trusted proxy (entries further left were written by the client and prove nothing). If that
    entry is no address (a port, "unknown"), the proxy's own address: never one further left.
    IPv6 clients count by their /64, the block one customer gets."""
    remote = request.META.get("REMOTE_ADDR", "")
    forwarded_header = request.META.get("HTTP_X_FORWARDED_FOR", "")
    if not is_trusted_proxy(remote):
        if forwarded_header:
            _warn_untrusted_forwarding(remote)
        return _limit_key(remote)
    forwarded = [part.strip() for part in forwarded_header.split(",")]
    for candidate in reversed(forwarded):
        if not is_trusted_proxy(candidate):
            return _limit_key(candidate if _is_ip(candidate) else remote)
    return _limit_key(remote)


def _limit_key(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


# At most one warning this often per process: enough to be seen, and a flood of forged headers
# from many peers neither fills the log nor grows a memory of peers.
_WARNING_INTERVAL_SECONDS = 300
_last_warning = -math.inf


def _warn_untrusted_forwarding(remote: str) -> None:
    global _last_warning
    now = time.monotonic()
    if now - _last_warning < _WARNING_INTERVAL_SECONDS:
        return
    _last_warning = now
    logger.warning(
        "X-Forwarded-For from %s, which is not in TRUSTED_PROXIES: the header is ignored and "
        "every client behind that proxy shares one per-IP abuse limit. If %s is your reverse "
        "proxy, add it to TRUSTED_PROXIES.",
        remote,
        remote,
    )


def attempts_limit(*, scope: str, email: str, ip: str) -> None:
    """Count one attempt against the address and the IP; TooManyAttempts when either is over.

    Scopes: "signup", "resend", "reset", each sending an email, and "deletion", a password
    checked for an account's deletion; each counted apart, so a burst of one does not lock a
    person out of another.
    """
    subjects = (
        (f"email:{address_normalize(email)}", settings.ACCOUNT_EMAIL_RATE_PER_ADDRESS),
        (f"ip:{ip}", settings.ACCOUNT_EMAIL_RATE_PER_IP),
    )
    for subject, rate in subjects:
        _count(scope=scope, subject=subject, rate=rate)


def _count(*, scope: str, subject: str, rate: str) -> None:
    limit, window = parse_rate(rate)
    key = f"accounts:attempts:{scope}:{_digest(subject)}"
    try:
        window_limits_spend(WindowLimit(key, limit, window))
    except WindowFull as full:
        raise TooManyAttempts(retry_after=full.retry_after) from full
    except redis.RedisError as error:
        # Fail open: with Redis down, signups and resets must still work (their emails wait
        # in the outbox); an abuser gains a few minutes, a real user loses nothing.
        logger.warning("abuse limit not counted, Redis unavailable: %s", error)


class LoginGuard:
    """The lock on password guessing for one login attempt: `check()` before the password is
    tried, then `failed()` or `succeeded()`.

    Subjects counted: with a valid device cookie for this address, that device only; without,
    the address and the client IP (the IP with more free failures and a shorter memory: people
    share addresses behind NAT). Redis down fails open, like the other limits: logins keep
    working.
    """

    def __init__(self, *, email: str, ip: str, device_cookie: str | None) -> None:
        self.address = address_normalize(email)
        device = _device_id(device_cookie, address=self.address)
        self.trusted_device = device is not None
        free, free_per_ip = (
            settings.ACCOUNT_LOGIN_FREE_FAILURES,
            settings.ACCOUNT_LOGIN_FREE_FAILURES_PER_IP,
        )
        # (subject, free failures, seconds failures are remembered)
        self.subjects: list[tuple[str, int, int]] = (
            [(f"device:{device}", free, _ADDRESS_FAILURES_TTL_SECONDS)]
            if device is not None
            else [
                (f"email:{self.address}", free, _ADDRESS_FAILURES_TTL_SECONDS),
                (f"ip:{ip}", free_per_ip, _IP_FAILURES_TTL_SECONDS),
            ]
        )

    def check(self) -> None:
        """TooManyAttempts while any subject is locked."""
        pipeline = redis_client().pipeline()
        for subject, _, _ in self.subjects:
            pipeline.pttl(_login_key("lock", subject))
        try:
            remaining_ms = pipeline.execute()
        except redis.RedisError as error:
            logger.warning("login lock not checked, Redis unavailable: %s", error)
            return
        longest = max(remaining_ms)
        if longest > 0:
            raise TooManyAttempts(retry_after=math.ceil(longest / 1000))

    def failed(self) -> None:
        """A wrong password: one more failure per subject, and a lock once past the free ones."""
        try:
            for subject, free_failures, remembered_seconds in self.subjects:
                failures_key = _login_key("failures", subject)
                pipeline = redis_client().pipeline()
                pipeline.incr(failures_key)
                pipeline.expire(failures_key, remembered_seconds)
                failures, _ = pipeline.execute()
                if (lock := login_lock_seconds(failures, free_failures=free_failures)) > 0:
                    redis_client().set(_login_key("lock", subject), 1, ex=lock)
        except redis.RedisError as error:
            logger.warning("login failure not counted, Redis unavailable: %s", error)

    def succeeded(self) -> str:
        """The right password. A trusted device's own failures are forgotten (its owner's typos
        must not add up to a lock); the address's and the IP's are not: clearing them would let
        an attacker learn that someone just logged in, or clear them by logging in to an account
        of their own between guesses. A reset through the emailed link clears the address's.
        Returns the device cookie value to set: the one presented if it was valid, else new."""
        if self.trusted_device:
            subject = self.subjects[0][0]
            try:
                redis_client().delete(_login_key("failures", subject), _login_key("lock", subject))
            except redis.RedisError as error:
                logger.warning("device failures not cleared, Redis unavailable: %s", error)
            return ""
        return signing.dumps(
            {"a": _address_tag(self.address), "d": secrets.token_hex(16)}, salt=_DEVICE_SALT
        )


def device_cookie_set(response: HttpResponse, value: str) -> None:
    """Remember this browser as one the account's owner logged in from (nothing when `value` is
    empty: the one it has stays)."""
    if value:
        response.set_cookie(
            DEVICE_COOKIE,
            value,
            max_age=DEVICE_COOKIE_MAX_AGE,
            secure=settings.SESSION_COOKIE_SECURE,
            httponly=True,
            samesite="Lax",
        )


def login_lock_seconds(failures: int, *, free_failures: int) -> int:
    """How long a subject is locked after its `failures`-th failure: nothing for the free ones,
    then 1 s, 2 s, 4 s... up to ACCOUNT_LOGIN_MAX_LOCK_SECONDS. Each guess past the free ones
    costs the guesser twice the wait of the last; a person who mistypes a few times waits
    seconds, not an hour."""
    over = failures - free_failures
    if over <= 0:
        return 0
    return min(2 ** min(over - 1, 30), settings.ACCOUNT_LOGIN_MAX_LOCK_SECONDS)


def login_failures_clear(*, email: str) -> None:
    subject = f"email:{address_normalize(email)}"
    try:
        redis_client().delete(_login_key("failures", subject), _login_key("lock", subject))
    except redis.RedisError as error:
        logger.warning("login failures not cleared, Redis unavailable: %s", error)


def _device_id(cookie: str | None, *, address: str) -> str | None:
    """The device id in a valid cookie issued for this address, else None."""
    if not cookie:
        return None
    try:
        payload = signing.loads(cookie, salt=_DEVICE_SALT, max_age=DEVICE_COOKIE_MAX_AGE)
        if not constant_time_compare(str(payload["a"]), _address_tag(address)):
            return None
        return str(payload["d"])
    except (signing.BadSignature, KeyError, TypeError):
        return None


def _address_tag(address: str) -> str:
    # Keyed with SECRET_KEY: whoever holds the cookie cannot test it against a list of addresses.
    return salted_hmac(_DEVICE_SALT, address).hexdigest()[:32]


def _login_key(kind: str, subject: str) -> str:
    return f"accounts:login:{kind}:{_digest(subject)}"


def _digest(subject: str) -> str:
    # Hashed so addresses do not sit in Redis (or in a cookie) in clear text.
    return hashlib.sha256(subject.encode()).hexdigest()[:32]


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True
