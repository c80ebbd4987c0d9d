"""Web Push endpoints: URLs a client sends us, which our workers later POST to.

Anyone can register a subscription, so the endpoint is an attacker's choice until proven
otherwise (server-side request forgery: a POST from inside our network to an admin port, a
cloud metadata address, an internal service). The rule, checked when a subscription is stored
and again on every send (the setting may have changed; a name may resolve elsewhere now):

- `https` only, no user name or password in the URL;
- the host is one of WEBPUSH_ALLOWED_HOSTS (a name, `*.suffix` for any name under it, or
  `host:port`; without a port only 443 is allowed): by default the browser push services'
  hosts;
- on sending, the address the connection actually reached is a public one, unless
  WEBPUSH_ALLOW_PRIVATE_ADDRESSES (tests, which run their push service on 127.0.0.1): the check
  runs on the connected socket, so a name that resolves to a public address when checked and
  to a private one when called gains nothing;
- no redirects, and no proxy from the environment.
"""

import ipaddress
import socket
from urllib.parse import urlsplit

import requests
from django.conf import settings
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPSConnection
from urllib3.connectionpool import HTTPSConnectionPool

MAX_ENDPOINT_LENGTH = 2048


class EndpointRefused(ValueError):
    """An endpoint we will not call; the message says why."""


def webpush_endpoint_checked(url: str) -> str:
    """The endpoint, if the rule allows it; EndpointRefused otherwise."""
    if not isinstance(url, str) or not url or len(url) > MAX_ENDPOINT_LENGTH:
        raise EndpointRefused(
            f"endpoint must be a URL of at most {MAX_ENDPOINT_LENGTH} characters."
        )
    try:
        parts = urlsplit(url)
        port = parts.port or 443
    except ValueError as error:
        raise EndpointRefused("endpoint is not a URL.") from error
    if parts.scheme != "https":
        raise EndpointRefused("endpoint must be an https URL.")
    if parts.username is not None or parts.password is not None:
        raise EndpointRefused("endpoint must not carry a user name or password.")
    host = (parts.hostname or "").rstrip(".")
    if not host or not _host_allowed(host, port):
        raise EndpointRefused("endpoint is not on a push service this server sends to.")
    return url


def _host_allowed(host: str, port: int) -> bool:
    return any(
        _entry_matches(entry.strip().lower(), host.lower(), port)
        for entry in settings.WEBPUSH_ALLOWED_HOSTS
    )


def _entry_matches(entry: str, host: str, port: int) -> bool:
    name, allowed_port = entry, 443
    head, _, tail = entry.rpartition(":")
    bare_ipv6 = entry.count(":") > 1 and not entry.startswith("[")
    if head and tail.isdigit() and not bare_ipv6:
        name, allowed_port = head, int(tail)
    name = name.strip("[]")
    if port != allowed_port:
        return False
    if name.startswith("*."):
        return host.endswith(name[1:])  # a name under it; not the bare suffix
    return host == name


def address_is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


class _PublicPeerConnection(HTTPSConnection):
    """An HTTPS connection that refuses, before TLS and before any byte of the request, a peer
    whose address is not public."""

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        peer = sock.getpeername()[0]
        if not settings.WEBPUSH_ALLOW_PRIVATE_ADDRESSES and not address_is_public(peer):
            sock.close()
            raise EndpointRefused(f"endpoint resolved to a non-public address ({peer}).")
        return sock


class _PublicPeerPool(HTTPSConnectionPool):
    ConnectionCls = _PublicPeerConnection


class _PublicPeerAdapter(HTTPAdapter):
    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"https": _PublicPeerPool}


class PushSession(requests.Session):
    """The session every push request goes through: https only, to public peers, no redirects
    followed, no proxy or .netrc from the environment."""

    def __init__(self) -> None:
        super().__init__()
        self.trust_env = False
        self.mount("https://", _PublicPeerAdapter())
        self.mount("http://", _Refuse())

    def request(self, method, url, *args, **kwargs):
        kwargs["allow_redirects"] = False
        return super().request(method, url, *args, **kwargs)


class _Refuse(HTTPAdapter):
    def send(self, request, *args, **kwargs):
        raise EndpointRefused("push requests go over https only.")
