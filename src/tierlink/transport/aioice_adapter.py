"""The one place tierlink touches aioice's internals (with :mod:`.aioice_socket`,
:mod:`.aioice_gather`, :mod:`.aioice_turn`, :mod:`.aioice_checks` and
:mod:`.aioice_transaction`).

aioice (0.13.0, pinned exactly) gathers host candidates from every interface except
127.0.0.1, queues every received datagram in an unbounded ``asyncio.Queue`` and sends through
a coroutine. tierlink needs what it does not offer publicly:

* gathering on an allow-list of local addresses (loopback included) or on tierlink's own
  listing (global IPv6, temporary addresses first), with host sockets bound inside a port
  range and at most what an offer carries: :mod:`.aioice_gather`;
* a synchronous receive callback (the QUIC pump and the bounded receive queue sit behind it),
  with batched reads of the nominated socket (:class:`~.aioice_socket.BatchReader`);
* a synchronous send on the nominated pair, and the nominated pair itself;
* connectivity checks without aioice's idle waits, nominating direct pairs first, with
  fast retransmission: :mod:`.aioice_checks` (the base class
  :class:`~.aioice_checks.ScheduledChecks`), its transactions :mod:`.aioice_transaction`.

Every aioice name used here that aioice does not export (``aioice.__all__``: Candidate,
Connection, ConnectionClosed, TransportPolicy) is listed in :data:`PRIVATE_NAMES`;
``tests/test_aioice_adapter.py`` resolves each one on the installed aioice and checks that
the installed version is the pinned one, so an upgrade fails there, loudly.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence

from aioice import Candidate, TransportPolicy, stun
from aioice.ice import CandidatePair, StunProtocol

from tierlink.protocol.nomination import GraceSettings
from tierlink.transport.aioice_checks import DEFAULT_CHECK_INTERVAL, ScheduledChecks
from tierlink.transport.aioice_gather import (
    bind_in_range,
    keep_within_budget,
    machine_addresses,
    reflexive_candidate,
    set_local_preferences,
)
from tierlink.transport.aioice_socket import (
    BatchReader,
    ReadAhead,
    Source,
    SourceGate,
    bound_read_buffer,
    udp_socket,
)
from tierlink.transport.aioice_socket import forbid_fragmentation as _forbid_fragmentation

__all__ = ["PRIVATE_NAMES", "IceConnection"]

#: aioice names this module relies on that aioice (0.13.0) does not export; a trailing
#: ``(...)`` lists the parameters a called or overridden function must still take.
PRIVATE_NAMES: tuple[str, ...] = (
    # overridden: aioice calls them on itself
    "aioice.ice.Connection.get_component_candidates(component, addresses, timeout)",
    "aioice.ice.Connection.data_received(data, component)",
    # get_component_candidates() with a port range: aioice's host gathering, redone
    "aioice.ice.Connection._protocols",
    "aioice.ice.Connection.stun_server",
    "aioice.ice.StunProtocol(receiver)",
    "aioice.ice.StunProtocol.local_candidate",
    # gather_candidates() with an allow-list: aioice's gathering without listing interfaces
    "aioice.ice.Connection._local_candidates_start",
    "aioice.ice.Connection._local_candidates",
    "aioice.ice.Connection._components",
    "aioice.ice.Connection._local_candidates_end",
    # the nominated pair: sending on it, reading its candidates
    "aioice.ice.Connection._nominated",
    "aioice.ice.CandidatePair.protocol",
    "aioice.ice.CandidatePair.remote_addr",
    "aioice.ice.CandidatePair.local_candidate",
    "aioice.ice.CandidatePair.remote_candidate",
    "aioice.ice.StunProtocol.transport",
    "aioice.turn.TurnTransport.sendto(data, addr)",
    # limit_unvalidated_checks(): every STUN message a protocol sends passes its budget
    "aioice.ice.StunProtocol.send_stun(message, addr)",
    "aioice.stun.Message(message_method, message_class, transaction_id, attributes)",
    "aioice.stun.Class.REQUEST",
    "aioice.stun.Class.RESPONSE",
)

DatagramHandler = Callable[[bytes], None]
#: Asks STUN and TURN servers for one component (:class:`~.gathering.ServerGathering`):
#: given the host sockets and a factory of relay protocols, the candidates found (with the
#: protocol of each relay).
ServerGatherer = Callable[
    [int, list[StunProtocol], Callable[[], StunProtocol]],
    Awaitable[list[tuple[Candidate, StunProtocol | None]]],
]

#: IP and UDP header bytes of a datagram, by whether it goes over IPv6.
_IP_UDP_HEADERS = {False: 20 + 8, True: 40 + 8}
#: Datagrams kept between ICE completion and the handler being set.
_PENDING_LIMIT = 64


class IceConnection(ScheduledChecks):
    """An aioice Connection with an address allow-list, direct-first nomination, a receive
    callback and sync send."""

    def __init__(
        self,
        *,
        controlling: bool,
        host_addresses: Sequence[str] | None = None,
        stun_server: tuple[str, int] | None = None,
        turn_server: tuple[str, int] | None = None,
        turn_username: str | None = None,
        turn_password: str | None = None,
        relay_only: bool = False,
        use_ipv6: bool = True,
        local_username: str | None = None,
        local_password: str | None = None,
        check_interval: float = DEFAULT_CHECK_INTERVAL,
        batch_receive: bool = True,
        port_range: tuple[int, int] | None = None,
        servers: ServerGatherer | None = None,
        grace: GraceSettings | None = None,
    ) -> None:
        super().__init__(
            ice_controlling=controlling,
            components=1,
            stun_server=stun_server,
            turn_server=turn_server,
            turn_username=turn_username,
            turn_password=turn_password,
            use_ipv4=True,
            use_ipv6=use_ipv6,
            transport_policy=TransportPolicy.RELAY if relay_only else TransportPolicy.ALL,
            local_username=local_username,
            local_password=local_password,
        )
        if port_range is not None and not 1024 <= port_range[0] <= port_range[1] <= 65535:
            raise ValueError(f"port range must be LOW-HIGH within 1024-65535, got {port_range}")
        self._tl_port_range = port_range
        self._tl_allowed = list(host_addresses) if host_addresses is not None else None
        self._tl_relay_only = relay_only
        self._tl_use_ipv6 = use_ipv6
        self._tl_batch_receive = batch_receive
        self._tl_handler: DatagramHandler | None = None
        self._tl_keep_reading: Callable[[], bool] | None = None
        self._tl_pending: list[tuple[bytes, Source | None]] = []
        self._tl_reader: BatchReader | None = None
        self._tl_ahead = ReadAhead()
        self._tl_check_budget: int | None = None
        self._tl_validated: set[tuple[str, int]] = set()
        self._tl_check_bytes = 0
        self._tl_checks_dropped = 0
        self._tl_gate = SourceGate()
        self._tl_servers = servers
        self._tl_init_checks(grace or GraceSettings(), check_interval)

    # -- gathering ------------------------------------------------------------------------
    async def gather_candidates(self) -> None:
        """Gather local candidates on the allow-list, or on :func:`machine_addresses`.

        Follows aioice/ice.py ``Connection.gather_candidates`` (lines 568-595). Differs: the
        addresses are the allow-list or tierlink's own listing (IPv6 global and temporary
        first, see :mod:`.host_addresses`), never aioice's; host candidates carry that
        module's local preference; with ``servers``, their candidates join the host ones
        (:meth:`_tl_gather_servers`); the candidates beyond what a session description may
        carry are dropped with their sockets (:func:`.keep_within_budget`). Every socket kept
        is then watched by the source gate (see :meth:`data_received`), and reads into a
        64 KiB buffer instead of asyncio's 256 KiB one (:func:`.bound_read_buffer`; not with
        ``batch_receive=False``).
        """
        first = not self._local_candidates_start
        if self._tl_relay_only:
            await super().gather_candidates()
        elif first:
            self._local_candidates_start = True
            addresses = self._tl_allowed
            if addresses is None:
                addresses = machine_addresses(self._tl_use_ipv6)
            for component in self._components:
                self._local_candidates += await self.get_component_candidates(
                    component=component, addresses=list(addresses)
                )
            self._local_candidates_end = True
        if first and self._tl_servers is not None:
            await self._tl_gather_servers(self._tl_servers)
        if first:
            self._local_candidates, self._protocols = keep_within_budget(
                self._local_candidates, self._protocols
            )
        for protocol in self._protocols:  # every local socket and TURN allocation
            self._tl_gate.watch(protocol)
            if self._tl_batch_receive:  # else aioice's reading as shipped
                bound_read_buffer(protocol.transport)

    async def _tl_gather_servers(self, servers: ServerGatherer) -> None:
        """Add the STUN and TURN servers' candidates to the host candidates gathered."""
        hosts = list(self._protocols)
        for component in self._components:
            mine = [p for p in hosts if p.local_candidate.component == component]
            for candidate, protocol in await servers(component, mine, lambda: StunProtocol(self)):
                self._local_candidates.append(candidate)
                if protocol is not None:
                    self._protocols.append(protocol)

    async def get_component_candidates(
        self, component: int, addresses: list[str], timeout: int = 5
    ) -> list[Candidate]:
        """Gather one component's host candidates on ``addresses``, inside ``port_range``
        if set, each with its local preference (:func:`.set_local_preferences`).

        Without a range, aioice's own gathering (aioice/ice.py
        ``Connection.get_component_candidates``, lines 1137-1218) binds the sockets; its
        srflx and TURN part (the one ``stun_server`` and ``turn_server`` given to the
        constructor) runs as aioice's, with a range called with no host address.
        """
        addresses = [str(ipaddress.ip_address(a)) for a in addresses]
        if self._tl_port_range is None or not addresses:
            found = await super().get_component_candidates(component, addresses, timeout)
            set_local_preferences(found, addresses)
            return list(found)
        factory = lambda: StunProtocol(self)  # noqa: E731
        protocols = [await bind_in_range(factory, component, a, self._tl_port_range)
                     for a in addresses]
        self._protocols += protocols
        candidates = [p.local_candidate for p in protocols]
        set_local_preferences(candidates, addresses)
        stun_server = self.stun_server
        tasks = [asyncio.ensure_future(reflexive_candidate(p, stun_server))
                 for p in protocols if stun_server]
        relayed = await super().get_component_candidates(component, [], timeout)
        if tasks:
            done, pending = await asyncio.wait(tasks, timeout=timeout)
            candidates += [t.result() for t in done if t.exception() is None]
            for t in pending:
                t.cancel()
        return candidates + list(relayed)

    # -- the check budget -------------------------------------------------------------------
    def limit_unvalidated_checks(self, budget: int) -> None:
        """Send at most ``budget`` bytes (IP and UDP headers included) of connectivity
        checks, until nomination, to remote addresses that have not sent us a valid check
        (one that has proves it runs ICE with our credentials, so it is no reflection
        victim). Checks over the budget are dropped as if lost (their transactions time
        out). Call once gathering is done."""
        for protocol in self._protocols:
            self._tl_guard(protocol, budget)

    @property
    def unvalidated_check_bytes(self) -> int:
        """Bytes of checks (with IP and UDP headers) sent to addresses that had not sent us
        a valid check."""
        return self._tl_check_bytes

    @property
    def checks_dropped(self) -> int:
        """Checks not sent because the budget of :meth:`limit_unvalidated_checks` was spent."""
        return self._tl_checks_dropped

    def _tl_guard(self, protocol: StunProtocol, budget: int) -> None:
        """Route ``protocol``'s STUN messages through the check budget. A Binding success
        response goes out only to a request aioice authenticated (aioice/ice.py
        ``Connection.request_received``, lines 1294-1351): its address is validated."""
        send = protocol.send_stun

        def send_stun(message: stun.Message, addr: tuple[str, int]) -> None:
            kind = message.message_class
            if kind == stun.Class.RESPONSE:
                self._tl_validated.add(_address(addr))
            elif (
                kind == stun.Class.REQUEST
                and self._tl_pair() is None
                and _address(addr) not in self._tl_validated
            ):
                size = len(bytes(message)) + _IP_UDP_HEADERS[":" in addr[0]]
                if self._tl_check_bytes + size > budget:
                    self._tl_checks_dropped += 1
                    return
                self._tl_check_bytes += size
            send(message, addr)

        setattr(protocol, "send_stun", send_stun)  # noqa: B010  (an instance's method)

    # -- the nominated pair ---------------------------------------------------------------
    def _tl_pair(self) -> CandidatePair | None:
        """The nominated pair of component 1 (the only one), or None before nomination."""
        pair: CandidatePair | None = self._nominated.get(1)
        return pair

    def selected_pair(self) -> tuple[Candidate, Candidate] | None:
        """(local candidate, remote candidate) of the nominated pair, or None."""
        pair = self._tl_pair()
        if pair is None:
            return None
        return pair.local_candidate, pair.remote_candidate

    def nominated_socket(self) -> socket.socket | None:
        """The UDP socket of the nominated pair; None before nomination or on a relayed pair."""
        pair = self._tl_pair()
        return None if pair is None or pair.protocol is None else udp_socket(pair.protocol)

    @property
    def is_relayed(self) -> bool:
        """True if the nominated pair goes through a TURN relay on our side."""
        sel = self.selected_pair()
        return sel is not None and sel[0].type == "relay"

    # -- receiving ------------------------------------------------------------------------
    def set_datagram_handler(
        self, handler: DatagramHandler | None, *, keep_reading: Callable[[], bool] | None = None
    ) -> None:
        """Deliver every received datagram to ``handler`` synchronously (None: aioice queue).

        With a handler on a direct (host/srflx) pair, datagrams are read in batches (unless
        the connection was made with ``batch_receive=False``: aioice's reading as shipped,
        one datagram per loop pass into asyncio's 256 KiB buffer).
        ``keep_reading``: asked before each further datagram of a batch; False ends the
        batch, so the application can drain what it was given before more is read (the
        rest waits in the socket's buffer, not in a queue that would drop it; what a loop
        that reads on, uvloop, reads meanwhile waits in :attr:`read_ahead`'s hold).
        """
        self._tl_handler = handler
        self._tl_keep_reading = keep_reading
        self._tl_ahead.clear()
        if handler is not None:
            self._tl_enable_batching()
            pending, self._tl_pending = self._tl_pending, []
            for data, source in pending:
                if self._tl_admits(source):
                    handler(data)

    @property
    def held_datagrams(self) -> int:
        """Datagrams received before a handler was set, held for it (at most 64)."""
        return len(self._tl_pending)

    @property
    def read_ahead(self) -> tuple[int, int]:
        """Datagrams the loop's transport read after ``keep_reading`` said stop, held for
        the next pass (uvloop reads up to 32 per readiness, asyncio one per pass: none
        there), and of those dropped (more than 64 waited)."""
        return self._tl_ahead.held, self._tl_ahead.dropped

    @property
    def foreign_datagrams(self) -> int:
        """Application datagrams dropped because they did not come from the nominated pair's
        remote address to its local socket (a spoofing or stray sender)."""
        return self._tl_gate.dropped

    def _tl_admits(self, source: Source | None) -> bool:
        pair = self._tl_pair()
        if pair is None:
            self._tl_gate.dropped += 1
            return False
        return self._tl_gate.admits(source, pair.protocol, pair.remote_addr)

    def data_received(self, data: bytes, component: int) -> None:
        """Called by aioice's protocols for every application datagram.

        Replaces aioice/ice.py ``Connection.data_received`` (lines 1277-1278), which queues
        the datagram for ``recv``: with a handler set, ``recv`` is not used. Only the
        nominated pair's remote address, received on that pair's local socket (or TURN
        allocation), delivers; other datagrams are counted in :attr:`foreign_datagrams`.
        """
        source = self._tl_gate.take()
        nominated = self._tl_pair() is not None
        if nominated and not self._tl_admits(source):
            return
        handler = self._tl_handler
        if handler is None or not nominated:
            # Held for the handler (at most 64: the window between ICE completion and the
            # handler being set); one that came before nomination is checked when handed out.
            if len(self._tl_pending) < _PENDING_LIMIT:
                self._tl_pending.append((data, source))
            return
        ahead = self._tl_ahead
        if ahead.stopped:
            ahead.hold(data)
            return
        handler(data)
        reader = self._tl_reader
        if reader is not None and reader.draining:
            return  # the batch asks keep_reading before each datagram
        keep = self._tl_keep_reading
        if reader is not None and not reader.closed and (keep is None or keep()):
            reader.drain(keep)
        if keep is not None and not keep():
            ahead.stop(handler, keep)  # the application gets the loop before any more

    def _tl_deliver(self, data: bytes, addr: tuple[object, ...]) -> None:
        if self._tl_reader is not None:
            self._tl_gate.arrived(self._tl_reader.protocol, addr)
        self.data_received(data, 1)

    def _tl_enable_batching(self) -> None:
        """Open the batch reader on the nominated pair's socket (once; direct pairs only)."""
        if self._tl_reader is not None or not self._tl_batch_receive:
            return
        pair = self._tl_pair()
        if pair is not None:  # else not connected yet
            self._tl_reader = BatchReader.open(pair.protocol, self._tl_deliver)

    async def close(self) -> None:
        """Close the ICE connection and the batch reader's socket duplicate."""
        self._tl_nominator.close()
        self._tl_ahead.clear()
        try:
            await super().close()
        finally:
            if self._tl_reader is not None:
                self._tl_reader.close()

    # -- sending --------------------------------------------------------------------------
    def send_nowait(self, data: bytes) -> None:
        """Send one datagram on the nominated pair without awaiting.

        aioice/ice.py ``Connection.sendto`` (lines 757-770) awaits ``StunProtocol.send_data``
        (lines 342-343), which only calls its transport's ``sendto``; so does this, at once.
        On a relayed pair that transport is aioice/turn.py ``TurnTransport`` (lines 456-473),
        whose ``sendto`` binds a TURN channel as needed in a task of its own (tasks run in
        creation order, so datagrams keep their order).
        """
        pair = self._tl_pair()
        if pair is None:
            raise ConnectionError("ICE connection has no selected pair")
        pair.protocol.transport.sendto(data, pair.remote_addr)

    def forbid_fragmentation(self) -> bool:
        """Set don't-fragment on the nominated direct pair's socket (Linux
        ``IP_PMTUDISC_PROBE``: DF set, the kernel's cached path MTU not enforced), so a path
        MTU probe that is too large is dropped instead of arriving in fragments.

        False where that is not possible (no pair yet, a TURN pair, another OS).
        """
        pair = self._tl_pair()
        return pair is not None and _forbid_fragmentation(pair.protocol)


def _address(addr: tuple[str, int]) -> tuple[str, int]:
    """``addr`` with its host in one canonical text form (IPv6 has several)."""
    try:
        return str(ipaddress.ip_address(addr[0])), addr[1]
    except ValueError:
        return addr[0], addr[1]
