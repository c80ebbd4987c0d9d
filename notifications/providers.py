"""Push services: what a send asks of them. What their answers mean is one rule for all
(notifications/push_http.py); FCM's and APNs' adapters are notifications/fcm.py and apns.py.

Web Push (RFC 8030, 8291, 8292): the payload encrypted for the subscription (`aes128gcm`) and
signed for by our VAPID key, through pywebpush, over `endpoints.PushSession` (https to public
peers only, no redirects). Gone: 404, 410, or keys that cannot encrypt; any other 4xx (400
malformed, 401/403 our VAPID key refused, 413 too large) or a redirect is a PermanentError.
"""

import base64
import time
from urllib.parse import urlsplit

import requests
from cryptography.hazmat.primitives.asymmetric import ec
from django.conf import settings
from py_vapid import Vapid, VapidException
from pywebpush import WebPusher, WebPushException
from urllib3.exceptions import NewConnectionError

from jobs.retry import OutcomeUnknown, PermanentError, TransientError
from notifications.apns import apns_configured, apns_send, apns_token_checked
from notifications.endpoints import PushSession, webpush_endpoint_checked
from notifications.fcm import fcm_configured, fcm_send, fcm_token_checked
from notifications.push_http import PUSH_TIMEOUTS, PUSH_TTL_SECONDS, DeviceGone, answer_check

# A VAPID signature is valid for this long (RFC 8292 allows up to 24 h).
VAPID_VALID_SECONDS = 12 * 3600


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


def push_configured(platform: str) -> bool:
    return _CONFIGURED[platform]()


def device_token_checked(platform: str, token: str) -> str:
    """An FCM or APNs token, if it has the platform's form, in one spelling; ValueError
    otherwise."""
    return _TOKEN_CHECKED[platform](token)


def push_send(device, *, payload: bytes, ttl: int = PUSH_TTL_SECONDS) -> None:
    """Send the payload (services.push_payload) to the device through its platform's service,
    for the service to keep `ttl` seconds at most while the device is offline; raises
    DeviceGone, TransientError, PermanentError or OutcomeUnknown (push_http.py)."""
    if not push_configured(device.platform):
        # Configured when the device registered, no longer: the operator's to fix.
        raise PermanentError(f"{device.get_platform_display()} is not configured on this server")
    _SEND[device.platform](device, payload, ttl)


def _webpush_send(device, payload: bytes, ttl: int) -> None:
    endpoint = webpush_endpoint_checked(device.address)
    parts = urlsplit(endpoint)
    claims = {
        "sub": settings.VAPID_SUBJECT,
        "aud": f"{parts.scheme}://{parts.netloc}",
        "exp": int(time.time()) + VAPID_VALID_SECONDS,
    }
    try:
        headers = Vapid.from_string(private_key=settings.VAPID_PRIVATE_KEY).sign(claims)
    except (ValueError, TypeError, VapidException) as error:
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
            ttl=ttl,
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
    answer_check(response, service="the push service", gone=response.status_code in (404, 410))


def _before_sending(error: requests.ConnectionError) -> bool:
    """Whether the connection failed before any byte of the request went out."""
    cause = error.args[0] if error.args else None
    reason = getattr(cause, "reason", cause)
    return isinstance(reason, NewConnectionError | ConnectionRefusedError)


_CONFIGURED = {"webpush": webpush_configured, "fcm": fcm_configured, "apns": apns_configured}
_TOKEN_CHECKED = {"fcm": fcm_token_checked, "apns": apns_token_checked}
_SEND = {"webpush": _webpush_send, "fcm": fcm_send, "apns": apns_send}
