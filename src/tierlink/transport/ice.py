"""ICE settings and the glue between aioice candidates and tierlink's wire candidates."""

from __future__ import annotations

import asyncio
import ipaddress
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aioice import Candidate

from tierlink.errors import IceFailed
from tierlink.transport.aioice_adapter import IceConnection
from tierlink.transport.gathering import ServerGathering
from tierlink.transport.ice_servers import TurnServer as TurnServer  # re-exported: its old home
from tierlink.wire.records import CandidateInfo

#: Largest UDP payload on a direct path (IPv4: 65535 - 20 IP - 8 UDP; IPv6: 65535 - 8).
MAX_UDP_PAYLOAD_V4 = 65_507
MAX_UDP_PAYLOAD_V6 = 65_527
#: TURN ChannelData adds a 4-byte header on the relayed leg.
TURN_CHANNEL_OVERHEAD = 4


@dataclass(frozen=True)
class IceSettings:
    """How a node gathers and connects.

    ``host_addresses``: the local addresses to gather host candidates on (loopback allowed);
    None means every address a peer could reach (:mod:`.host_addresses`; IPv6 with
    ``use_ipv6``). ``relay_only`` hides the
    node's addresses even from its peers (aioice's relay transport policy; needs TURN).
    Every STUN and TURN server is asked, in parallel (:mod:`.gathering`; its counters are
    :attr:`gathering`'s ``stats``). ``port_range`` (LOW, HIGH) binds host sockets (and so
    srflx mappings) and TURN client sockets inside that range.
    """

    host_addresses: Sequence[str] | None = None
    stun_servers: Sequence[tuple[str, int]] = ()
    turn_servers: Sequence[TurnServer] = ()
    relay_only: bool = False
    use_ipv6: bool = True
    timeout: float = 30.0
    port_range: tuple[int, int] | None = None
    gathering: ServerGathering = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.relay_only and not self.turn_servers:
            raise ValueError("relay_only needs at least one TURN server")
        for addr in self.host_addresses or ():
            ipaddress.ip_address(addr)  # ValueError with the bad address
        gathering = ServerGathering(
            tuple(self.stun_servers), tuple(self.turn_servers), self.port_range,
            self.relay_only,
        )
        object.__setattr__(self, "gathering", gathering)

    def new_connection(self, controlling: bool) -> IceConnection:
        """A fresh ICE agent for one session."""
        return IceConnection(
            controlling=controlling,
            host_addresses=self.host_addresses,
            servers=self.gathering if self.gathering.configured else None,
            relay_only=self.relay_only,
            use_ipv6=self.use_ipv6,
            port_range=self.port_range,
        )


def to_info(c: Candidate) -> CandidateInfo:
    """aioice Candidate -> wire candidate."""
    return CandidateInfo(
        c.foundation, c.component, c.transport, c.priority, c.host, c.port, c.type,
        c.related_address, c.related_port,
    )


def to_candidate(c: CandidateInfo) -> Candidate:
    """Wire candidate -> aioice Candidate."""
    return Candidate(
        foundation=c.foundation, component=c.component, transport=c.transport,
        priority=c.priority, host=c.host, port=c.port, type=c.type,
        related_address=c.related_address, related_port=c.related_port,
    )


def local_infos(ice: IceConnection) -> tuple[CandidateInfo, ...]:
    """The gathered local candidates as wire candidates."""
    return tuple(to_info(c) for c in ice.local_candidates)


async def set_remote(
    ice: IceConnection, ufrag: str, pwd: str, candidates: Sequence[CandidateInfo]
) -> None:
    """Give the agent the peer's credentials and every candidate (then end-of-candidates)."""
    ice.remote_username = ufrag
    ice.remote_password = pwd
    for c in candidates:
        if c.component == 1 and c.transport.lower() == "udp":
            await ice.add_remote_candidate(to_candidate(c))
    await ice.add_remote_candidate(None)


async def run_checks(ice: IceConnection, timeout: float, started: float) -> None:
    """Run ICE connectivity checks; IceFailed (with the time spent) if no pair works."""
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(ice.connect(), timeout)
    except TimeoutError:
        raise IceFailed(
            f"ICE checks found no working path within {timeout:.1f} s "
            f"({loop.time() - started:.1f} s since dialing started)"
        ) from None
    except ConnectionError as exc:
        raise IceFailed(
            f"ICE checks failed after {loop.time() - started:.1f} s: {exc}"
        ) from None


#: ICE candidate types, from the most to the least direct.
PATH_TYPES = ("host", "srflx", "prflx", "relay")


def path_of(candidate_types: Iterable[str | None]) -> str:
    """The path a candidate pair takes, named by its least direct end (``relay`` if either
    end is a TURN relay); ``none`` when no known type is given."""
    known = [t for t in candidate_types if t in PATH_TYPES]
    return max(known, key=PATH_TYPES.index) if known else "none"


def tier_of(path: str) -> str:
    """The delivery tier of a path: ``relay`` through TURN, ``direct`` for any other
    connected path, ``none`` without one."""
    if path == "none":
        return "none"
    return "relay" if path == "relay" else "direct"


def max_payload(ice: IceConnection) -> int:
    """The largest datagram the selected path carries."""
    sel = ice.selected_pair()
    if sel is None:
        return 0
    local, remote = sel
    v6 = ":" in remote.host
    limit = MAX_UDP_PAYLOAD_V6 if v6 else MAX_UDP_PAYLOAD_V4
    if path_of((local.type, remote.type)) == "relay":
        limit -= TURN_CHANNEL_OVERHEAD
    return limit


def selected_path(ice: IceConnection) -> str:
    """The path of ``ice``'s selected pair (``none`` before nomination)."""
    sel = ice.selected_pair()
    return path_of(c.type for c in sel) if sel is not None else "none"


#: Called with each path event (see :meth:`PathTally.add`).
PathListener = Callable[[dict[str, Any]], None]


class PathTally:
    """Counters of the paths a node's ICE agents ended on and of the checks they sent, and
    the listeners told of each agent that connected.

    ``paths_direct`` / ``paths_relay``: connected agents by tier; ``direct_after_relay``: a
    relayed pair had succeeded first, yet a direct pair was selected (the relay was never
    used); ``relay_after_wait``: a relayed pair was selected after waiting for a direct one;
    ``checks_*``: see :meth:`~tierlink.transport.aioice_checks.ScheduledChecks.check_report`.
    """

    COUNTERS = ("paths_direct", "paths_relay", "direct_after_relay", "relay_after_wait",
                "checks_sent", "checks_retransmitted", "checks_resent_early")

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter({name: 0 for name in self.COUNTERS})
        self.listeners: list[PathListener] = []

    def add(self, ice: IceConnection, connected: bool, peer: str = "") -> None:
        """Count one finished agent (``connected``: it selected a pair and is in use); for a
        connected one, tell every listener ``{"event": "path", "peer", "path", "tier",
        "selected_pair", "ice": check report}``."""
        report = ice.check_report()
        for name in ("checks_sent", "checks_retransmitted", "checks_resent_early"):
            self.counts[name] += report[name]
        if not connected:
            return
        tier = tier_of(selected_path(ice))
        self.counts[f"paths_{tier}"] += 1
        if report["first_success"] == "relay" and tier == "direct":
            self.counts["direct_after_relay"] += 1
        if tier == "relay" and (report["relay_wait_ms"] or 0) > 0:
            self.counts["relay_after_wait"] += 1
        event = {"event": "path", "peer": peer, "path": selected_path(ice), "tier": tier,
                 "selected_pair": describe_pair(ice), "ice": report}
        for listener in self.listeners:
            listener(event)

    def merged(self, other: PathTally) -> dict[str, int]:
        """This tally's counters plus ``other``'s, JSON-ready."""
        return {name: self.counts[name] + other.counts[name] for name in self.COUNTERS}


def describe_pair(ice: IceConnection) -> dict[str, dict[str, object]]:
    """{"local": {...}, "remote": {...}} with type, address and port of the selected pair."""
    sel = ice.selected_pair()
    if sel is None:
        return {}
    return {
        side: {"type": c.type, "address": c.host, "port": c.port}
        for side, c in zip(("local", "remote"), sel, strict=True)
    }
