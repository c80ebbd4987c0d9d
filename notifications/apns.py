"""Apple Push Notification service, token-based, over HTTP/2
(developer.apple.com/documentation/usernotifications/sending-notification-requests-to-apns).

Sending: POST {APNS_HOST}/3/device/<token> over HTTP/2 with `authorization: bearer` a provider
token, `apns-topic` (APNS_TOPIC, the app's bundle id), `apns-push-type: alert`,
`apns-priority: 10` (now) and `apns-expiration` (a day after the notification was made), the
body `{"aps": {"alert": {"title", "body"}}, "id", "kind", ...data}` of at most 4,096 bytes. The
provider token is a JWT signed ES256 with the .p8 key (APNS_KEY_FILE), header {alg, kid:
APNS_KEY_ID}, claims {iss: APNS_TEAM_ID, iat}; each process makes one and uses it for
PROVIDER_TOKEN_SECONDS.

The answers, on top of notifications/push_http.py's rule:

- 410 (Unregistered, ExpiredToken), 400 BadDeviceToken: the device is gone. BadDeviceToken is
  also the answer to a sandbox token sent to the production host: an APNS_HOST that does not
  match the app's build disables its devices (each enabled again when its app registers);
- 400 DeviceTokenNotForTopic is a PermanentError, not gone: every device answers it when
  APNS_TOPIC is wrong, and one setting's mistake must not disable them all;
- 403 ExpiredProviderToken: a new provider token, and the message once more; any other 403
  (InvalidProviderToken: the key, key id or team is wrong) is a PermanentError;
- 429 (TooManyRequests to the device, TooManyProviderTokenUpdates), 500, 503: retried.
"""

import json
import re
import time
from pathlib import Path

import jwt
from django.conf import settings

from jobs.retry import PermanentError
from notifications.push_http import (
    answer_check,
    json_or_empty,
    post,
    with_fresh_credential,
)

# Apple refuses a provider token issued more than an hour ago, and one renewed more often than
# every 20 minutes (429 TooManyProviderTokenUpdates): renewed after 50 minutes.
PROVIDER_TOKEN_SECONDS = 50 * 60
# The largest notification payload APNs takes (VoIP ones aside).
MAX_PAYLOAD_BYTES = 4096
# A device token is 32 bytes today, in hex; Apple says it may grow, so up to 100 bytes are taken.
TOKEN_FORM = re.compile(r"(?:[0-9a-f]{2}){32,100}")
GONE_REASONS = frozenset({"BadDeviceToken", "Unregistered"})

# (key file, key id, team id) -> (provider token, time.monotonic() when it was made).
_provider_tokens: dict[tuple[str, str, str], tuple[str, float]] = {}


def apns_configured() -> bool:
    return all(
        (settings.APNS_KEY_FILE, settings.APNS_KEY_ID, settings.APNS_TEAM_ID, settings.APNS_TOPIC)
    )


def apns_token_checked(token: str) -> str:
    """The token in one spelling (lower case: one device is one row however it is written)."""
    token = token.lower()
    if not TOKEN_FORM.fullmatch(token):
        raise ValueError("An APNs device token is 64 to 200 hexadecimal digits.")
    return token


def apns_send(device, payload: bytes, ttl: int) -> None:
    message = json.loads(payload)
    body = json.dumps(
        {
            **message["data"],
            "id": message["id"],
            "kind": message["kind"],
            "aps": {"alert": {"title": message["title"], "body": message["body"]}},
        },
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()
    if len(body) > MAX_PAYLOAD_BYTES:
        # Nothing was sent: APNs would answer 413 PayloadTooLarge.
        raise PermanentError(f"the APNs payload is {len(body)} bytes, over {MAX_PAYLOAD_BYTES}")
    url = f"{settings.APNS_HOST.rstrip('/')}/3/device/{device.address}"
    response = with_fresh_credential(
        lambda fresh: post(
            url,
            service="APNs",
            content=body,
            headers={
                "authorization": f"bearer {_provider_token(fresh=fresh)}",
                "apns-topic": settings.APNS_TOPIC,
                "apns-push-type": "alert",
                "apns-priority": "10",
                "apns-expiration": str(int(time.time()) + ttl),
            },
        ),
        stale=lambda answer: (
            answer.status_code == 403 and _reason(answer) == "ExpiredProviderToken"
        ),
    )
    answer_check(
        response,
        service="APNs",
        gone=response.status_code == 410 or _reason(response) in GONE_REASONS,
    )


def _reason(response) -> str:
    return str(json_or_empty(response).get("reason", ""))


def _provider_token(*, fresh: bool) -> str:
    key = (settings.APNS_KEY_FILE, settings.APNS_KEY_ID, settings.APNS_TEAM_ID)
    token, made = _provider_tokens.get(key, ("", 0.0))
    if token and not fresh and time.monotonic() - made < PROVIDER_TOKEN_SECONDS:
        return token
    try:
        token = jwt.encode(
            {"iss": settings.APNS_TEAM_ID, "iat": int(time.time())},
            Path(settings.APNS_KEY_FILE).read_text(encoding="utf-8"),
            algorithm="ES256",
            # Apple's header is {alg, kid}; PyJWT would add typ.
            headers={"kid": settings.APNS_KEY_ID, "typ": None},
        )
    except (OSError, ValueError, TypeError, jwt.PyJWTError) as error:
        raise PermanentError(f"APNS_KEY_FILE cannot sign a provider token: {error}") from error
    _provider_tokens[key] = (token, time.monotonic())
    return token
