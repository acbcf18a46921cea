"""Server-reflexive and relay candidates from every configured STUN and TURN server at once.

Each host socket asks every STUN server of its address family, and every TURN server is asked
for an allocation (each transport of it: UDP, TCP, TLS; over IPv4 or IPv6, see
:func:`_turn_family`), all in parallel. A server-reflexive candidate equal to its base (no
NAT, as for most IPv6 hosts) is dropped as redundant.

A dead or slow server never holds a dial up: once a kind of candidate (srflx, relay) has its
first answer, the other servers of that kind get :attr:`ServerGathering.grace` more; a kind
with no answer yet gets :attr:`ServerGathering.idle_grace` after the first answer of any
kind (a host behind a UDP-blocking firewall has its TCP relay at once and gives up on STUN
soon after); with no answer at all, everything stops at :attr:`ServerGathering.timeout`. In
:attr:`ServerGathering.stats`, a server given up on once others had answered counts as
*abandoned*, one given up on because nothing answered at all as *timed out*.

Candidates are not cached between dials: a server-reflexive candidate belongs to the host
socket it was learnt on (every dial binds fresh ones), and a relay candidate is only as good
as its live allocation, which belongs to one ICE agent and is freed with it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from aioice import Candidate

from tierlink.hostport import format_hostport
from tierlink.transport.aioice_gather import reflexive_candidate
from tierlink.transport.aioice_turn import SERVER_ERRORS, HostSocket, relay_candidate
from tierlink.transport.ice_servers import TurnServer

log = logging.getLogger(__name__)

#: What a server's gathering task yields: a candidate and, for a relay, its protocol.
Found = tuple[Candidate, HostSocket | None]


@dataclass
class GatherStats:
    """Per server URL (``stun:HOST:PORT``, :attr:`TurnServer.url`): how often it answered,
    failed (refused, unreachable, an error response), was abandoned (not waited for past
    the others' answers and the grace) or timed out (nothing answered within the timeout)."""

    answered: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    abandoned: Counter[str] = field(default_factory=Counter)
    timed_out: Counter[str] = field(default_factory=Counter)
    gathers: int = 0


@dataclass
class _Ask:
    """One question to one server: its kind (``srflx``/``relay``), the server's URL."""

    kind: str
    url: str


@dataclass
class ServerGathering:
    """Gathers from ``stun_servers`` and ``turn_servers`` for any number of ICE agents.

    ``port_range``: where TURN client sockets are bound. ``relay_only``: relay candidates
    hide their related address (host candidates are not gathered then).
    """

    stun_servers: Sequence[tuple[str, int]] = ()
    turn_servers: Sequence[TurnServer] = ()
    port_range: tuple[int, int] | None = None
    relay_only: bool = False
    timeout: float = 5.0
    grace: float = 0.25
    idle_grace: float = 0.5
    stats: GatherStats = field(default_factory=GatherStats)

    @property
    def configured(self) -> bool:
        """True if there is any server to ask."""
        return bool(self.stun_servers or self.turn_servers)

    async def __call__(
        self, component: int, hosts: Sequence[HostSocket],
        protocol_factory: Callable[[], HostSocket],
    ) -> list[Found]:
        """The srflx candidates of ``hosts`` and the relay candidates of every TURN server
        and transport (see :func:`_turn_family`); servers that fail or are abandoned give
        none.
        A STUN server named by an address of one family is asked by the host sockets of
        that family only; one named by a host name, by every host socket (resolved in the
        socket's family)."""
        tasks: dict[asyncio.Task[Found], _Ask] = {}
        for host in hosts:
            family = _family(host.local_candidate.host)
            for stun in self.stun_servers:
                if _family(stun[0]) in (family, socket.AF_UNSPEC):
                    ask = _Ask("srflx", "stun:" + format_hostport(*stun))
                    tasks[asyncio.ensure_future(_srflx(host, stun))] = ask
        host_families = {_family(h.local_candidate.host) for h in hosts}
        for turn in self.turn_servers:
            coro = relay_candidate(
                turn, component=component, protocol_factory=protocol_factory,
                hide_related_address=self.relay_only, port_range=self.port_range,
                family=_turn_family(turn.host, host_families),
            )
            tasks[asyncio.ensure_future(_relay(coro))] = _Ask("relay", turn.url)
        self.stats.gathers += 1
        found: list[Found] = []
        try:
            await self._collect(tasks, found)
        except BaseException:
            for _, protocol in found:  # allocations nobody will own
                if protocol is not None:
                    protocol.transport.close()
            raise
        finally:
            for task in tasks:
                task.cancel()
        return found

    async def _collect(self, tasks: dict[asyncio.Task[Found], _Ask], found: list[Found]) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        first: dict[str, float] = {}
        pending = set(tasks)
        while pending:
            now = loop.time()
            deadlines = {t: self._deadline(tasks[t].kind, first, start) for t in pending}
            for task in [t for t, d in deadlines.items() if d <= now]:
                task.cancel()
                pending.discard(task)
                given_up = self.stats.abandoned if first else self.stats.timed_out
                given_up[tasks[task].url] += 1
                log.info("gathering: gave up waiting for %s", tasks[task].url)
            if not pending:
                break
            wait = min(deadlines[t] for t in pending) - now
            done, pending = await asyncio.wait(
                pending, timeout=max(wait, 0.0), return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                ask = tasks[task]
                exc = task.exception()
                if exc is not None:
                    if not isinstance(exc, SERVER_ERRORS):
                        raise exc
                    self.stats.failed[ask.url] += 1
                    log.info("gathering: %s failed: %s", ask.url, str(exc) or repr(exc))
                    continue
                self.stats.answered[ask.url] += 1
                first.setdefault(ask.kind, loop.time())
                candidate = task.result()
                if not _redundant(candidate[0], found):
                    found.append(candidate)

    def _deadline(self, kind: str, first: dict[str, float], start: float) -> float:
        if kind in first:
            return first[kind] + self.grace
        if first:
            return min(first.values()) + self.idle_grace
        return start + self.timeout


async def _srflx(host: HostSocket, server: tuple[str, int]) -> Found:
    return await reflexive_candidate(host, server), None


async def _relay(coro: Coroutine[Any, Any, tuple[Candidate, HostSocket]]) -> Found:
    candidate, protocol = await coro
    return candidate, protocol


def _family(host: str) -> int:
    """AF_INET / AF_INET6 for an address literal, AF_UNSPEC for a host name."""
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return socket.AF_UNSPEC


def _turn_family(server: str, host_families: set[int]) -> int:
    """The address family a TURN server is reached over: a literal's own; for a host name,
    IPv4 if this agent has IPv4 host sockets, IPv6 if it has only IPv6 ones, else the name's
    first address. The relayed address is IPv4 either way: aioice sends no
    REQUESTED-ADDRESS-FAMILY, and RFC 8656 section 7.2 then allocates IPv4 (the family most
    peers can reach; IPv6 peers have their direct pairs)."""
    if _family(server) != socket.AF_UNSPEC:
        return _family(server)
    if not host_families:
        return socket.AF_UNSPEC
    return socket.AF_INET if socket.AF_INET in host_families else socket.AF_INET6


def _redundant(candidate: Candidate, found: list[Found]) -> bool:
    """A server-reflexive candidate equal to its base (no NAT: an IPv6 host behind a
    stateful firewall, an open IPv4 host), RFC 8445 section 5.1.3, or one another server
    already gave for the same base."""
    if candidate.type != "srflx":
        return False
    if (candidate.host, candidate.port) == (candidate.related_address, candidate.related_port):
        return True
    return any(
        c.type == "srflx" and (c.host, c.port, c.related_address, c.related_port)
        == (candidate.host, candidate.port, candidate.related_address, candidate.related_port)
        for c, _ in found
    )
