"""What every push service's answer means for a delivery, and the HTTP client FCM and APNs share.

The rule, the same for Web Push, FCM and APNs (each says which of its answers mean "gone"):

- 2xx: delivered to the service;
- gone (the device or subscription no longer exists): `DeviceGone`, never tried again;
- 429, 5xx: busy or failing for now: TransientError, retried no sooner than its Retry-After;
- anything else: PermanentError, a dead letter for a person;
- no connection: TransientError; the connection lost or timed out after the request went out:
  OutcomeUnknown, never retried by itself; a certificate that does not verify: PermanentError.
"""

import functools
import os
import ssl
import time
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime
from http import HTTPStatus

import httpx
from django.conf import settings

from jobs.retry import OutcomeUnknown, PermanentError, TransientError

# How long the service keeps a message for a device that is offline, in seconds: a day, after
# which "your upload is ready" is news no more (the inbox still has it).
PUSH_TTL_SECONDS = 24 * 3600
# (connect, read): a push service answers in well under a second.
PUSH_TIMEOUTS = (5, 10)


class DeviceGone(Exception):
    """The service says the device or subscription no longer exists."""


def answer_check(response, *, service: str, gone: bool) -> None:
    """Raise what a service's answer (a requests or httpx response) means, as above."""
    status = response.status_code
    if 200 <= status < 300:
        return
    said = f"{status} {_phrase(status)}: {response.text[:300]}"
    if gone:
        raise DeviceGone(f"{service} says the device is gone ({said})")
    if status == 429 or status >= 500:
        raise TransientError(f"{service} is busy ({said})", retry_after=retry_after(response))
    raise PermanentError(f"{service} refused the request ({said})")


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def retry_after(response) -> float | None:
    """The Retry-After header in seconds: a number of seconds, or an HTTP date."""
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def post(url: str, *, service: str, has_effect: bool = True, **request) -> httpx.Response:
    """POST through the process's client, raising what a failure means: nothing sent (no
    connection) is TransientError; a request that went out without an answer is OutcomeUnknown
    when it `has_effect` (a push the device may show), TransientError when it has none (a
    token exchange).

    The URL is always built from settings (FCM_API_URL, APNS_HOST, the service account's
    token_uri), never from what a client sent, so unlike a Web Push endpoint it needs no
    allowlist (notifications/endpoints.py)."""
    try:
        return _client(os.getpid(), settings.PUSH_CA_BUNDLE).post(url, **request)
    except (httpx.ConnectError, httpx.ConnectTimeout) as error:
        if _certificate_refused(error):
            # A certificate that does not verify does not start verifying by itself.
            raise PermanentError(f"{service}'s TLS certificate failed: {error}") from error
        raise TransientError(f"no connection to {service}: {error}") from error
    except (httpx.InvalidURL, httpx.UnsupportedProtocol, httpx.LocalProtocolError) as error:
        # Nothing was sent: a URL or header of ours that cannot be, the operator's to fix.
        raise PermanentError(f"a request to {service} cannot be made: {error}") from error
    except httpx.PoolTimeout as error:
        raise TransientError(f"no connection to {service} free: {error}") from error
    except httpx.TransportError as error:
        if not has_effect:
            raise TransientError(f"no answer from {service}: {error}") from error
        raise OutcomeUnknown(
            f"no answer from {service} after the request was sent: {error}"
        ) from error


def with_fresh_credential(
    send: Callable[[bool], httpx.Response], *, stale: Callable
) -> httpx.Response:
    """`send(False)` with the cached credential; when its answer says that credential has
    expired (`stale`), once more with a new one, `send(True)`. The first request was answered,
    so it was not delivered: the second cannot show the message twice."""
    response = send(False)
    return send(True) if stale(response) else response


def json_or_empty(response: httpx.Response) -> Mapping:
    try:
        answer = response.json()
    except ValueError:
        return {}
    return answer if isinstance(answer, dict) else {}


@functools.cache
def _client(pid: int, ca_bundle: str) -> httpx.Client:
    """One client per process (a forked worker makes its own), kept open: APNs asks for
    connections kept across notifications, and treats many short ones as an attack. No proxy
    or .netrc from the environment, no redirects followed (a 3xx is a refusal)."""
    del pid  # only a key: a client's connections must not be shared across a fork
    return httpx.Client(
        http2=True,
        verify=ssl.create_default_context(cafile=ca_bundle) if ca_bundle else True,
        timeout=httpx.Timeout(PUSH_TIMEOUTS[1], connect=PUSH_TIMEOUTS[0]),
        trust_env=False,
        follow_redirects=False,
    )


def _certificate_refused(error: BaseException) -> bool:
    while error is not None:
        if isinstance(error, ssl.SSLCertVerificationError):
            return True
        error = error.__cause__ or error.__context__
    return False
