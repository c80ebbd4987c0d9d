"""Stand-ins for FCM (with Google's OAuth token endpoint) and APNs, over HTTPS on 127.0.0.1 with
the session's self-signed certificate, served by hypercorn (HTTP/2, as Apple's servers speak).

Each records what it gets, answers what a test scripts (else success), and checks every request
the way Google and Apple document them; what fails a check is answered as they would answer it
and listed in `problems`, which the fixtures require to be empty after each test:

- Google's token endpoint: a jwt-bearer grant whose assertion is signed RS256 by the service
  account's key (kid its key id), iss the account, aud the token_uri, the firebase.messaging
  scope, at most an hour long;
- FCM's messages:send: the project's path, a bearer token the endpoint issued and that has not
  expired (`tokens_expire()` makes the ones issued so far answer 401, as an expired one does),
  `{"message": {token, notification: {title, body}, data: {string: string}}}`;
- APNs: HTTP/2 only, POST /3/device/<hex token>, a provider token signed ES256 by the .p8 key
  with our key id and team, less than an hour old (`tokens_expire()`: 403
  ExpiredProviderToken), apns-topic, apns-push-type alert, apns-priority, apns-expiration, a
  JSON body with aps.alert {title, body} of at most 4,096 bytes.
"""

import asyncio
import itertools
import json
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypercorn.asyncio import serve
from hypercorn.config import Config

FCM_PROJECT = "tests-project"
FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
APNS_KEY_ID = "TESTKEY123"
APNS_TEAM_ID = "TESTTEAM01"
APNS_TOPIC = "com.example.app"


def _pem(key) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def fcm_account_make(folder: Path, *, port: int) -> Path:
    """A service account's JSON key file, as the Firebase console gives it, whose token_uri is
    the stand-in's."""
    path = folder / "fcm-service-account.json"
    account = {
        "type": "service_account",
        "project_id": FCM_PROJECT,
        "private_key_id": "tests-key-1",
        "private_key": _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        "client_email": f"push@{FCM_PROJECT}.iam.gserviceaccount.com",
        "client_id": "100000000000000000001",
        "token_uri": f"https://127.0.0.1:{port}/token",
    }
    path.write_text(json.dumps(account))
    return path


def apns_key_make(folder: Path) -> Path:
    """A .p8 key, as Apple's developer account gives it: P-256, PKCS#8 PEM."""
    path = folder / f"AuthKey_{APNS_KEY_ID}.p8"
    path.write_text(_pem(ec.generate_private_key(ec.SECP256R1())))
    return path


def fcm_error(status: int, code: str, error_code: str, message: str, *, field: str = "") -> dict:
    """An FCM v1 error body, as Google documents it."""
    details = [
        {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": error_code}
    ]
    if field:
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{"field": field, "description": message}],
            }
        )
    return {"error": {"code": status, "message": message, "status": code, "details": details}}


@dataclass
class Received:
    path: str
    headers: dict  # names in lower case
    body: bytes
    at: float
    http_version: str
    answered: int = 0  # the status it was answered

    def json(self) -> dict:
        return json.loads(self.body)


class Refused(Exception):
    """A request Google or Apple would refuse: its answer, and whether it is a problem of ours
    (an expired token is not: it is what the test asked for)."""

    def __init__(self, status: int, body: dict, *, problem: bool = True) -> None:
        super().__init__(json.dumps(body))
        self.status, self.body, self.problem = status, body, problem


class StandIn:
    """An HTTPS server on hypercorn in a thread of its own; subclasses answer requests."""

    def __init__(self, *, port: int, cert: Path, key: Path) -> None:
        self.port = port
        self.received: list[Received] = []
        self.answers: list[tuple[int, dict, dict]] = []
        self.problems: list[str] = []
        self.expired_tokens: set[str] = set()
        self.lock = threading.Lock()
        self.config = Config()
        self.config.bind = [f"127.0.0.1:{port}"]
        self.config.certfile, self.config.keyfile = str(cert), str(key)
        self.config.accesslog = None
        self.config.errorlog = None
        self.thread = threading.Thread(target=asyncio.run, args=(self._serve(),), daemon=True)

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        # Stopping cancels the connections clients still keep open, which asyncio would log as
        # errors at the end of every session.
        self.loop.set_exception_handler(
            lambda loop, context: (
                None
                if isinstance(context.get("exception"), asyncio.CancelledError)
                else loop.default_exception_handler(context)
            )
        )
        self.stopping = asyncio.Event()
        await serve(self._app, self.config, shutdown_trigger=self.stopping.wait)

    def start(self) -> "StandIn":
        self.thread.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{type(self).__name__} did not start on port {self.port}")

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.stopping.set)
        self.thread.join(timeout=10)

    def reset(self) -> None:
        with self.lock:
            self.received.clear()
            self.answers.clear()
            self.problems.clear()
            # Every test starts with the credentials it was given valid, whatever the last did.
            self.expired_tokens.clear()

    def answer_next(self, status: int, body: dict | None = None, headers: dict | None = None):
        """Answer the next message with this, whatever it is (after the checks)."""
        with self.lock:
            self.answers.append((status, body or {}, headers or {}))

    def tokens_expire(self) -> None:
        """Make every token issued or seen so far expired, as time would (until the next
        test)."""
        with self.lock:
            self.expired_tokens |= self._tokens_so_far()

    async def _app(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        request = Received(
            path=scope["path"],
            headers={name.decode().lower(): value.decode() for name, value in scope["headers"]},
            body=body,
            at=time.monotonic(),
            http_version=scope["http_version"],
        )
        with self.lock:
            try:
                status, answer, headers = self.answer(scope["method"], request)
            except Refused as refusal:
                if refusal.problem:
                    self.problems.append(f"{request.path}: {refusal}")
                status, answer, headers = refusal.status, refusal.body, {}
            request.answered = status
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    *((name.encode(), str(value).encode()) for name, value in headers.items()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": json.dumps(answer).encode()})

    def answer(self, method: str, request: Received) -> tuple[int, dict, dict]:
        raise NotImplementedError

    def _tokens_so_far(self) -> set[str]:
        raise NotImplementedError

    def _scripted(self, default: dict) -> tuple[int, dict, dict]:
        return self.answers.pop(0) if self.answers else (200, default, {})


class FcmService(StandIn):
    """Google's token endpoint (POST /token) and FCM's messages:send, on one port."""

    def __init__(self, *, account_file: Path, **options) -> None:
        super().__init__(**options)
        self.account = json.loads(account_file.read_text())
        self.public_key = serialization.load_pem_private_key(
            self.account["private_key"].encode(), password=None
        ).public_key()
        self.token_requests: list[Received] = []
        self.issued: list[str] = []
        self.counter = itertools.count(1)

    def reset(self) -> None:
        super().reset()
        with self.lock:
            self.token_requests.clear()

    def _tokens_so_far(self) -> set[str]:
        return set(self.issued)

    def answer(self, method: str, request: Received) -> tuple[int, dict, dict]:
        if method != "POST":
            raise Refused(405, {"error": {"code": 405, "status": "METHOD_NOT_ALLOWED"}})
        if request.path == "/token":
            self.token_requests.append(request)
            return 200, self._token_issued(request), {}
        self.received.append(request)
        self._bearer_checked(request)
        self._message_checked(request)
        return self._scripted({"name": f"projects/{FCM_PROJECT}/messages/{next(self.counter)}"})

    def _token_issued(self, request: Received) -> dict:
        def invalid(why: str) -> Refused:
            return Refused(400, {"error": "invalid_grant", "error_description": why})

        if not request.headers.get("content-type", "").startswith(
            "application/x-www-form-urlencoded"
        ):
            raise invalid("not a form")
        form = {name: values[0] for name, values in parse_qs(request.body.decode()).items()}
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            raise Refused(400, {"error": "unsupported_grant_type"})
        assertion = form.get("assertion", "")
        try:
            header = jwt.get_unverified_header(assertion)
            claims = jwt.decode(
                assertion,
                self.public_key,
                algorithms=["RS256"],
                audience=self.account["token_uri"],
                options={"require": ["iss", "aud", "iat", "exp", "scope"]},
            )
        except jwt.PyJWTError as error:
            raise invalid(f"Invalid JWT: {error}") from error
        if header.get("kid") != self.account["private_key_id"]:
            raise invalid(f"kid {header.get('kid')!r} is not the account's key")
        if claims["iss"] != self.account["client_email"]:
            raise invalid(f"iss {claims['iss']!r} is not the account")
        if FCM_SCOPE not in claims["scope"].split():
            raise invalid(f"scope {claims['scope']!r} lacks firebase.messaging")
        if claims["exp"] - claims["iat"] > 3600:
            raise invalid("Invalid JWT: the assertion is valid for more than an hour")
        token = f"ya29.tests-{next(self.counter)}"
        self.issued.append(token)
        return {"access_token": token, "expires_in": 3599, "token_type": "Bearer"}

    def _bearer_checked(self, request: Received) -> None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        unauthenticated = {
            "error": {
                "code": 401,
                "message": "Request had invalid authentication credentials.",
                "status": "UNAUTHENTICATED",
            }
        }
        if scheme != "Bearer" or token not in self.issued:
            raise Refused(401, unauthenticated)
        if token in self.expired_tokens:
            raise Refused(401, unauthenticated, problem=False)

    def _message_checked(self, request: Received) -> None:
        def invalid(why: str) -> Refused:
            return Refused(400, fcm_error(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", why))

        if request.path != f"/v1/projects/{FCM_PROJECT}/messages:send":
            raise Refused(404, {"error": {"code": 404, "status": "NOT_FOUND"}})
        try:
            body = request.json()
            message = body["message"]
        except (ValueError, KeyError, TypeError) as error:
            raise invalid(f"not a {{message}} JSON body: {error}") from error
        if set(body) - {"message", "validate_only"}:
            raise invalid(f"unknown fields {sorted(set(body))}")
        known = {"name", "token", "notification", "data", "android", "apns", "webpush"}
        if not isinstance(message, dict) or set(message) - known:
            raise invalid(f"unknown message fields {sorted(message)}")
        if not isinstance(message.get("token"), str) or not message["token"]:
            raise invalid("message.token must be a string")
        notification = message.get("notification", {})
        if set(notification) - {"title", "body", "image"} or not all(
            isinstance(value, str) for value in notification.values()
        ):
            raise invalid(f"message.notification is not {{title, body}}: {notification}")
        data = message.get("data", {})
        if not all(isinstance(value, str) for value in data.values()):
            raise invalid(f"message.data values must be strings: {data}")


class ApnsService(StandIn):
    """APNs' POST /3/device/<token>, over HTTP/2 only."""

    def __init__(self, *, key_file: Path, **options) -> None:
        super().__init__(**options)
        self.config.alpn_protocols = ["h2"]  # Apple's servers speak nothing else
        self.public_key = serialization.load_pem_private_key(
            key_file.read_bytes(), password=None
        ).public_key()
        self.seen_tokens: set[str] = set()
        self.counter = itertools.count(1)

    def _tokens_so_far(self) -> set[str]:
        return set(self.seen_tokens)

    def answer(self, method: str, request: Received) -> tuple[int, dict, dict]:
        self.received.append(request)
        if request.http_version != "2":
            raise Refused(400, {"reason": "BadRequest: HTTP/2 only"})
        if method != "POST":
            raise Refused(405, {"reason": "MethodNotAllowed"})
        prefix, _, device_token = request.path.rpartition("/")
        if prefix != "/3/device" or not device_token or set(device_token) - set("0123456789abcdef"):
            raise Refused(400, {"reason": "BadPath"})
        self._provider_token_checked(request)
        headers = request.headers
        if headers.get("apns-topic") != APNS_TOPIC:
            raise Refused(400, {"reason": "TopicDisallowed"})
        if headers.get("apns-push-type") != "alert":
            raise Refused(400, {"reason": "InvalidPushType"})
        if headers.get("apns-priority") not in ("5", "10"):
            raise Refused(400, {"reason": "BadPriority"})
        if not headers.get("apns-expiration", "").isdigit():
            raise Refused(400, {"reason": "BadExpirationDate"})
        if len(request.body) > 4096:
            raise Refused(413, {"reason": "PayloadTooLarge"})
        try:
            alert = request.json()["aps"]["alert"]
            assert isinstance(alert["title"], str) and isinstance(alert["body"], str)
        except (ValueError, KeyError, TypeError, AssertionError) as error:
            raise Refused(400, {"reason": "PayloadEmpty"}) from error
        status, body, answer_headers = self._scripted({})
        return (
            status,
            body,
            {"apns-id": f"00000000-0000-0000-0000-{next(self.counter):012d}", **answer_headers},
        )

    def _provider_token_checked(self, request: Received) -> None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme != "bearer":
            raise Refused(403, {"reason": "MissingProviderToken"})
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(
                token, self.public_key, algorithms=["ES256"], options={"require": ["iss", "iat"]}
            )
        except jwt.PyJWTError as error:
            raise Refused(403, {"reason": "InvalidProviderToken"}) from error
        if header != {"alg": "ES256", "kid": APNS_KEY_ID} or claims["iss"] != APNS_TEAM_ID:
            raise Refused(403, {"reason": "InvalidProviderToken"})
        self.seen_tokens.add(token)
        if token in self.expired_tokens or claims["iat"] < time.time() - 3600:
            raise Refused(403, {"reason": "ExpiredProviderToken"}, problem=False)
