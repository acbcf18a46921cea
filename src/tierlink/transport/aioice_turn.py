"""Relay candidates from one TURN server each: the aioice adapter's part for TURN (with
:mod:`.aioice_adapter` and :mod:`.aioice_socket`; STUN is :mod:`.aioice_gather`'s).

aioice asks one STUN and one TURN server per connection, and its TURN client socket is
bound wherever the kernel likes. Here a TURN allocation is made on a socket tierlink binds
(inside the port range when one is set), over UDP, TCP or TLS with a verifying context and
the server's name checked. Gathering across many servers is :mod:`.gathering`'s job.

Every aioice name used here that aioice does not export is listed in :data:`PRIVATE_NAMES`;
``tests/test_aioice_adapter.py`` resolves each one on the installed aioice.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
from collections.abc import Callable

from aioice import Candidate, stun
from aioice.candidate import candidate_foundation, candidate_priority
from aioice.ice import StunProtocol
from aioice.turn import (
    DEFAULT_ALLOCATION_LIFETIME,
    DEFAULT_CHANNEL_REFRESH_TIME,
    UDP_SOCKET_BUFFER_SIZE,
    TurnClientTcpProtocol,
    TurnClientUdpProtocol,
    TurnTransport,
)

from tierlink.transport.aioice_socket import bound_read_buffer
from tierlink.transport.ice_servers import TurnServer

__all__ = [
    "PRIVATE_NAMES",
    "SERVER_ERRORS",
    "HostSocket",
    "relay_candidate",
]

#: aioice names this module relies on that aioice (0.13.0) does not export; a trailing
#: ``(...)`` lists the parameters a called function must still take.
PRIVATE_NAMES: tuple[str, ...] = (
    "aioice.ice.StunProtocol.local_candidate",
    "aioice.stun.TransactionError",
    "aioice.candidate.candidate_foundation(candidate_type, candidate_transport, base_address)",
    "aioice.candidate.candidate_priority(candidate_component, candidate_type, local_pref)",
    # aioice/turn.py create_turn_endpoint, redone on a socket we bind
    "aioice.turn.DEFAULT_ALLOCATION_LIFETIME",
    "aioice.turn.DEFAULT_CHANNEL_REFRESH_TIME",
    "aioice.turn.UDP_SOCKET_BUFFER_SIZE",
    "aioice.turn.TurnClientUdpProtocol(server, username, password, lifetime, "
    "channel_refresh_time)",
    "aioice.turn.TurnClientTcpProtocol(server, username, password, lifetime, "
    "channel_refresh_time)",
    "aioice.turn.TurnTransport(inner_protocol)",
    "aioice.turn.TurnTransport._connect(protocol)",
    "aioice.turn.TurnTransport.get_extra_info(name, default)",
)

#: A local socket of the ICE agent (aioice's protocol object); opaque outside the adapter.
HostSocket = StunProtocol
#: How a server fails to give a candidate: unreachable, refused (ConnectionError), TLS
#: verification (ssl.SSLError), no answer or an error answer (TransactionError), an
#: unreadable CA file (ValueError).
SERVER_ERRORS: tuple[type[Exception], ...] = (OSError, stun.TransactionError, ValueError)
#: RFC 8445 section 5.1.2.1: prefer UDP relays; TCP and TLS ones are the fallback.
_RELAY_PREFERENCE = {"udp": 65535, "tcp": 32767, "tls": 16383}


async def relay_candidate(
    server: TurnServer, *, component: int, protocol_factory: Callable[[], HostSocket],
    hide_related_address: bool, port_range: tuple[int, int] | None,
    family: int = socket.AF_UNSPEC,
) -> tuple[Candidate, HostSocket]:
    """Allocate a relay on ``server`` over its transport; (relay candidate, its protocol).

    Follows aioice/turn.py ``create_turn_endpoint`` (lines 499-553) and aioice/ice.py
    ``relayed_candidate`` (lines 105-150). Differs: the client socket is bound here (inside
    ``port_range`` if set), TLS verifies the server against ``server.ssl_context()`` with
    its host name, the credentials are made per allocation (time-limited ones fresh), and
    the candidate's priority prefers UDP relays over TCP over TLS. ``family``: the address
    family to reach the server over (its relayed address is of that family too); by default
    the first address the server's name resolves to.
    """
    loop = asyncio.get_running_loop()
    stream = server.transport != "udp"
    kind = socket.SOCK_STREAM if stream else socket.SOCK_DGRAM
    infos = await loop.getaddrinfo(server.host, server.port, family=family, type=kind)
    if not infos:
        raise OSError(f"cannot resolve TURN server {server.host}")
    family, _, _, _, address = infos[0]
    peer = (str(address[0]), int(address[1]))
    username, password = server.credentials()
    args = (peer, username, password, DEFAULT_ALLOCATION_LIFETIME, DEFAULT_CHANNEL_REFRESH_TIME)
    sock = bound_socket(family, kind, port_range)
    inner: TurnClientTcpProtocol | TurnClientUdpProtocol
    try:
        if stream:
            sock.setblocking(False)
            await loop.sock_connect(sock, address)
            context = server.ssl_context()
            _, inner = await loop.create_connection(
                lambda: TurnClientTcpProtocol(*args), sock=sock, ssl=context,
                server_hostname=server.host if context is not None else None,
            )
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_SOCKET_BUFFER_SIZE)
            sock.connect(address)
            transport, inner = await loop.create_datagram_endpoint(
                lambda: TurnClientUdpProtocol(*args), sock=sock
            )
            bound_read_buffer(transport)
    except BaseException:
        sock.close()
        raise
    try:
        protocol = protocol_factory()
        relay = TurnTransport(inner)
        await relay._connect(protocol)
    except BaseException:
        inner.transport.close()  # cancelled or refused: the socket must not leak
        raise
    relayed = relay.get_extra_info("sockname")
    related = relay.get_extra_info("related_address")
    if hide_related_address:  # RFC 9429 section 3.5.3, in RFC 8839 section 5.1's format
        related = ("0.0.0.0", 9) if ipaddress.ip_address(relayed[0]).version == 4 else ("::", 9)
    protocol.local_candidate = Candidate(
        foundation=candidate_foundation("relay", server.transport, relayed[0]),
        component=component, transport="udp",
        priority=candidate_priority(component, "relay", _RELAY_PREFERENCE[server.transport]),
        host=relayed[0], port=relayed[1], type="relay",
        related_address=related[0], related_port=related[1],
    )
    return protocol.local_candidate, protocol


def bound_socket(family: int, kind: int, port_range: tuple[int, int] | None) -> socket.socket:
    """A socket bound to the wildcard address, on a free port of ``port_range`` (random
    order) or any port without one. OSError if the range has no free port."""
    wildcard = "::" if family == socket.AF_INET6 else "0.0.0.0"
    ports = [0]
    if port_range is not None:
        ports = list(range(port_range[0], port_range[1] + 1))
        random.shuffle(ports)
    for port in ports:
        sock = socket.socket(family, kind)
        try:
            if kind == socket.SOCK_STREAM:  # a port in TIME_WAIT is free to reuse
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((wildcard, port))
        except OSError:
            sock.close()
            continue
        return sock
    low, high = port_range or (0, 0)
    raise OSError(f"no free {'TCP' if kind == socket.SOCK_STREAM else 'UDP'} port in the "
                  f"range {low}-{high} for the TURN client")

