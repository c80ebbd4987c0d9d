"""Web Push endpoints: URLs a client sends us, which our workers later POST to.

Anyone can register a subscription, so the endpoint is an attacker's choice until proven
otherwise (server-side request forgery: a POST from inside our network to an admin port, a
cloud metadata address, an internal service). The rule, checked when a subscription is stored
and again on every send (the setting may have changed; a name may resolve elsewhere now):

- one strict form: `https://host[:port]/path` in printable ASCII, the host of letters, digits,
  dots and hyphens, no user name or password, no backslash or space. A URL that two parsers
  could read as two hosts (`https://evil.example\\.notify.windows.com/`: Python's urlsplit
  sees one host, urllib3, which sends, another) never passes;
- the host is one of WEBPUSH_ALLOWED_HOSTS (a name, `*.suffix` for any name under it, or
  `host:port`; without a port only 443 is allowed): by default the browser push services'
  hosts;
- on sending, the host urllib3 itself connects to is checked against those hosts again, and
  the address the connection reached must be a public one (for an IPv6 address carrying an
  IPv4 one, as NAT64 and 6to4 do, that one too), unless WEBPUSH_ALLOW_PRIVATE_ADDRESSES (tests,
  which run their push service on 127.0.0.1). The check runs on the connected socket, so a
  name that resolves to a public address when checked and to a private one when called gains
  nothing;
- no redirects, and no proxy from the environment.
"""

import ipaddress
import re
import socket

import requests
from django.conf import settings
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPSConnection
from urllib3.connectionpool import HTTPSConnectionPool

MAX_ENDPOINT_LENGTH = 2048


class EndpointRefused(ValueError):
    """An endpoint we will not call; the message says why."""


# https, a host of letters, digits, dots and hyphens, an optional port, then a path of printable
# ASCII without a backslash.
ENDPOINT_FORM = re.compile(
    r"https://(?P<host>[A-Za-z0-9.-]+)(?::(?P<port>[0-9]{1,5}))?(?P<path>/[!-\[\]-~]*)?"
)


def webpush_endpoint_checked(url: str) -> str:
    """The endpoint, if the rule allows it, in one spelling (the host in lower case, without a
    final dot or the default port: one browser's subscription is one device however its URL is
    written); EndpointRefused otherwise."""
    if not isinstance(url, str) or not url or len(url) > MAX_ENDPOINT_LENGTH:
        raise EndpointRefused(
            f"endpoint must be a URL of at most {MAX_ENDPOINT_LENGTH} characters."
        )
    if not url.startswith("https://"):
        raise EndpointRefused("endpoint must be an https URL.")
    if "@" in url[len("https://") :].split("/", 1)[0]:
        raise EndpointRefused("endpoint must not carry a user name or password.")
    form = ENDPOINT_FORM.fullmatch(url)
    if form is None:
        raise EndpointRefused("endpoint must be https://host/path, in plain ASCII.")
    host, port = form["host"].lower().rstrip("."), int(form["port"] or 443)
    if not host or not _host_allowed(host, port):
        raise EndpointRefused("endpoint is not on a push service this server sends to.")
    return f"https://{host}{'' if port == 443 else f':{port}'}{form['path'] or '/'}"


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


# IPv6 prefixes whose addresses carry an IPv4 address a gateway reaches (NAT64, RFC 6052 and
# 8215); 6to4, Teredo and IPv4-mapped ones are known to the ipaddress module.
NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def address_is_public(address: str) -> bool:
    """Whether a connection to this address leaves for the internet: not loopback, private,
    link-local (the cloud metadata address), shared, reserved or multicast; for an IPv6 address
    carrying an IPv4 one, neither is that one."""
    ip = ipaddress.ip_address(address.split("%")[0])
    candidates = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        candidates += [ip.ipv4_mapped, ip.sixtofour, *(ip.teredo or ())]
        if any(ip in network for network in NAT64) or int(ip) >> 32 == 0:
            candidates.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return all(
        candidate.is_global and not candidate.is_multicast
        for candidate in candidates
        if candidate is not None
    )


class _PublicPeerConnection(HTTPSConnection):
    """An HTTPS connection that refuses, before TLS and before any byte of the request, a host
    not allowed and a peer whose address is not public."""

    def _new_conn(self) -> socket.socket:
        # The host urllib3 connects to, whatever parsed the URL before it.
        if not _host_allowed(self.host.lower().rstrip("."), self.port or 443):
            raise EndpointRefused(f"endpoint host {self.host!r} is not an allowed push service.")
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
