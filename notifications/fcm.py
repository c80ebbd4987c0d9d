"""Firebase Cloud Messaging, HTTP v1 API (firebase.google.com/docs/cloud-messaging/send/v1-api).

Sending: POST {FCM_API_URL}/v1/projects/{project}/messages:send, `Authorization: Bearer` an
OAuth 2.0 access token of the service account in FCM_SERVICE_ACCOUNT_FILE (the project is
FCM_PROJECT_ID, else the account's). The token comes from Google's server-to-server flow
(developers.google.com/identity/protocols/oauth2/service-account): a JWT signed RS256 with the
account's private key (iss the account's email, the firebase.messaging scope, aud its
token_uri, valid an hour) exchanged at token_uri; it is kept by the process until
ACCESS_TOKEN_MARGIN_SECONDS before it expires.

The answers (firebase.google.com/docs/reference/fcm/rest/v1/ErrorCode), on top of
notifications/push_http.py's rule:

- UNREGISTERED (404: the app was uninstalled, the token expired), INVALID_ARGUMENT (400) about
  the token: the device is gone;
- SENDER_ID_MISMATCH (403: the token belongs to another project) is a PermanentError, not gone:
  every device answers it when FCM_SERVICE_ACCOUNT_FILE is another project's;
- 401 (our access token expired or was revoked): a new token, and the message once more; a
  second 401 is a PermanentError;
- QUOTA_EXCEEDED (429), INTERNAL (500), UNAVAILABLE (503): retried, no sooner than Retry-After.
"""

import json
import re
import time

import jwt
from django.conf import settings

from jobs.retry import PermanentError
from notifications.push_http import (
    answer_check,
    json_or_empty,
    post,
    with_fresh_credential,
)

FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# Google's assertions may be valid for an hour at most, and its access tokens last an hour.
ASSERTION_SECONDS = 3600
# An access token is replaced this long before it expires: none expires between being read and
# being checked by FCM, whatever the clocks say.
ACCESS_TOKEN_MARGIN_SECONDS = 300
# Google documents no form for a registration token and has changed its length before; today's
# are ~150-200 characters of these. Long enough to be one, short enough to store.
TOKEN_FORM = re.compile(r"[A-Za-z0-9_:-]{32,1024}")
# Not SENDER_ID_MISMATCH: every device answers it when the service account belongs to another
# project than the app's, and one setting's mistake must not disable them all; it fails the
# delivery, for the operator to see.
GONE_CODES = frozenset({"UNREGISTERED"})
ACCOUNT_FIELDS = ("client_email", "private_key", "private_key_id", "token_uri")

# (account email, token_uri) -> (access token, time.monotonic() until which it is used).
_access_tokens: dict[tuple[str, str], tuple[str, float]] = {}


def fcm_configured() -> bool:
    return bool(settings.FCM_SERVICE_ACCOUNT_FILE)


def fcm_token_checked(token: str) -> str:
    if not TOKEN_FORM.fullmatch(token):
        raise ValueError(
            "An FCM registration token is 32 to 1024 letters, digits, '_', '-' or ':'."
        )
    return token


def fcm_send(device, payload: bytes, ttl: int) -> None:
    account = _service_account()
    project = settings.FCM_PROJECT_ID or account.get("project_id")
    if not project:
        raise PermanentError("FCM has no project: set FCM_PROJECT_ID")
    message = json.loads(payload)
    body = {
        "message": {
            "token": device.address,
            "notification": {"title": message["title"], "body": message["body"]},
            "data": _strings({**message["data"], "id": message["id"], "kind": message["kind"]}),
            "android": {"ttl": f"{ttl}s"},
        }
    }
    url = f"{settings.FCM_API_URL.rstrip('/')}/v1/projects/{project}/messages:send"
    response = with_fresh_credential(
        lambda fresh: post(
            url,
            service="FCM",
            json=body,
            headers={"Authorization": f"Bearer {_access_token(account, fresh=fresh)}"},
        ),
        stale=lambda answer: answer.status_code == 401,
    )
    answer_check(response, service="FCM", gone=_gone(response))


def _strings(data: dict) -> dict[str, str]:
    # FCM refuses a message whose data has a value that is not a string (400 INVALID_ARGUMENT).
    return {
        str(key): value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        for key, value in data.items()
    }


def _service_account() -> dict:
    try:
        with open(settings.FCM_SERVICE_ACCOUNT_FILE, encoding="utf-8") as file:
            account = json.load(file)
        missing = [name for name in ACCOUNT_FIELDS if not account.get(name)]
    except (OSError, ValueError, AttributeError) as error:
        raise PermanentError(f"FCM_SERVICE_ACCOUNT_FILE cannot be read: {error}") from error
    if missing:
        raise PermanentError(f"FCM_SERVICE_ACCOUNT_FILE has no {', '.join(missing)}")
    return account


def _access_token(account: dict, *, fresh: bool) -> str:
    """The process's access token for the account, exchanged for a new one when it is about to
    expire or `fresh` (FCM said it had)."""
    key = (account["client_email"], account["token_uri"])
    token, good_until = _access_tokens.get(key, ("", 0.0))
    if token and not fresh and time.monotonic() < good_until:
        return token
    now = int(time.time())
    try:
        assertion = jwt.encode(
            {
                "iss": account["client_email"],
                "scope": FCM_SCOPE,
                "aud": account["token_uri"],
                "iat": now,
                "exp": now + ASSERTION_SECONDS,
            },
            account["private_key"],
            algorithm="RS256",
            headers={"kid": account["private_key_id"]},
        )
    except (ValueError, TypeError, jwt.PyJWTError) as error:
        raise PermanentError(f"the FCM service account's key cannot sign: {error}") from error
    # The token_uri comes from the service account file, the operator's, never from a client.
    response = post(
        account["token_uri"],
        service="Google's token endpoint",
        # No push goes out with a token request: one whose answer was lost can be made again.
        has_effect=False,
        data={"grant_type": JWT_BEARER_GRANT, "assertion": assertion},
    )
    answer_check(response, service="Google's token endpoint", gone=False)
    answer = json_or_empty(response)
    token, lifetime = answer.get("access_token"), answer.get("expires_in", ASSERTION_SECONDS)
    if not isinstance(token, str) or not token or not isinstance(lifetime, int | float):
        # Its body not quoted: it may hold a token after all, which an error message would
        # carry into the dead letters and the admin.
        raise PermanentError(
            f"Google's token endpoint answered no usable token (fields: {sorted(answer)})"
        )
    _access_tokens[key] = (token, time.monotonic() + lifetime - ACCESS_TOKEN_MARGIN_SECONDS)
    return token


def _gone(response) -> bool:
    error = json_or_empty(response).get("error")
    if not isinstance(error, dict):
        return False
    details = [detail for detail in error.get("details") or [] if isinstance(detail, dict)]
    codes = {detail.get("errorCode") for detail in details}
    if codes & GONE_CODES:
        return True
    # INVALID_ARGUMENT is also the answer to a malformed message, which the device is not to
    # blame for: gone only when it is about the token.
    if "INVALID_ARGUMENT" not in codes and error.get("status") != "INVALID_ARGUMENT":
        return False
    fields = {
        violation.get("field")
        for detail in details
        for violation in detail.get("fieldViolations") or []
        if isinstance(violation, dict)
    }
    return "message.token" in fields or "registration token" in str(error.get("message", ""))
