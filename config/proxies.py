"""The reverse proxies whose headers are believed (settings.TRUSTED_PROXIES): a client can write
whatever it likes into X-Forwarded-For or X-Request-ID, a proxy of ours overwrites them."""

import functools
import ipaddress

from django.conf import settings


def is_trusted_proxy(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # a dual-stack socket reports 10.0.0.1 as ::ffff:10.0.0.1
    return any(ip in network for network in _trusted_networks(tuple(settings.TRUSTED_PROXIES)))


@functools.cache
def _trusted_networks(entries: tuple[str, ...]) -> tuple[ipaddress._BaseNetwork, ...]:
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)
