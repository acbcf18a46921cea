"""Host and server-reflexive candidates: the aioice adapter's part for gathering (with
:mod:`.aioice_adapter`, which calls these from its gathering methods).

aioice lists every interface itself, gives every host candidate the same local preference,
asks STUN over IPv4 only (it resolves the server with ``gethostbyname``) and binds host
sockets wherever the kernel likes. Here: the addresses come from :mod:`.host_addresses`
(global IPv6, temporary first), each host candidate gets its local preference, a host
socket can be bound inside a port range, a STUN server is asked over the host socket's own
address family (IPv6 too), and what an offer cannot carry is dropped with its socket.

Every aioice name used here that aioice does not export is listed in :data:`PRIVATE_NAMES`;
``tests/test_aioice_adapter.py`` resolves each one on the installed aioice.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
from collections.abc import Callable, Sequence

from aioice import Candidate, stun
from aioice.candidate import candidate_foundation, candidate_priority
from aioice.ice import StunProtocol, get_host_addresses

from tierlink.transport.candidate_budget import select_candidates
from tierlink.transport.host_addresses import choose_host_addresses, local_preference

__all__ = [
    "PRIVATE_NAMES",
    "bind_in_range",
    "keep_within_budget",
    "machine_addresses",
    "reflexive_candidate",
    "set_local_preferences",
]

#: aioice names this module relies on that aioice (0.13.0) does not export; a trailing
#: ``(...)`` lists the parameters a called function must still take.
PRIVATE_NAMES: tuple[str, ...] = (
    "aioice.ice.get_host_addresses(use_ipv4, use_ipv6)",
    "aioice.ice.StunProtocol(receiver)",
    "aioice.ice.StunProtocol.local_candidate",
    "aioice.ice.StunProtocol.transport",
    "aioice.ice.StunProtocol.request(request, addr, integrity_key, retransmissions)",
    "aioice.candidate.candidate_foundation(candidate_type, candidate_transport, base_address)",
    "aioice.candidate.candidate_priority(candidate_component, candidate_type, local_pref)",
    "aioice.stun.Method.BINDING",
)


def machine_addresses(use_ipv6: bool = True) -> list[str]:
    """This machine's addresses to gather on (:func:`.choose_host_addresses` over aioice's
    interface listing): IPv4, then global IPv6 with temporary ones first."""
    return choose_host_addresses(get_host_addresses(use_ipv4=True, use_ipv6=True), use_ipv6)


def set_local_preferences(candidates: Sequence[Candidate], addresses: Sequence[str]) -> None:
    """Give each host candidate the priority its address's local preference makes
    (:func:`.local_preference` among ``addresses``)."""
    for c in candidates:
        if c.type == "host":
            pref = local_preference(str(ipaddress.ip_address(c.host)), addresses)
            c.priority = candidate_priority(c.component, "host", pref)


async def bind_in_range(
    factory: Callable[[], StunProtocol], component: int, address: str,
    port_range: tuple[int, int],
) -> StunProtocol:
    """A host socket on ``address`` at a free port of ``port_range`` (random order), with
    its host candidate; OSError if the range has none free.

    Follows the host part of aioice/ice.py ``Connection.get_component_candidates`` (lines
    1137-1218). Differs: the port, the kernel's SO_RCVBUF kept, and the candidate carries
    the address asked for, not getsockname()'s.
    """
    low, high = port_range
    loop = asyncio.get_running_loop()
    ports = list(range(low, high + 1))
    random.shuffle(ports)
    for port in ports:
        try:
            _, protocol = await loop.create_datagram_endpoint(factory, local_addr=(address, port))
        except OSError:
            continue
        protocol.local_candidate = Candidate(
            foundation=candidate_foundation("host", "udp", address),
            component=component, transport="udp",
            priority=candidate_priority(component, "host"),
            host=address, port=port, type="host",
        )
        return protocol
    raise OSError(f"no free UDP port on {address} in the range {low}-{high}")


async def reflexive_candidate(host: StunProtocol, server: tuple[str, int]) -> Candidate:
    """The server-reflexive candidate of ``host`` as ``server`` sees it, asked over the host
    socket's address family (a Binding request, retransmitted until answered or cancelled);
    its local preference is its base's. OSError if the server has no address of that
    family.

    Follows aioice/ice.py ``server_reflexive_candidate`` (lines 153-183). Differs: the
    server is resolved in the host socket's family (aioice: IPv4 only), the priority.
    """
    base = host.local_candidate
    family = socket.AF_INET6 if ":" in base.host else socket.AF_INET
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(server[0], server[1], family=family, type=socket.SOCK_DGRAM)
    if not infos:
        raise OSError(f"STUN server {server[0]} has no address of this family")
    address = (str(infos[0][4][0]), int(infos[0][4][1]))
    request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    response, _ = await host.request(request, address)
    mapped = response.attributes["XOR-MAPPED-ADDRESS"]
    return Candidate(
        foundation=candidate_foundation("srflx", "udp", base.host),
        component=base.component, transport=base.transport,
        priority=candidate_priority(base.component, "srflx", (base.priority >> 8) & 0xFFFF),
        host=mapped[0], port=mapped[1], type="srflx",
        related_address=base.host, related_port=base.port,
    )


def keep_within_budget(
    candidates: Sequence[Candidate], protocols: Sequence[StunProtocol]
) -> tuple[list[Candidate], list[StunProtocol]]:
    """(the candidates :func:`.select_candidates` keeps, the protocols still used). A
    protocol is used when its own candidate is kept or, for a host socket, a kept srflx
    candidate has it as base; every other protocol's transport is closed here."""
    kept = select_candidates(candidates)
    if len(kept) == len(candidates):
        return kept, list(protocols)
    used: set[tuple[str | None, int | None]] = {
        (c.host, c.port) for c in kept if c.type != "srflx"
    }
    used |= {(c.related_address, c.related_port) for c in kept if c.type == "srflx"}
    live = []
    for protocol in protocols:
        if (protocol.local_candidate.host, protocol.local_candidate.port) in used:
            live.append(protocol)
        else:
            protocol.transport.close()
    return kept, live
