"""Classification of failures and the backoff's shape (services, no broker needed)."""

import smtplib
import ssl

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from jobs.retry import (
    SMTP_TRANSIENT,
    PermanentError,
    RetryPolicy,
    TransientError,
    classify_smtp_error,
)


@pytest.mark.parametrize(
    "error",
    [
        smtplib.SMTPResponseException(451, b"try again later"),
        smtplib.SMTPServerDisconnected("gone"),
        smtplib.SMTPConnectError(421, b"busy"),
        ConnectionRefusedError(111, "refused"),
        TimeoutError("timed out"),
        smtplib.SMTPRecipientsRefused({"a@example.com": (452, b"mailbox full")}),
    ],
)
def test_smtp_4xx_and_network_failures_are_transient(error):
    assert isinstance(classify_smtp_error(error), TransientError)
    assert SMTP_TRANSIENT.is_transient(error)


@pytest.mark.parametrize(
    "error",
    [
        smtplib.SMTPResponseException(550, b"no such user"),
        smtplib.SMTPDataError(554, b"rejected"),
        smtplib.SMTPRecipientsRefused({"a@example.com": (550, b"unknown")}),
        # what no retry can fix: a server without STARTTLS, a certificate that does not verify
        smtplib.SMTPNotSupportedError("STARTTLS extension not supported by server."),
        ssl.SSLCertVerificationError(1, "certificate verify failed: self-signed certificate"),
    ],
)
def test_smtp_5xx_and_misconfigurations_are_permanent(error):
    assert isinstance(classify_smtp_error(error), PermanentError)
    assert not SMTP_TRANSIENT.is_transient(error)


def test_an_unrelated_bug_is_not_transient():
    assert not SMTP_TRANSIENT.is_transient(KeyError("bug"))


def test_waits_follow_equal_jitter_bands_and_never_exceed_the_cap():
    policy = RetryPolicy(base_seconds=1, max_seconds=30)
    for retries_so_far in range(8):
        exponential = min(30, 2**retries_so_far)
        waits = [policy.wait_seconds(retries_so_far=retries_so_far) for _ in range(300)]
        assert all(exponential / 2 <= wait <= exponential for wait in waits)
        assert len({round(wait, 6) for wait in waits}) > 250  # jittered, not lock-step


def test_a_retry_after_longer_than_the_backoff_wins_but_stays_under_the_cap():
    policy = RetryPolicy(base_seconds=1, max_seconds=30)
    assert policy.wait_seconds(retries_so_far=0, retry_after=12) == 12
    assert policy.wait_seconds(retries_so_far=0, retry_after=3600) == 30


def test_defaults_come_from_settings(settings):
    settings.JOBS_MAX_RETRIES = 9
    settings.JOBS_RETRY_BASE_SECONDS = 10
    settings.JOBS_RETRY_MAX_SECONDS = 15
    policy = RetryPolicy()
    assert policy.retries_allowed == 9
    assert 7.5 <= policy.wait_seconds(retries_so_far=3) <= 15


def test_settings_that_would_redeliver_countdowns_fail_the_system_check(settings):
    settings.CELERY_VISIBILITY_TIMEOUT = 300
    settings.JOBS_RETRY_MAX_SECONDS = 600
    with pytest.raises(SystemCheckError, match=r"jobs\.E001"):
        call_command("check")
