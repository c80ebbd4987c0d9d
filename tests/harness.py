"""The test harness: a private Redis, a private RabbitMQ node when it is the broker, and a real
Celery worker, shared by every test module.

Loaded as a plugin (`-p tests.harness` in pyproject.toml) rather than from conftest.py because
it must set the environment before pytest-django imports the settings: the whole suite, the
worker subprocess included, talks to servers on free ports that this session owns, never to
whatever runs on 6379 or 5672.

TEST_BROKER picks the broker: `redis` (the default, the session's Redis) or `rabbitmq` (a node
of the session's own; Redis still holds the platform's keys). `make test` runs the suite on
Redis, then the broker-dependent tests again on RabbitMQ.
"""

import os
import tempfile
from pathlib import Path

import pytest

from notifications.vapid import vapid_keys_generate
from tests.notifications.mobile_services import (
    APNS_KEY_ID,
    APNS_TEAM_ID,
    APNS_TOPIC,
    apns_key_make,
    fcm_account_make,
)
from tests.notifications.push_service import certificate_make
from tests.processes import free_port

SESSION_DIR = Path(tempfile.mkdtemp(prefix="celery-saas-tests-"))
REDIS_PORT = free_port()
REDIS_URL = f"redis://127.0.0.1:{REDIS_PORT}/0"
SMTP_PORT = free_port()
TEST_BROKER = os.environ.get("TEST_BROKER", "redis")
if TEST_BROKER not in {"redis", "rabbitmq"}:
    raise SystemExit(f"TEST_BROKER must be redis or rabbitmq, not {TEST_BROKER!r}")
RABBITMQ_PORT = free_port()
# The session's Web Push service (tests/notifications/push_service.py), and our VAPID keys.
PUSH_PORT = free_port()
PUSH_CERT, PUSH_KEY = certificate_make(SESSION_DIR)
VAPID = vapid_keys_generate()
# The session's FCM (with Google's token endpoint) and APNs stand-ins
# (tests/notifications/mobile_services.py), under the same certificate, and our keys for them.
FCM_PORT = free_port()
FCM_ACCOUNT = fcm_account_make(SESSION_DIR, port=FCM_PORT)
APNS_PORT = free_port()
APNS_KEY = apns_key_make(SESSION_DIR)
BROKER_URL = (
    f"amqp://guest:guest@127.0.0.1:{RABBITMQ_PORT}//" if TEST_BROKER == "rabbitmq" else REDIS_URL
)

# Forced, not defaulted: a developer's .env or shell must not point the tests at real services.
os.environ.update(
    {
        "REDIS_URL": REDIS_URL,
        "CELERY_BROKER_URL": BROKER_URL,
        "CELERY_RESULT_BACKEND": REDIS_URL,
        "MEDIA_ROOT": str(SESSION_DIR / "media"),
        "STATIC_ROOT": str(SESSION_DIR / "static"),
        "SQLITE_TEST_DATABASE": str(SESSION_DIR / "test-db.sqlite3"),
        # Workers send through the session's SMTP server (tests/smtp.py), a real one.
        "EMAIL_URL": f"smtp://127.0.0.1:{SMTP_PORT}",
        "SITE_URL": "http://testserver",
        "ALLOWED_HOSTS": "testserver,localhost,127.0.0.1",
        "DEBUG": "0",
        "SECRET_KEY": "tests-only-secret-key-that-is-long-enough-for-django-checks-0123456789",
        # The test client speaks plain HTTP; redirecting it to HTTPS would test nothing.
        "SECURE_SSL_REDIRECT": "0",
        # Clients (the test client, test servers) connect directly; no proxy in front.
        "TRUSTED_PROXIES": "none",
        # Retry waits in seconds, not minutes: the same backoff shape, at a test's pace.
        "JOBS_RETRY_BASE_SECONDS": "0.5",
        "JOBS_RETRY_MAX_SECONDS": "8",
        # Web Push to the session's push service only, on 127.0.0.1 with a certificate of its
        # own (notifications/endpoints.py refuses both by default).
        "VAPID_PUBLIC_KEY": VAPID.public_key,
        "VAPID_PRIVATE_KEY": VAPID.private_key,
        "VAPID_SUBJECT": "mailto:ops@example.com",
        "WEBPUSH_ALLOWED_HOSTS": f"127.0.0.1:{PUSH_PORT}",
        "WEBPUSH_ALLOW_PRIVATE_ADDRESSES": "1",
        "WEBPUSH_CA_BUNDLE": str(PUSH_CERT),
        # FCM and APNs to the session's stand-ins only, whose certificate the workers trust.
        "FCM_SERVICE_ACCOUNT_FILE": str(FCM_ACCOUNT),
        "FCM_PROJECT_ID": "",
        "FCM_API_URL": f"https://127.0.0.1:{FCM_PORT}",
        "APNS_KEY_FILE": str(APNS_KEY),
        "APNS_KEY_ID": APNS_KEY_ID,
        "APNS_TEAM_ID": APNS_TEAM_ID,
        "APNS_TOPIC": APNS_TOPIC,
        "APNS_HOST": f"https://127.0.0.1:{APNS_PORT}",
        "PUSH_CA_BUNDLE": str(PUSH_CERT),
    }
)

(SESSION_DIR / "static").mkdir()


def only_on_broker(broker: str, why: str) -> pytest.MarkDecorator:
    """Marks a test of what one broker does (`why`), skipped when the session runs the other."""
    return pytest.mark.skipif(TEST_BROKER != broker, reason=f"{broker} only: {why}")


# For tests of what a task does when its worker loses the broker mid-run (its retry cannot be
# published): on RabbitMQ the worker cancels that run instead (config/celery.py), and the
# broker delivers its message again.
task_runs_on_when_its_worker_loses_the_broker = only_on_broker(
    "redis", "on RabbitMQ the worker cancels the run, and the broker delivers it again"
)


pytest_plugins = ["tests.fixtures"]
