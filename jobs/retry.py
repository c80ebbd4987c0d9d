"""Which failures are worth another try, and how long to wait before it.

Only transient errors are retried: a timeout, a dropped connection, an SMTP 4xx. A permanent
error (an SMTP 5xx, a server without STARTTLS, a certificate that does not verify, a bug) fails
at once: retrying it only delays the dead letter a person has to look at.
"""

import random
import smtplib
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings


class TransientError(Exception):
    """A failure that may go away by itself. `retry_after` is the provider's own hint."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(Exception):
    """A failure that another attempt cannot fix; the task is dead-lettered at once."""


class OutcomeUnknown(Exception):
    """The provider may have acted before the failure (its reply was lost after it had the
    whole request). Never retried by itself, since a retry could do it twice: dead-lettered at
    once, for a person who can check with the provider or the recipient."""


# Network failures below any protocol: the other side may be back in a moment.
NETWORK_ERRORS: tuple[type[Exception], ...] = (ConnectionError, TimeoutError)


@dataclass(frozen=True)
class RetryPolicy:
    """Declared on a task (`retry_policy=...`): what is transient, how often, how patiently.

    Numbers left as None come from settings (JOBS_MAX_RETRIES, JOBS_RETRY_BASE_SECONDS,
    JOBS_RETRY_MAX_SECONDS), so operators and tests can tune every task at once.
    """

    transient: tuple[type[Exception], ...] = ()
    # For errors whose class alone does not tell (an SMTP reply code): returns the error
    # re-classified as TransientError or PermanentError, or None to fall back to `transient`.
    classify: Callable[[Exception], Exception | None] | None = None
    max_retries: int | None = None
    base_seconds: float | None = None
    max_seconds: float | None = None

    def classified(self, error: Exception) -> Exception:
        if isinstance(error, TransientError | PermanentError):
            return error
        if self.classify is not None and (verdict := self.classify(error)) is not None:
            return verdict
        if isinstance(error, self.transient):
            return TransientError(f"{type(error).__name__}: {error}")
        return error

    def is_transient(self, error: Exception) -> bool:
        return isinstance(self.classified(error), TransientError)

    @property
    def retries_allowed(self) -> int:
        return settings.JOBS_MAX_RETRIES if self.max_retries is None else self.max_retries

    def wait_seconds(self, *, retries_so_far: int, retry_after: float | None = None) -> float:
        """Exponential backoff with equal jitter: half the exponential wait is fixed, the other
        half random. Waits keep growing (unlike full jitter, which can draw ~0) while workers
        that failed together still spread out instead of retrying in lock-step."""
        base = settings.JOBS_RETRY_BASE_SECONDS if self.base_seconds is None else self.base_seconds
        cap = settings.JOBS_RETRY_MAX_SECONDS if self.max_seconds is None else self.max_seconds
        exponential = min(cap, base * 2**retries_so_far)
        wait = exponential / 2 + random.uniform(0, exponential / 2)  # noqa: S311 - not crypto
        if retry_after is not None:
            # The provider said when; sooner would only be refused again. Still capped: a
            # countdown beyond the cap could outlive the broker's visibility timeout.
            wait = max(wait, min(retry_after, cap))
        return wait


# No retries at all: every failure is permanent. The default for tasks that declare nothing.
NEVER_RETRY = RetryPolicy(max_retries=0)
# The settings' backoff, for waits that are not a task's retry (an outbox row's next publish).
DEFAULT_BACKOFF = RetryPolicy()


def classify_smtp_error(error: Exception) -> Exception | None:
    """SMTP replies: 4xx are temporary by definition (RFC 5321 §4.2.1), 5xx are final.
    A dropped or refused connection and a timeout are transient. A server that lacks what we
    require (STARTTLS, an extension) or a certificate that does not verify stays so until a
    person changes the configuration: permanent, though smtplib and ssl raise them as OSError."""
    if isinstance(error, smtplib.SMTPNotSupportedError | ssl.SSLCertVerificationError):
        return PermanentError(f"{type(error).__name__}: {error}")
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in error.recipients.values()]
        if codes and all(400 <= code < 500 for code in codes):
            return TransientError(f"recipients deferred: {codes}")
        return PermanentError(f"recipients refused: {codes}")
    if isinstance(error, smtplib.SMTPResponseException):
        message = f"SMTP {error.smtp_code}: {error.smtp_error!r}"
        if 400 <= error.smtp_code < 500:
            return TransientError(message)
        return PermanentError(message)
    if isinstance(error, (smtplib.SMTPServerDisconnected, *NETWORK_ERRORS)):
        return TransientError(f"{type(error).__name__}: {error}")
    if isinstance(error, OSError):  # refused, unreachable, reset: the network, not the message
        return TransientError(f"{type(error).__name__}: {error}")
    return None


# For a provider's outage (a mail server or push service down, refusing, answering 4xx or 5xx):
# retries enough to ride out about a quarter of an hour before a person must act. With equal
# jitter from JOBS_RETRY_BASE_SECONDS (2 s) capped at JOBS_RETRY_MAX_SECONDS (600 s), ten
# retries wait 13.5 to 27 minutes in all; the default five wait 31 to 62 s, less than the minute
# a provider's restart takes (the chaos suite's outage, docs/reliability.md).
PROVIDER_RETRIES = 10

SMTP_TRANSIENT = RetryPolicy(classify=classify_smtp_error, max_retries=PROVIDER_RETRIES)
