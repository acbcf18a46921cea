"""The nominated ICE pair's socket: batched reads, buffer sizes, don't-fragment, sources.

Half of the aioice adapter (:mod:`tierlink.transport.aioice_adapter` is the other half): the
parts that work on the socket behind aioice's ``StunProtocol`` of a host or server-reflexive
pair. asyncio's datagram transport reads one datagram per event-loop pass; a
:class:`BatchReader` reads what else waits on that socket (through a ``dup`` of it, public
socket API) in the same pass, so QUIC packetizes its answer (acks) once per batch instead of
once per datagram. Larger socket buffers absorb the bursts that batching lets through.

asyncio's transport reads one datagram per loop pass whatever the application's queue
holds; uvloop's reads on (up to 32 per readiness): a :class:`ReadAhead` holds what it reads
after the application asked to stop and hands it over in the next pass.

A :class:`SourceGate` remembers where each datagram came from (the protocol that read it and
the sender's address), so that only the nominated pair's remote address delivers data.

Every aioice name used here that aioice does not export is listed in :data:`PRIVATE_NAMES`;
``tests/test_aioice_adapter.py`` resolves each one on the installed aioice.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import deque
from collections.abc import Callable
from typing import Any

from aioice.ice import StunProtocol

__all__ = [
    "ASYNCIO_PRIVATE_NAMES",
    "PRIVATE_NAMES",
    "READ_AHEAD_LIMIT",
    "RECV_BATCH",
    "RECV_SIZE",
    "SOCKET_BUFFER",
    "BatchReader",
    "ReadAhead",
    "SourceGate",
    "bound_read_buffer",
    "forbid_fragmentation",
]

#: aioice names this module relies on that aioice (0.13.0) does not export; a trailing
#: ``(...)`` lists the parameters a called function must still take.
PRIVATE_NAMES: tuple[str, ...] = (
    # every pair's protocol is a StunProtocol; its transport is asyncio's UDP transport on a
    # host/srflx pair, aioice's TurnTransport (no "socket" extra info) on a relayed one
    "aioice.ice.StunProtocol",
    "aioice.ice.StunProtocol.transport",
    "aioice.turn.TurnTransport.get_extra_info(name, default)",
    # batched reads hand STUN (consent checks) and socket errors to aioice's own handling;
    # SourceGate wraps it on each protocol to learn every datagram's sender
    "aioice.ice.StunProtocol.datagram_received(data, addr)",
    "aioice.ice.StunProtocol.error_received(exc)",
)

#: asyncio names :func:`bound_read_buffer` relies on (its selector event loop's UDP transport).
ASYNCIO_PRIVATE_NAMES: tuple[str, ...] = (
    "asyncio.selector_events._SelectorDatagramTransport.max_size",
)

#: Datagrams handled per readiness of the nominated socket (asyncio alone handles one).
RECV_BATCH = 64
#: Datagrams a :class:`ReadAhead` holds (oldest dropped beyond).
READ_AHEAD_LIMIT = 64
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

#: Where a datagram came from: the protocol (socket or TURN allocation) that received it and
#: the sender's (host, port).
Source = tuple[StunProtocol, tuple[Any, Any]]
#: A batch reader's callback: one application datagram and its sender's address.
Deliver = Callable[[bytes, tuple[Any, ...]], None]


def udp_socket(protocol: StunProtocol) -> socket.socket | None:
    """The protocol's open UDP socket; None on a relayed pair (aioice/turn.py TurnTransport
    has no "socket" extra info) or once the transport is closing."""
    transport = protocol.transport
    if transport is None:
        return None
    sock: socket.socket | None = transport.get_extra_info("socket")
    if sock is None or transport.is_closing():  # TurnTransport has no is_closing either
        return None
    return sock


def bound_read_buffer(transport: object) -> bool:
    """Read each datagram of ``transport`` into a RECV_SIZE buffer, not asyncio's 256 KiB one.

    asyncio's selector UDP transport calls ``recvfrom(max_size)`` with ``max_size`` 256 KiB:
    CPython allocates that many bytes for every datagram, then shrinks them. glibc serves so
    large a block with ``mmap`` while its mmap threshold is at its start-up 128 KiB, until
    the process happens to free a larger mapped block: an mmap, two page faults, an mremap
    and an munmap per datagram (~20 µs of system time, 2-3x the whole receive cost
    otherwise). RECV_SIZE (the largest UDP payload) stays under that threshold. False where
    the transport is not asyncio's selector one (uvloop's reads into a buffer of its own;
    aioice's TURN transport) or is closing.
    """
    if not isinstance(getattr(type(transport), "max_size", None), int):
        return False
    closing = getattr(transport, "is_closing", None)
    if closing is None or closing():
        return False
    transport.max_size = RECV_SIZE  # type: ignore[attr-defined]
    return True


def forbid_fragmentation(protocol: StunProtocol) -> bool:
    """Set don't-fragment on the protocol's socket (Linux ``IP_PMTUDISC_PROBE``: DF set, the
    kernel's cached path MTU not enforced); False where that is not possible (a relayed
    pair: no socket of ours, another OS)."""
    transport = protocol.transport
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


class BatchReader:
    """Reads the datagrams already waiting on a direct pair's socket, in the same loop pass.

    Application datagrams (first byte >= 0x40) go to ``deliver`` with their sender's
    address; STUN goes to aioice's
    ``StunProtocol.datagram_received`` as if asyncio had read it.
    """

    def __init__(
        self, protocol: StunProtocol, sock: socket.socket, deliver: Deliver
    ) -> None:
        self.protocol = protocol
        self._sock: socket.socket | None = sock
        self._deliver = deliver
        #: True while :meth:`drain` runs (``deliver`` must not start another drain).
        self.draining = False
        self._spent = False  # a whole batch was read in this loop pass

    @classmethod
    def open(cls, protocol: StunProtocol, deliver: Deliver) -> BatchReader | None:
        """A reader on ``protocol``'s socket (buffers raised), or None if it has none (a
        relayed pair: asyncio's one-per-pass reading stays) or it is closing."""
        tsock = udp_socket(protocol)
        if tsock is None:
            return None
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):
                if tsock.getsockopt(socket.SOL_SOCKET, opt) < SOCKET_BUFFER:
                    tsock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
        sock = tsock.dup()  # same open file: same receive queue, already non-blocking
        sock.setblocking(False)
        return cls(protocol, sock, deliver)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran (also when the protocol's transport closed)."""
        return self._sock is None

    def drain(self, keep_reading: Callable[[], bool] | None) -> None:
        """Handle up to RECV_BATCH - 1 more datagrams already waiting on the socket, once
        per loop pass: asyncio's transport hands over one datagram per pass, uvloop's up to
        32, and a batch after each would let one busy socket hold the loop for ~2000.

        ``keep_reading`` is asked before each one; False ends the batch.
        """
        sock, protocol = self._sock, self.protocol
        if sock is None or self._spent:
            return
        transport = protocol.transport
        if transport is None or transport.is_closing():
            self.close()
            return
        self.draining = True
        try:
            for _ in range(RECV_BATCH - 1):
                if keep_reading is not None and not keep_reading():
                    break
                try:
                    data, addr = sock.recvfrom(RECV_SIZE)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    protocol.error_received(exc)
                    break
                if data and data[0] >= _FIRST_NON_STUN_BYTE:
                    self._deliver(data, addr)
                else:  # STUN (consent checks): aioice's own handling
                    protocol.datagram_received(data, addr)
                if self._sock is None:  # closed meanwhile
                    break
            else:  # more may wait: the next batch in the next pass
                self._spent = True
                asyncio.get_running_loop().call_soon(self._renew)
        finally:
            self.draining = False

    def _renew(self) -> None:
        self._spent = False

    def close(self) -> None:
        """Close the socket duplicate (aioice closes the original)."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


class ReadAhead:
    """Datagrams the event loop's transport read after ``keep_reading`` said stop, held
    until the next loop pass (the application had the loop), then handed over in order.

    After :meth:`stop`, :meth:`hold` takes every new datagram (at most READ_AHEAD_LIMIT,
    oldest dropped) until the next pass hands them over. asyncio's pass ends before its
    transport reads again, so nothing is held there.
    """

    def __init__(self) -> None:
        self._held: deque[bytes] = deque()
        self._handle: asyncio.Handle | None = None
        #: Datagrams held so far, and of those dropped (more than READ_AHEAD_LIMIT waited).
        self.held = 0
        self.dropped = 0

    @property
    def stopped(self) -> bool:
        """True from :meth:`stop` until what was held is handed over."""
        return self._handle is not None

    def stop(self, deliver: Callable[[bytes], None], keep_reading: Callable[[], bool]) -> None:
        """Hand nothing more over in this pass; in the next, what was held goes to
        ``deliver`` while ``keep_reading()``."""
        if self._handle is None:
            loop = asyncio.get_running_loop()
            self._handle = loop.call_soon(self._release, deliver, keep_reading)

    def hold(self, data: bytes) -> None:
        """Keep ``data`` for the next pass (while :attr:`stopped`)."""
        held = self._held
        if len(held) >= READ_AHEAD_LIMIT:
            held.popleft()
            self.dropped += 1
        held.append(data)
        self.held += 1

    def _release(self, deliver: Callable[[bytes], None], keep: Callable[[], bool]) -> None:
        self._handle = None
        held = self._held
        while held:
            if not keep():  # the rest waits one more pass
                self.stop(deliver, keep)
                return
            deliver(held.popleft())

    def clear(self) -> None:
        """Drop what is held, stop no more (the handler changed, the path closed)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._held.clear()


class SourceGate:
    """Admits application datagrams only from one source: the nominated pair's protocol and
    remote address; every other one is counted in :attr:`dropped`.

    aioice hands application datagrams to ``Connection.data_received`` without their
    sender. :meth:`watch` wraps a protocol's ``datagram_received`` so that, for the duration
    of that synchronous call, :attr:`source` says which protocol read the datagram and who
    sent it; the batch reader reports the same through :meth:`arrived`.
    """

    def __init__(self) -> None:
        self.source: Source | None = None
        #: Application datagrams refused: another sender, or another local socket.
        self.dropped = 0
        self._watched: set[int] = set()

    def watch(self, protocol: StunProtocol) -> None:
        """Learn the sender of every datagram ``protocol`` receives (idempotent)."""
        if id(protocol) in self._watched:
            return
        self._watched.add(id(protocol))
        original = protocol.datagram_received

        def received(data: bytes | str, addr: tuple[Any, ...]) -> None:
            self.source = (protocol, (addr[0], addr[1]))
            try:
                original(data, addr)
            finally:
                self.source = None

        protocol.datagram_received = received  # type: ignore[method-assign]

    def arrived(self, protocol: StunProtocol, addr: tuple[Any, ...]) -> None:
        """The batch reader read a datagram from ``addr`` on ``protocol``'s socket."""
        self.source = (protocol, (addr[0], addr[1]))

    def take(self) -> Source | None:
        """The current datagram's source (None: unknown), cleared for the next one."""
        source, self.source = self.source, None
        return source

    def admits(self, source: Source | None, protocol: StunProtocol, remote: Any) -> bool:
        """True if ``source`` is ``protocol`` receiving from ``remote``; else counted."""
        if source is not None and source[0] is protocol and source[1] == tuple(remote):
            return True
        self.dropped += 1
        return False
