"""``HOST:PORT`` text: the one parser (and formatter) of network endpoints given as text.

Accepted: ``host:port``, ``[v6]:port``, and, when the caller has a default port, a bare
``host`` or ``[v6]``. An IPv6 address always needs brackets: ``::1:4222`` is itself a valid
address, so without them a port could silently become part of the host. Anything else is a
``ValueError`` whose message names the text and says what was expected, ready to show a user.
"""

from __future__ import annotations

import ipaddress


def parse_port(text: str, *, allow_zero: bool = False) -> int:
    """A port number given as text (1-65535, or 0 too with ``allow_zero``)."""
    low = 0 if allow_zero else 1
    stripped = text.strip()
    if not stripped.isdigit():
        raise ValueError(f"invalid port {text!r}: port must be a number")
    port = int(stripped)
    if not low <= port <= 65535:
        raise ValueError(f"invalid port {text!r}: must be between {low} and 65535")
    return port


def parse_hostport(text: str, default_port: int | None = None) -> tuple[str, int]:
    """``host:port`` / ``[v6]:port`` (or a bare host with ``default_port``) -> (host, port).

    The host comes back without brackets. Raises ValueError with a one-line message.
    """
    spec = text.strip()
    expected = "expected HOST:PORT" if default_port is None else "expected HOST[:PORT]"
    if spec.startswith("["):
        host, close, rest = spec[1:].partition("]")
        if not close or not _is_ipv6(host):
            raise ValueError(f"invalid address {text!r}: expected [IPv6]:PORT")
        if not rest:
            port_text = None
        elif rest.startswith(":"):
            port_text = rest[1:]
        else:
            raise ValueError(f"invalid address {text!r}: expected [IPv6]:PORT")
    elif spec.count(":") > 1:
        if not _is_ipv6(spec):
            raise ValueError(f"invalid address {text!r}: {expected} (IPv6 as [ADDR]:PORT)")
        raise ValueError(f"invalid address {text!r}: an IPv6 address needs brackets, "
                         "[ADDR]:PORT" + (" or [ADDR]" if default_port is not None else ""))
    else:
        host, colon, port_text_or_empty = spec.partition(":")
        port_text = port_text_or_empty if colon else None
    if not host or any(c.isspace() for c in host):
        raise ValueError(f"invalid address {text!r}: {expected} (the host is empty or "
                         "contains spaces)")
    if port_text is None:
        if default_port is None:
            raise ValueError(f"invalid address {text!r}: {expected} (the port is missing)")
        return host, default_port
    try:
        port = parse_port(port_text)
    except ValueError as exc:
        reason = str(exc).partition(": ")[2]
        raise ValueError(f"invalid address {text!r}: {reason}") from None
    return host, port


def format_hostport(host: str, port: int) -> str:
    """(host, port) -> ``host:port``, with brackets around an IPv6 address."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text.partition("%")[0])
    except ValueError:
        return False
    return True
