"""VAPID keys (RFC 8292): the key pair that signs our Web Push requests, so that a push service
knows them for ours, and that browsers are given (as applicationServerKey) when they subscribe."""

import base64
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


@dataclass(frozen=True)
class VapidKeys:
    public_key: str  # base64url of the uncompressed P-256 point, as browsers take it
    private_key: str  # base64url of the private scalar, as py_vapid reads it


def vapid_keys_generate() -> VapidKeys:
    private = ec.generate_private_key(ec.SECP256R1())
    point = private.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    scalar = private.private_numbers().private_value.to_bytes(32, "big")
    return VapidKeys(public_key=_b64url(point), private_key=_b64url(scalar))


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
