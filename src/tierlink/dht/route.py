"""Which local address this host uses to reach a DHT proxy (a route lookup, no traffic)."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit


def source_address(proxy_url: str) -> str | None:
    """The local address the kernel would send from to reach ``proxy_url``'s host, or None
    when the host is a name (not resolved here: no blocking DNS) or has no route.

    A UDP ``connect`` only asks the routing table; nothing is sent.
    """
    parts = urlsplit(proxy_url)
    host = parts.hostname
    if host is None:
        return None
    try:
        ip = ipaddress.ip_address(host)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((str(ip), port))
            return str(sock.getsockname()[0])
    except OSError:
        return None
