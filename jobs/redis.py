"""One shared Redis client per process for the platform's own keys (heartbeats, locks, limits).

Every caller (a request's abuse limit, /readyz, beat's tick, a worker's rate limit) must stay
responsive when Redis is down or hangs, and treats a failure like any other connection error
(the request limits fail open, a task retries). Two things keep a failing Redis cheap:
- short socket timeouts: a healthy Redis answers in a millisecond, so half a second means gone;
- a per-process circuit: after a connection error or a timeout, calls fail at once, without
  touching the network, for REDIS_FAIL_FAST_SECONDS. A Redis that accepts connections and never
  answers would otherwise cost every call its full timeout: a signup counts two abuse limits,
  a login locks three.
"""

import functools
import threading
import time

import redis
from django.conf import settings

SOCKET_TIMEOUT_SECONDS = 0.5
# Long enough that a burst of requests pays one timeout, short enough that Redis coming back is
# noticed within a couple of seconds.
REDIS_FAIL_FAST_SECONDS = 2.0


class _Circuit:
    def __init__(self) -> None:
        self._open_until = 0.0
        self._lock = threading.Lock()

    @property
    def is_open(self) -> bool:
        return time.monotonic() < self._open_until

    def raise_if_open(self) -> None:
        if self.is_open:
            raise redis.ConnectionError("Redis failed moments ago; not trying again yet")

    def record_failure(self) -> None:
        with self._lock:
            self._open_until = time.monotonic() + REDIS_FAIL_FAST_SECONDS

    def close(self) -> None:
        self._open_until = 0.0


redis_circuit = _Circuit()


class _FailFastMixin:
    def connect(self, *args, **kwargs):
        redis_circuit.raise_if_open()
        try:
            return super().connect(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError):
            redis_circuit.record_failure()
            raise

    def read_response(self, *args, **kwargs):
        try:
            return super().read_response(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError):
            redis_circuit.record_failure()
            raise


class _FailFastConnection(_FailFastMixin, redis.Connection):
    pass


class _FailFastSSLConnection(_FailFastMixin, redis.SSLConnection):
    pass


@functools.cache
def _client_for(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=SOCKET_TIMEOUT_SECONDS,
        socket_timeout=SOCKET_TIMEOUT_SECONDS,
        health_check_interval=30,
        connection_class=(
            _FailFastSSLConnection if url.startswith("rediss://") else _FailFastConnection
        ),
    )


def redis_client() -> redis.Redis:
    """The client for settings.REDIS_URL, looked up on each call so tests can repoint it."""
    return _client_for(settings.REDIS_URL)
