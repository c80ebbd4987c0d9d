"""One shared Redis client per process for the platform's own keys (heartbeats, locks, limits)."""

import functools

import redis
from django.conf import settings

# Short timeouts: every caller (a request, /readyz, beat's tick) must stay responsive when Redis
# is down; they treat a timeout like any other connection error.
SOCKET_TIMEOUT_SECONDS = 1.0


@functools.cache
def _client_for(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=SOCKET_TIMEOUT_SECONDS,
        socket_timeout=SOCKET_TIMEOUT_SECONDS,
        health_check_interval=30,
    )


def redis_client() -> redis.Redis:
    """The client for settings.REDIS_URL, looked up on each call so tests can repoint it."""
    return _client_for(settings.REDIS_URL)
