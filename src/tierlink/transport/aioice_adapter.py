"""The one place tierlink touches aioice's private attributes.

aioice (0.13) gathers host candidates from every interface except 127.0.0.1, queues every
received datagram in an unbounded ``asyncio.Queue`` and sends through a coroutine. tierlink
needs what it does not offer publicly:

* gathering restricted to an allow-list of local addresses (loopback included);
* a synchronous receive callback (the QUIC pump and the bounded receive queue sit behind it);
* a synchronous send on the nominated pair, and the nominated pair itself;
* batched receive: asyncio's datagram transport reads one datagram per event-loop pass, so
  after a datagram reaches the handler the adapter drains what else waits on the nominated
  pair's socket (a ``dup`` of it, public API) in the same pass; QUIC then packetizes its
  answer (acks) once per batch instead of once per datagram. Larger socket buffers absorb
  the bursts that batching lets through;
* connectivity checks without aioice's idle wait: aioice's ``connect`` sleeps one pacing
  interval (Ta, 20 ms) after starting the *last* check before it looks at the result, so
  even a one-pair loopback connect takes 20 ms. :meth:`IceConnection.connect` is aioice's
  loop with that trailing sleep dropped (Ta still paces the start of every further check)
  and Ta configurable (``check_interval``; RFC 8445 section 14.2 allows down to 5 ms).

``tests/test_ice_compat.py`` checks every private name used here, so an aioice upgrade that
renames one fails loudly there instead of misbehaving at run time.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import random
import socket
from collections.abc import Callable, Sequence
from typing import Any

import aioice
from aioice import Candidate
from aioice.candidate import candidate_foundation, candidate_priority
from aioice.ice import (
    ICE_COMPLETED,
    ICE_FAILED,
    CandidatePair,
    StunProtocol,
    TransportPolicy,
    get_host_addresses,
    server_reflexive_candidate,
)

__all__ = ["PRIVATE_ATTRIBUTES", "IceConnection", "get_host_addresses"]

#: Private aioice.Connection attributes this adapter relies on (checked by the tests).
PRIVATE_ATTRIBUTES = (
    "_local_candidates_start",
    "_local_candidates_end",
    "_local_candidates",
    "_components",
    "_transport_policy",
    "_nominated",
    "_use_ipv4",
    "_use_ipv6",
    # connect(): aioice's check loop
    "_remote_candidates",
    "_pair_remote_candidate",
    "_unfreeze_initial",
    "_early_checks",
    "_early_checks_done",
    "_check_periodic",
    "_check_list",
    "_check_list_state",
    "_remote_candidates_expected",
    "_query_consent_task",
    # get_component_candidates() with a port range
    "_protocols",
)

DatagramHandler = Callable[[bytes], None]

#: Datagrams handled per readiness of the nominated socket (asyncio alone handles one).
RECV_BATCH = 64
#: Largest datagram read from the socket (the largest UDP payload).
RECV_SIZE = 65_536
#: SO_RCVBUF / SO_SNDBUF asked for on the nominated socket (the kernel caps it at
#: net.core.rmem_max / wmem_max; Linux's 208 KiB default holds only ~90 full packets).
SOCKET_BUFFER = 2 * 1024 * 1024
#: RFC 7983 demultiplexing: STUN messages start with a byte below 4, QUIC packets always
#: have the fixed bit (0x40) set, so anything >= 0x40 skips aioice's STUN parse.
_FIRST_NON_STUN_BYTE = 0x40
#: Linux socket options for the don't-fragment bit (the socket module lacks some names).
_IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
_IPV6_MTU_DISCOVER = getattr(socket, "IPV6_MTU_DISCOVER", 23)
_PMTUDISC_PROBE = getattr(socket, "IP_PMTUDISC_PROBE", 3)
#: aioice's pacing of connectivity checks (Ta); RFC 8445 section 14.2 forbids < 5 ms.
DEFAULT_CHECK_INTERVAL = 0.02
MIN_CHECK_INTERVAL = 0.005
_UNSTARTED = (CandidatePair.State.WAITING, CandidatePair.State.FROZEN)


class IceConnection(aioice.Connection):
    """An aioice Connection with an address allow-list, a receive callback and sync send."""

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
        use_ipv6: bool = False,
        local_username: str | None = None,
        local_password: str | None = None,
        check_interval: float = DEFAULT_CHECK_INTERVAL,
        batch_receive: bool = True,
        port_range: tuple[int, int] | None = None,
    ) -> None:
        if check_interval < MIN_CHECK_INTERVAL:
            raise ValueError(f"check_interval must be >= {MIN_CHECK_INTERVAL} s (RFC 8445 Ta)")
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
        self._tl_check_interval = check_interval
        self._tl_batch_receive = batch_receive
        self._tl_handler: DatagramHandler | None = None
        self._tl_keep_reading: Callable[[], bool] | None = None
        self._tl_pending: list[bytes] = []
        self._tl_sock: socket.socket | None = None  # dup of the nominated socket
        self._tl_protocol: StunProtocol | None = None
        self._tl_draining = False

    async def gather_candidates(self) -> None:
        """Gather host candidates only on the allowed addresses (all but 127.0.0.1 if None)."""
        if self._local_candidates_start:
            return
        self._local_candidates_start = True
        addresses: list[str] = []
        if self._transport_policy == TransportPolicy.ALL:
            if self._tl_allowed is None:
                addresses = get_host_addresses(use_ipv4=self._use_ipv4, use_ipv6=self._use_ipv6)
            else:
                addresses = list(self._tl_allowed)
        for component in self._components:
            self._local_candidates += await self.get_component_candidates(
                component=component, addresses=addresses
            )
        self._local_candidates_end = True

    async def get_component_candidates(
        self, component: int, addresses: list[str], timeout: int = 5
    ) -> list[Candidate]:
        """aioice's gathering, except that host sockets bind inside ``port_range`` if set.

        Host and server-reflexive candidates come from our sockets; a TURN allocation (its
        client socket is not in the range) still comes from aioice.
        """
        if self._tl_port_range is None or not addresses:
            return list(await super().get_component_candidates(component, addresses, timeout))
        protocols = [await self._bind_in_range(component, a) for a in addresses]
        self._protocols += protocols
        candidates = [p.local_candidate for p in protocols]
        tasks = [
            asyncio.ensure_future(server_reflexive_candidate(p, self.stun_server))
            for p in protocols
            if self.stun_server and ipaddress.ip_address(p.local_candidate.host).version == 4
        ]
        relayed = await super().get_component_candidates(component, [], timeout)
        if tasks:
            done, pending = await asyncio.wait(tasks, timeout=timeout)
            candidates += [t.result()[0] for t in done if t.exception() is None]
            for t in pending:
                t.cancel()
        return candidates + list(relayed)

    async def _bind_in_range(self, component: int, address: str) -> StunProtocol:
        assert self._tl_port_range is not None
        low, high = self._tl_port_range
        loop = asyncio.get_running_loop()
        ports = list(range(low, high + 1))
        random.shuffle(ports)
        for port in ports:
            try:
                _, protocol = await loop.create_datagram_endpoint(
                    lambda: StunProtocol(self), local_addr=(address, port)
                )
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

    async def connect(self) -> None:
        """aioice's ``connect`` (RFC 8445 checks, aggressive nomination) minus the idle Ta.

        Starts one check per ``check_interval`` like aioice, but stops pacing as soon as no
        pair is left to start (and no remote candidate is expected), so the result is seen
        the moment the last check completes. Raises ConnectionError if ICE fails.
        """
        if not self._local_candidates_end:
            raise ConnectionError("Local candidates gathering was not performed")
        if self.remote_username is None or self.remote_password is None:
            raise ConnectionError("Remote username or password is missing")
        for remote_candidate in self._remote_candidates:
            self._pair_remote_candidate(remote_candidate)
        self.sort_check_list()
        self._unfreeze_initial()
        for early_check in self._early_checks:
            self.check_incoming(*early_check)
        self._early_checks.clear()
        self._early_checks_done = True
        while self._check_periodic():
            if not self._remote_candidates_expected() and not any(
                p.state in _UNSTARTED and p.task is None for p in self._check_list
            ):
                break  # aioice would sleep Ta here only to find nothing left to start
            await asyncio.sleep(self._tl_check_interval)
        res = await self._check_list_state.get() if self._check_list else ICE_FAILED
        for check in self._check_list:
            if check.task:
                check.task.cancel()
        if res != ICE_COMPLETED:
            raise ConnectionError("ICE negotiation failed")
        self._query_consent_task = asyncio.create_task(self.query_consent())

    # -- receiving ------------------------------------------------------------------------
    def set_datagram_handler(
        self, handler: DatagramHandler | None, *, keep_reading: Callable[[], bool] | None = None
    ) -> None:
        """Deliver every received datagram to ``handler`` synchronously (None: aioice queue).

        With a handler on a direct (host/srflx) pair, datagrams are read in batches (unless
        the connection was made with ``batch_receive=False``: aioice's one per loop pass).
        ``keep_reading``: asked before each further datagram of a batch; False ends the
        batch, so the application can drain what it was given before more is read (the
        rest waits in the socket's buffer, not in a queue that would drop it).
        """
        self._tl_handler = handler
        self._tl_keep_reading = keep_reading
        if handler is not None:
            self._tl_enable_batching()
            pending, self._tl_pending = self._tl_pending, []
            for data in pending:
                handler(data)

    def data_received(self, data: bytes, component: int) -> None:
        """Called by aioice's protocols for every application datagram."""
        handler = self._tl_handler
        if handler is not None:
            handler(data)
            if self._tl_sock is not None and not self._tl_draining:
                keep = self._tl_keep_reading
                if keep is None or keep():
                    self._tl_drain()
        elif len(self._tl_pending) < 64:
            # Datagrams that arrive between ICE completion and the handler being set.
            self._tl_pending.append(data)

    def _tl_enable_batching(self) -> None:
        """Open the batch reader on the nominated pair's socket (once; direct pairs only)."""
        if self._tl_sock is not None or not self._tl_batch_receive:
            return
        pair = self._nominated.get(1)
        if pair is None or type(pair.protocol) is not StunProtocol:
            return  # not connected yet, or TURN: asyncio's one-per-pass reader stays
        transport = pair.protocol.transport
        tsock = transport.get_extra_info("socket") if transport is not None else None
        if tsock is None or transport.is_closing():
            return
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):
                if tsock.getsockopt(socket.SOL_SOCKET, opt) < SOCKET_BUFFER:
                    tsock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
        sock = tsock.dup()  # same open file: same receive queue, already non-blocking
        sock.setblocking(False)
        self._tl_sock, self._tl_protocol = sock, pair.protocol

    def _tl_drain(self) -> None:
        """Handle up to RECV_BATCH - 1 more datagrams already waiting on the socket."""
        sock, protocol = self._tl_sock, self._tl_protocol
        assert sock is not None and protocol is not None
        if protocol.transport is None or protocol.transport.is_closing():
            self._tl_close_batching()
            return
        self._tl_draining = True
        try:
            keep = self._tl_keep_reading
            for _ in range(RECV_BATCH - 1):
                if keep is not None and not keep():
                    break
                try:
                    data, addr = sock.recvfrom(RECV_SIZE)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    protocol.error_received(exc)
                    break
                if data and data[0] >= _FIRST_NON_STUN_BYTE:
                    self.data_received(data, 1)
                else:  # STUN (consent checks): aioice's own handling
                    protocol.datagram_received(data, addr)
                if self._tl_sock is None:  # closed meanwhile
                    break
        finally:
            self._tl_draining = False

    def _tl_close_batching(self) -> None:
        sock, self._tl_sock, self._tl_protocol = self._tl_sock, None, None
        if sock is not None:
            sock.close()

    async def close(self) -> None:
        """Close the ICE connection and the batch reader's socket duplicate."""
        try:
            await super().close()
        finally:
            self._tl_close_batching()

    # -- sending --------------------------------------------------------------------------
    def send_nowait(self, data: bytes) -> None:
        """Send one datagram on the nominated pair without awaiting.

        A host/srflx pair sends straight on its UDP socket; a TURN pair may need a channel
        binding first, so its coroutine is scheduled (tasks run in creation order).
        """
        pair = self._nominated.get(1)
        if pair is None:
            raise ConnectionError("ICE connection has no selected pair")
        protocol = pair.protocol
        if type(protocol) is StunProtocol:
            protocol.transport.sendto(data, pair.remote_addr)
        else:
            task = asyncio.ensure_future(protocol.send_data(data, pair.remote_addr))
            task.add_done_callback(_swallow)

    def forbid_fragmentation(self) -> bool:
        """Set don't-fragment on the nominated direct pair's socket (Linux
        ``IP_PMTUDISC_PROBE``: DF set, the kernel's cached path MTU not enforced), so a path
        MTU probe that is too large is dropped instead of arriving in fragments.

        False where that is not possible (no pair yet, a TURN pair, another OS).
        """
        pair = self._nominated.get(1)
        if pair is None or type(pair.protocol) is not StunProtocol:
            return False
        transport = pair.protocol.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is None:
            return False
        if sock.family == socket.AF_INET6:
            level, option = socket.IPPROTO_IPV6, _IPV6_MTU_DISCOVER
        else:
            level, option = socket.IPPROTO_IP, _IP_MTU_DISCOVER
        try:
            sock.setsockopt(level, option, _PMTUDISC_PROBE)
        except OSError:
            return False
        return True

    def selected_pair(self) -> tuple[Candidate, Candidate] | None:
        """(local candidate, remote candidate) of the nominated pair, or None."""
        pair = self._nominated.get(1)
        if pair is None:
            return None
        return pair.local_candidate, pair.remote_candidate

    @property
    def is_relayed(self) -> bool:
        """True if the nominated pair goes through a TURN relay on our side."""
        sel = self.selected_pair()
        return sel is not None and sel[0].type == "relay"


def _swallow(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()
