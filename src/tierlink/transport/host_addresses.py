"""The local addresses ICE gathers host candidates on, and their local preference.

IPv4: every address of the machine but loopback and link-local (the interface listing comes
from aioice: :func:`~.aioice_adapter.machine_addresses`). IPv6, on Linux from
``/proc/net/if_inet6`` (address, interface, prefix length, scope, flags):

* only unicast addresses a remote peer could reach: never link-local, loopback, multicast,
  site-local, IPv4-mapped or IPv4-compatible (RFC 8445 section 5.1.1.1); a unique local
  address (fc00::/7) is kept, at a low preference;
* never an address the kernel marks deprecated (its preferred lifetime is over), tentative
  (duplicate address detection still running) or DAD-failed;
* temporary (privacy) addresses (RFC 8981, flag ``IFA_F_TEMPORARY``) replace the stable
  addresses of the same interface and prefix: RFC 8445 section 5.1.1.1 says the stable ones
  MUST NOT be gathered then, since a stable address identifies the device wherever it goes.

Elsewhere (no ``/proc/net/if_inet6``) the IPv6 addresses come from the interface listing,
with the same address filter but no flags: no temporary preference, nothing known to be
deprecated.

Local preference (RFC 8445 section 5.1.2.1, RFC 8421 section 4): the RFC 6724 precedence of
the address (IPv6 global 40 above IPv4 35, 6to4 30, Teredo 5, ULA 3), shifted left 8 bits,
plus 255 minus the address's rank within its family; so between two host candidates of one
agent an IPv6 one is checked and nominated first, and a v4 host and a v6 host never tie.
The type preference (host 126, srflx 100, relay 0) still dominates: any direct candidate of
either family outranks every relay.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "IF_INET6",
    "Inet6Address",
    "check_host_address",
    "choose_host_addresses",
    "local_preference",
    "parse_if_inet6",
    "precedence",
    "usable_ipv6",
]

IF_INET6 = Path("/proc/net/if_inet6")
#: include/uapi/linux/if_addr.h (the low byte: what /proc/net/if_inet6 shows).
IFA_F_TEMPORARY = 0x01
IFA_F_DADFAILED = 0x08
IFA_F_DEPRECATED = 0x20
IFA_F_TENTATIVE = 0x40
_UNUSABLE_FLAGS = IFA_F_DADFAILED | IFA_F_DEPRECATED | IFA_F_TENTATIVE

#: RFC 6724 section 2.1 default policy table: (prefix, precedence), longest prefix first.
_POLICY = tuple(
    (ipaddress.IPv6Network(prefix), value)
    for prefix, value in (
        ("::1/128", 50), ("::ffff:0:0/96", 35), ("::/96", 1), ("2001::/32", 5),
        ("2002::/16", 30), ("3ffe::/16", 1), ("fec0::/10", 1), ("fc00::/7", 3), ("::/0", 40),
    )
)


@dataclass(frozen=True)
class Inet6Address:
    """One line of ``/proc/net/if_inet6``."""

    address: ipaddress.IPv6Address
    interface: str
    prefix_length: int
    flags: int

    @property
    def temporary(self) -> bool:
        """A temporary (privacy) address, RFC 8981."""
        return bool(self.flags & IFA_F_TEMPORARY)

    @property
    def prefix(self) -> ipaddress.IPv6Network:
        return ipaddress.IPv6Network((self.address, self.prefix_length), strict=False)


def parse_if_inet6(text: str) -> list[Inet6Address]:
    """The lines of ``/proc/net/if_inet6`` (32 hex digits, ifindex, prefix length, scope,
    flags, interface name, all hex but the name); malformed lines are skipped."""
    out = []
    for line in text.splitlines():
        cols = line.split()
        if len(cols) != 6 or len(cols[0]) != 32:
            continue
        try:
            address = ipaddress.IPv6Address(int(cols[0], 16))
            prefix_length, flags = int(cols[2], 16), int(cols[4], 16)
        except ValueError:
            continue
        if 0 <= prefix_length <= 128:
            out.append(Inet6Address(address, cols[5], prefix_length, flags))
    return out


def _reachable(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """An address a peer elsewhere could send to (not link-local, loopback, multicast,
    unspecified, site-local, IPv4-mapped or IPv4-compatible)."""
    if (address.is_link_local or address.is_loopback or address.is_multicast
            or address.is_unspecified):
        return False
    if isinstance(address, ipaddress.IPv6Address):
        return not (address.is_site_local or address.ipv4_mapped is not None
                    or address in ipaddress.IPv6Network("::/96"))
    return True


def usable_ipv6(entries: Iterable[Inet6Address]) -> list[str]:
    """The IPv6 addresses to gather on, temporary ones first (see the module docstring)."""
    live = [e for e in entries if not e.flags & _UNUSABLE_FLAGS and _reachable(e.address)]
    private = {(e.interface, e.prefix) for e in live if e.temporary}
    kept = [e for e in live if e.temporary or (e.interface, e.prefix) not in private]
    kept.sort(key=lambda e: not e.temporary)  # stable sort: the kernel's order otherwise
    return list(dict.fromkeys(str(e.address) for e in kept))


def choose_host_addresses(
    listed: Iterable[str], use_ipv6: bool = True, if_inet6: Path = IF_INET6
) -> list[str]:
    """The addresses to gather host candidates on, IPv4 then IPv6, from ``listed`` (the
    machine's interface addresses) and, for IPv6 on Linux, ``if_inet6`` (with its flags)."""
    v4: list[str] = []
    v6: list[str] = []
    for text in dict.fromkeys(listed):
        address = ipaddress.ip_address(text.partition("%")[0])
        if _reachable(address):
            (v6 if address.version == 6 else v4).append(str(address))
    if not use_ipv6:
        return v4
    with contextlib.suppress(OSError):  # else not Linux: the address filter only, no flags
        v6 = usable_ipv6(parse_if_inet6(if_inet6.read_text()))
    return v4 + v6


def check_host_address(text: str) -> str:
    """An address given to gather on (``--host-address``, ``NodeConfig.host_addresses``):
    IPv4 or IPv6, brackets allowed, returned normalised. ValueError for an address no peer
    could use: link-local (it needs a zone and reaches one link), multicast, unspecified,
    IPv4-mapped. Loopback is allowed (tests on one machine)."""
    spec = text.strip()
    if spec.startswith("[") and spec.endswith("]"):
        spec = spec[1:-1]
    try:
        address = ipaddress.ip_address(spec)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address") from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        raise ValueError(f"{text!r} is an IPv4-mapped address: give {address.ipv4_mapped}")
    if address.is_link_local:
        raise ValueError(f"{text!r} is link-local: a peer on another link cannot reach it; "
                         "give a global address")
    if address.is_multicast or address.is_unspecified:
        raise ValueError(f"{text!r} is not a unicast address of this host")
    return str(address)


def precedence(address: str) -> int:
    """RFC 6724 precedence of an address (IPv4 as ``::ffff:a.b.c.d``)."""
    ip = ipaddress.ip_address(address.partition("%")[0])
    v6 = ipaddress.IPv6Address(f"::ffff:{ip}") if ip.version == 4 else ip
    return next(value for net, value in _POLICY if v6 in net)


def local_preference(address: str, addresses: Sequence[str]) -> int:
    """The local preference (0-65535) of a candidate on ``address``, one of ``addresses``
    (this agent's host addresses, most preferred first): RFC 6724 precedence << 8, plus 255
    minus the address's rank among ``addresses`` of its family."""
    family = ":" in address
    same = [a for a in addresses if (":" in a) == family]
    rank = same.index(address) if address in same else len(same)
    return (precedence(address) << 8) + 255 - min(rank, 255)
