"""A Web Push service of the tests' own, over HTTPS on 127.0.0.1: it records each request and
answers what the test scripts (201 by default), and reads what it got as a browser's push
service and the browser would: the VAPID signature checked against our public key, the
payload decrypted with the subscription's private key and auth secret (RFC 8291)."""

import base64
import datetime
import http.server
import ipaddress
import json
import os
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import http_ece
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def certificate_make(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (the workers trust it: WEBPUSH_CA_BUNDLE)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tests push service")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "push-cert.pem", folder / "push-key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@dataclass
class Subscription:
    """A browser's subscription: what it gives the server, and the secrets it keeps."""

    endpoint: str
    private_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    auth: bytes = field(default_factory=lambda: os.urandom(16))

    def as_json(self) -> dict:
        point = self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return {
            "endpoint": self.endpoint,
            "keys": {"p256dh": b64url(point), "auth": b64url(self.auth)},
        }

    def plaintext(self, body: bytes) -> bytes:
        """What the browser's push service hands its service worker: the body, decrypted."""
        return http_ece.decrypt(
            body, private_key=self.private_key, auth_secret=self.auth, version="aes128gcm"
        )

    def decrypt(self, body: bytes) -> dict:
        return json.loads(self.plaintext(body))


@dataclass
class Received:
    path: str
    headers: dict  # names in lower case
    body: bytes
    at: float


# Scripted non-answers: a service that takes the message and never replies (HANG), or that
# drops the connection once it has the message (DROP): the sender cannot know what happened.
HANG = -1
DROP = -2


class PushService:
    """Answers POST /<anything> with the next scripted answer (status, headers), or 201."""

    def __init__(self, *, port: int, cert: Path, key: Path) -> None:
        self.port = port
        self.received: list[Received] = []
        self.answers: list[tuple[int, dict]] = []
        self.lock = threading.Lock()
        service = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with service.lock:
                    service.received.append(
                        Received(
                            self.path,
                            {name.lower(): value for name, value in self.headers.items()},
                            body,
                            time.monotonic(),
                        )
                    )
                    status, headers = service.answers.pop(0) if service.answers else (201, {})
                if status == HANG:
                    time.sleep(headers["seconds"])
                    return
                if status == DROP:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.handler = Handler
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.server: http.server.ThreadingHTTPServer | None = None

    def start(self) -> "PushService":
        """Listen (again, after `stop`: a service that was down and is back)."""
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), self.handler)
        self.server.socket = self.context.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Down: connections to its port are refused until `start`."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    @property
    def running(self) -> bool:
        return self.server is not None

    def reset(self) -> None:
        with self.lock:
            self.received.clear()
            self.answers.clear()

    def answer_next(self, status: int, headers: dict | None = None) -> None:
        with self.lock:
            self.answers.append((status, headers or {}))

    def hang_next(self, seconds: float) -> None:
        self.answer_next(HANG, {"seconds": seconds})

    def drop_next(self) -> None:
        self.answer_next(DROP)

    def subscription(self, name: str = "browser") -> Subscription:
        return Subscription(endpoint=f"https://127.0.0.1:{self.port}/push/{name}")


def vapid_claims_verified(authorization: str, *, public_key: str) -> dict:
    """The claims of a `vapid t=<JWT>, k=<key>` header, once its key is ours and its ES256
    signature holds; AssertionError otherwise."""
    scheme, _, parameters = authorization.partition(" ")
    assert scheme == "vapid", authorization
    values = dict(part.strip().split("=", 1) for part in parameters.split(","))
    assert values["k"] == public_key
    header, claims, signature = values["t"].split(".")
    assert json.loads(b64url_decode(header))["alg"] == "ES256"
    raw = b64url_decode(signature)
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b64url_decode(public_key))
    key.verify(
        encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")),
        f"{header}.{claims}".encode(),
        ec.ECDSA(hashes.SHA256()),
    )
    return json.loads(b64url_decode(claims))
