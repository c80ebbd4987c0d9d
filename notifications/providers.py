"""Push services: what a send asks of them, and what their answers mean.

Web Push (RFC 8030, 8291, 8292): the payload encrypted for the subscription (`aes128gcm`) and
signed for by our VAPID key, through pywebpush, over `endpoints.PushSession` (https to public
peers only, no redirects). The answers, the same for every service:

- 2xx: delivered to the service;
- 404, 410: the subscription is gone (the person unsubscribed, the browser dropped it):
  `DeviceGone`, and the device is never tried again;
- 429, 5xx: busy or failing for now: TransientError, retried no sooner than its Retry-After;
- anything else (400 malformed, 401/403 our VAPID key refused, 413 too large, a redirect):
  PermanentError, a dead letter for a person;
- no connection (refused, timed out while connecting): TransientError; the connection lost or
  timed out after the request went out: OutcomeUnknown, never retried by itself; a certificate
  that does not verify: PermanentError.
"""

import base64
import time
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import requests
from cryptography.hazmat.primitives.asymmetric import ec
from django.conf import settings
from py_vapid import Vapid
from pywebpush import WebPusher, WebPushException
from urllib3.exceptions import NewConnectionError

from jobs.retry import OutcomeUnknown, PermanentError, TransientError
from notifications.endpoints import PushSession, webpush_endpoint_checked

# How long the service keeps a message for a browser that is offline, in seconds: a day, after
# which "your upload is ready" is news no more (the inbox still has it).
PUSH_TTL_SECONDS = 24 * 3600
# (connect, read): a push service answers in well under a second.
PUSH_TIMEOUTS = (5, 10)
# A VAPID signature is valid for this long (RFC 8292 allows up to 24 h).
VAPID_VALID_SECONDS = 12 * 3600


class DeviceGone(Exception):
    """The service says the device or subscription no longer exists."""


def webpush_configured() -> bool:
    return bool(settings.VAPID_PRIVATE_KEY and settings.VAPID_PUBLIC_KEY)


def webpush_keys_checked(keys: dict) -> dict:
    """A subscription's keys, if they can encrypt a message: `p256dh` a point of the P-256
    curve, `auth` 16 bytes, both base64url; ValueError otherwise."""
    try:
        receiver = base64.urlsafe_b64decode(_padded(keys["p256dh"]))
        auth = base64.urlsafe_b64decode(_padded(keys["auth"]))
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), receiver)
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError("subscription keys: p256dh must be a P-256 public key.") from error
    if len(receiver) != 65:
        # What browsers send, and the only form the encryption takes (RFC 8291).
        raise ValueError("subscription keys: p256dh must be an uncompressed P-256 point.")
    if len(auth) != 16:
        raise ValueError("subscription keys: auth must be 16 bytes.")
    return keys


def _padded(value: str) -> str:
    return value + "=" * (-len(value) % 4)


def push_send(device, *, payload: bytes) -> None:
    """Send the payload to the device through its platform's service; raises as above."""
    if device.platform != "webpush":
        raise PermanentError(f"{device.platform} is not configured on this server")
    _webpush_send(device, payload)


def _webpush_send(device, payload: bytes) -> None:
    if not webpush_configured():
        raise PermanentError("Web Push is not configured on this server (VAPID keys)")
    endpoint = webpush_endpoint_checked(device.address)
    parts = urlsplit(endpoint)
    claims = {
        "sub": settings.VAPID_SUBJECT,
        "aud": f"{parts.scheme}://{parts.netloc}",
        "exp": int(time.time()) + VAPID_VALID_SECONDS,
    }
    try:
        headers = Vapid.from_string(private_key=settings.VAPID_PRIVATE_KEY).sign(claims)
    except Exception as error:
        # Nothing was sent: a key that cannot sign is the operator's to fix.
        raise PermanentError(f"VAPID_PRIVATE_KEY cannot sign: {error}") from error
    session = PushSession()
    if settings.WEBPUSH_CA_BUNDLE:
        session.verify = settings.WEBPUSH_CA_BUNDLE
    try:
        pusher = WebPusher({"endpoint": endpoint, "keys": device.keys}, requests_session=session)
        response = pusher.send(
            payload,
            headers,
            ttl=PUSH_TTL_SECONDS,
            content_encoding="aes128gcm",
            timeout=PUSH_TIMEOUTS,
        )
    except WebPushException as error:
        # Its keys cannot encrypt a message: no send to it can ever work.
        raise DeviceGone(f"the subscription cannot be used: {error}") from error
    except requests.exceptions.SSLError as error:
        # A certificate that does not verify does not start verifying by itself.
        raise PermanentError(f"the push service's TLS failed: {error}") from error
    except requests.ConnectTimeout as error:
        raise TransientError(f"no connection to the push service: {error}") from error
    except requests.ConnectionError as error:
        if _before_sending(error):
            raise TransientError(f"no connection to the push service: {error}") from error
        raise OutcomeUnknown(f"connection lost after the request was sent: {error}") from error
    except requests.Timeout as error:
        raise OutcomeUnknown(f"no answer after the request was sent: {error}") from error
    finally:
        session.close()
    _answer_check(response)


def _before_sending(error: requests.ConnectionError) -> bool:
    """Whether the connection failed before any byte of the request went out."""
    cause = error.args[0] if error.args else None
    reason = getattr(cause, "reason", cause)
    return isinstance(reason, NewConnectionError | ConnectionRefusedError)


def _answer_check(response: requests.Response) -> None:
    status = response.status_code
    if 200 <= status < 300:
        return
    said = f"{status} {response.reason}: {response.text[:300]}"
    if status in (404, 410):
        raise DeviceGone(f"the push service says the subscription is gone ({said})")
    if status == 429 or status >= 500:
        raise TransientError(
            f"the push service is busy ({said})", retry_after=_retry_after(response)
        )
    raise PermanentError(f"the push service refused the message ({said})")


def _retry_after(response: requests.Response) -> float | None:
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
