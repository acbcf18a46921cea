"""The secure reliable channel: QUIC (aioquic, sans-IO) over a connected ICE path.

:func:`open_channel` runs a mutually authenticated QUIC handshake over the nominated ICE
pair (dialer = QUIC client, callee = server; pump in :mod:`tierlink.transport.quic`) and
returns a :class:`SecureChannel` once both certificates matched their pinned SHA-256 and
both sides exchanged HELLO (wire format in :mod:`tierlink.wire.channel_frames`).

Reliable messages are acknowledged by the receiving *channel* once they are in its receive
queue, so ``await send()`` returns a message id only then. Acks are cumulative and written
once per flush (one ACK frame for every message queued in that event-loop pass). The sender
keeps at most ``window`` payload bytes unacknowledged (or one larger message alone) and
queues further sends in call order: a full receiver queue holds the sender back and
nothing is dropped. Datagrams are unreliable and go to a drop-oldest queue.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

from aioquic.quic import events

from tierlink.errors import ConnectionClosed, HandshakeFailed, MessageTooLarge
from tierlink.transport.aioice_adapter import IceConnection
from tierlink.transport.aioquic_adapter import (
    PinnedQuicConnection,
    forget_rtt_sample,
    pending_datagrams,
    restamp_in_flight,
)
from tierlink.transport.certs import LocalCertificate
from tierlink.transport.quic import (
    ERROR_NONE,
    QUIC_ADDR,
    QuicSession,
    hand_out_first_flight,
    quic_configuration,
    start_client,
    start_server,
)
from tierlink.transport.recv_queue import RecvQueue
from tierlink.wire.channel_frames import (
    PROTOCOL_VERSION,
    TAG_CONTROL,
    TAG_MESSAGES,
    Ack,
    ControlReader,
    Hello,
    MessageReader,
    ProtocolError,
    encode_ack,
    encode_hello,
    encode_length,
)

log = logging.getLogger(__name__)

#: Largest datagram payload: always fits one 1-RTT packet of MAX_DATAGRAM_SIZE bytes.
DATAGRAM_MAX_PAYLOAD = 1150
#: Unsent datagrams kept in aioquic when the congestion window is full (oldest dropped).
DATAGRAM_SEND_BACKLOG = 256
DEFAULT_WINDOW = 4 * 1024 * 1024
#: Unacknowledged messages at most (bounds per-message bookkeeping of tiny messages).
MAX_IN_FLIGHT_MESSAGES = 1024
PEER_CLOSED_REASON = "the peer closed the channel"


class SecureChannel(QuicSession):
    """An authenticated, encrypted channel to one peer: reliable messages and datagrams.

    Create it with :func:`open_channel`. Every method runs on the event loop that opened it.
    """

    def __init__(
        self,
        ice: IceConnection,
        *,
        is_client: bool,
        certificate: LocalCertificate,
        peer_cert_sha256: bytes,
        queue_capacity: int,
        liveness_timeout: float,
        max_message_size: int,
        window: int,
        started: PinnedQuicConnection | None = None,
        probe_path_mtu: bool = True,
        peer_limits: tuple[int, int] | None = None,
    ) -> None:
        super().__init__(
            ice,
            is_client=is_client,
            certificate=certificate,
            peer_cert_sha256=peer_cert_sha256,
            liveness_timeout=liveness_timeout,
            flow_window=_flow_window(window),
            started=started,
            probe_path_mtu=probe_path_mtu,
        )
        self._max_message_size = max_message_size
        self._window = window
        self._peer_hello: Hello | None = None
        self._peer_limits = peer_limits  # (max_message_size, window) the peer signaled
        self._hello_seen = False
        # sending side
        self._ctrl_sid = -1
        self._msg_sid = -1
        self._next_id = 0
        self._unacked: deque[tuple[int, int, asyncio.Future[int]]] = deque()
        self._backlog: deque[tuple[bytes, asyncio.Future[int]]] = deque()
        self.in_flight_bytes = 0
        self.peak_in_flight_bytes = 0
        # receiving side
        self._rx_roles: dict[int, str] = {}
        self._ctrl_reader = ControlReader()
        self._msg_reader = MessageReader(max_message_size)
        self._rx_pending: deque[bytes] = deque()
        self._rx_pending_bytes = 0
        self._accepted = 0
        self._acked = 0  # highest id our ACK frames announced so far
        self._inbox: RecvQueue[bytes] = RecvQueue(queue_capacity)
        self._datagrams: RecvQueue[bytes] = RecvQueue(queue_capacity)
        self._stats = dict.fromkeys(
            (
                "messages_sent",
                "messages_received",
                "bytes_sent",
                "bytes_received",
                "datagrams_sent",
                "datagrams_received",
                "datagrams_send_dropped",
            ),
            0,
        )

    # -- public API -----------------------------------------------------------------------
    @property
    def max_message_size(self) -> int:
        """Largest reliable message: the smaller of ours and the peer's limit."""
        peer = self._peer_hello.max_message_size if self._peer_hello else 0
        return min(self._max_message_size, peer)

    @property
    def window(self) -> int:
        """Unacknowledged payload bytes the sender may have in flight."""
        peer = self._peer_hello.window if self._peer_hello else 0
        return max(1, min(self._window, peer))

    def _keep_reading(self) -> bool:
        # Received QUIC datagrams wait in a drop-oldest queue: once it is half full, the
        # application gets the loop before another packet (up to ~15 of them) is read.
        return len(self._datagrams) < self._datagrams.capacity // 2

    @property
    def stats(self) -> dict[str, int]:
        """Counters: messages/bytes sent (acked) and received, datagrams, drops, window."""
        out = dict(self._stats)
        out["datagrams_dropped"] = self._datagrams.dropped
        out["in_flight_bytes"] = self.in_flight_bytes
        out["peak_in_flight_bytes"] = self.peak_in_flight_bytes
        out["max_packet_size"] = self.max_packet_size
        return out

    async def send(self, data: bytes) -> int:
        """Send one reliable message; return its id once the peer's channel queued it.

        Waits (in call order) while the in-flight window is full. Raises MessageTooLarge
        above :attr:`max_message_size` (the channel stays usable) and ConnectionClosed if
        the channel closes first; a send cancelled while still waiting is not sent.
        """
        fut = self.submit(data)
        try:
            return await fut
        finally:
            if fut.cancelled():  # withdraw it now if it is still waiting for the window
                self._withdraw(fut)

    def submit(self, data: bytes) -> asyncio.Future[int]:
        """Queue one reliable message now; the future gets its id once the peer queued it.

        The pipelined form of :meth:`send` (no task per message): messages go out in call
        order as the window allows and wait in memory until then, so keep the number of
        unfinished futures bounded. Cancelling a future before its message went out
        withdraws the message (it is skipped when its turn comes). Raises like
        :meth:`send`; the future fails with ConnectionClosed if the channel closes first.
        """
        self._check_open()
        size = len(data)
        limit = self.max_message_size
        if size > limit:
            raise MessageTooLarge(
                f"message of {size} bytes exceeds the channel's max_message_size of {limit} bytes"
            )
        payload = data if type(data) is bytes else bytes(data)
        fut: asyncio.Future[int] = self._loop.create_future()
        if not self._backlog and self._fits(size):
            self._write_message(payload, fut)
        else:
            self._backlog.append((payload, fut))
        return fut

    def _withdraw(self, fut: asyncio.Future[int]) -> None:
        """Drop a cancelled message that still waits for the window; let the next ones go."""
        if any(entry[1] is fut for entry in self._backlog):
            self._backlog = deque(e for e in self._backlog if e[1] is not fut)
            self._pump_backlog()

    def send_datagram(self, data: bytes) -> None:
        """Send one unreliable QUIC DATAGRAM (at most DATAGRAM_MAX_PAYLOAD bytes)."""
        self._check_open()
        if len(data) > DATAGRAM_MAX_PAYLOAD:
            raise MessageTooLarge(
                f"datagram of {len(data)} bytes exceeds the datagram limit of "
                f"{DATAGRAM_MAX_PAYLOAD} bytes"
            )
        assert self._quic is not None
        self._quic.send_datagram_frame(bytes(data))
        pending = pending_datagrams(self._quic)
        while len(pending) > DATAGRAM_SEND_BACKLOG:
            pending.popleft()
            self._stats["datagrams_send_dropped"] += 1
        self._stats["datagrams_sent"] += 1
        self._kick()

    async def recv(self, timeout: float | None = None) -> bytes | None:
        """Next reliable message; None after ``timeout`` s (0: at once, None: forever)."""
        item = await self._inbox.get(timeout)
        if item is not None:
            self._accept_pending()
        return item

    async def recv_datagram(self, timeout: float | None = None) -> bytes | None:
        """Next datagram; None after ``timeout`` s (0: at once, None: forever)."""
        return await self._datagrams.get(timeout)

    async def close(self) -> None:
        """Close the channel; every waiter gets ConnectionClosed. The ICE stays open."""
        self._shutdown(
            "channel closed locally", error_code=ERROR_NONE, peer_reason=PEER_CLOSED_REASON
        )

    async def __aenter__(self) -> SecureChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<SecureChannel {'client' if self.is_client else 'server'} {state}>"

    # -- events and greeting ----------------------------------------------------------------
    def _on_event(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.StreamDataReceived):
            self._on_stream_data(event)
        elif isinstance(event, events.DatagramFrameReceived):
            self._stats["datagrams_received"] += 1
            self._datagrams.offer(event.data)
        elif isinstance(event, events.HandshakeCompleted):
            self._on_handshake_done()
        elif isinstance(event, events.StreamReset):
            raise ProtocolError(f"peer reset stream {event.stream_id}")

    def _on_handshake_done(self) -> None:
        if not self._check_pin():
            return
        quic = self._quic
        assert quic is not None
        self._ctrl_sid = quic.get_next_available_stream_id(is_unidirectional=True)
        hello = Hello(PROTOCOL_VERSION, self._max_message_size, self._window)
        quic.send_stream_data(self._ctrl_sid, TAG_CONTROL + encode_hello(hello))
        self._msg_sid = quic.get_next_available_stream_id(is_unidirectional=True)
        quic.send_stream_data(self._msg_sid, TAG_MESSAGES)
        if self._peer_limits is not None and self._peer_hello is None:
            # The peer's limits came signed (or sealed) with its offer or answer: open now,
            # one round trip before its HELLO arrives (which must then repeat them).
            self._peer_hello = Hello(PROTOCOL_VERSION, *self._peer_limits)
            self._mark_ready()

    def _on_hello(self, hello: Hello) -> None:
        if self._hello_seen:
            raise ProtocolError("second HELLO")
        self._hello_seen = True
        if hello.version != PROTOCOL_VERSION:
            raise ProtocolError(
                f"peer speaks channel protocol {hello.version}, we speak {PROTOCOL_VERSION}"
            )
        if self._peer_limits is not None and (hello.max_message_size, hello.window) != tuple(
            self._peer_limits
        ):
            raise ProtocolError("the peer's HELLO disagrees with the limits it signaled")
        self._peer_hello = hello
        self._mark_ready()

    # -- streams ------------------------------------------------------------------------
    def _on_stream_data(self, event: events.StreamDataReceived) -> None:
        sid = event.stream_id
        data = event.data
        role = self._rx_roles.get(sid)
        if role is None:
            peer_initiated = bool(sid & 1) == self.is_client
            if not (sid & 2) or not peer_initiated:
                raise ProtocolError(f"unexpected stream {sid}")
            if not data:
                if event.end_stream:
                    raise ProtocolError(f"peer ended stream {sid}")
                return
            tag, data = data[:1], data[1:]
            if tag == TAG_CONTROL and "control" not in self._rx_roles.values():
                role = "control"
            elif tag == TAG_MESSAGES and "messages" not in self._rx_roles.values():
                role = "messages"
            else:
                raise ProtocolError(f"unexpected stream tag {tag!r}")
            self._rx_roles[sid] = role
        if event.end_stream:
            raise ProtocolError(f"peer ended its {role} stream")
        if not data:
            return
        if role == "control":
            for frame in self._ctrl_reader.feed(data):
                if isinstance(frame, Ack):
                    self._on_ack(frame.message_id)
                else:
                    self._on_hello(frame)
            return
        for message in self._msg_reader.feed(data):
            self._rx_pending.append(message)
            self._rx_pending_bytes += len(message)
        buffered = self._rx_pending_bytes + self._msg_reader.partial_bytes
        if (
            buffered > max(self._window, self._max_message_size)
            or len(self._rx_pending) > MAX_IN_FLIGHT_MESSAGES
        ):
            raise ProtocolError("peer exceeded the flow-control window")
        self._accept_pending()

    def _accept_pending(self) -> None:
        """Move waiting messages into the receive queue while it has room; ack them."""
        moved = 0
        inbox = self._inbox
        while self._rx_pending and not inbox.full() and not self._closed:
            message = self._rx_pending.popleft()
            self._rx_pending_bytes -= len(message)
            inbox.offer(message)
            moved += 1
            self._stats["messages_received"] += 1
            self._stats["bytes_received"] += len(message)
        if moved:
            self._accepted += moved
            self._kick()  # one cumulative ACK per flush, written by _before_flush

    def _before_flush(self) -> None:
        if self._accepted != self._acked and self._quic is not None:
            self._acked = self._accepted
            self._quic.send_stream_data(self._ctrl_sid, encode_ack(self._acked))

    def _on_ack(self, message_id: int) -> None:
        if message_id > self._next_id:
            raise ProtocolError(f"ack for message {message_id}, never sent")
        unacked = self._unacked
        while unacked and unacked[0][0] <= message_id:
            mid, size, fut = unacked.popleft()
            self.in_flight_bytes -= size
            self._stats["messages_sent"] += 1
            self._stats["bytes_sent"] += size
            if not fut.done():
                fut.set_result(mid)
        self._pump_backlog()

    def _pump_backlog(self) -> None:
        """Write waiting sends, in call order, while the window has room."""
        backlog = self._backlog
        while backlog and not self._closed:
            payload, fut = backlog[0]
            if fut.done():  # cancelled while waiting: never sent
                backlog.popleft()
            elif self._fits(len(payload)):
                backlog.popleft()
                self._write_message(payload, fut)
            else:
                break

    def _fits(self, size: int) -> bool:
        if not self._unacked:
            return True
        return (
            self.in_flight_bytes + size <= self.window
            and len(self._unacked) < MAX_IN_FLIGHT_MESSAGES
        )

    def _write_message(self, payload: bytes, fut: asyncio.Future[int]) -> None:
        quic = self._quic
        assert quic is not None
        self._next_id += 1
        if len(payload) <= 65536:  # one buffer append for small messages
            quic.send_stream_data(self._msg_sid, encode_length(len(payload)) + payload)
        else:  # no 16 MiB copy just to prepend 8 bytes
            quic.send_stream_data(self._msg_sid, encode_length(len(payload)))
            quic.send_stream_data(self._msg_sid, payload)
        self._unacked.append((self._next_id, len(payload), fut))
        self.in_flight_bytes += len(payload)
        self.peak_in_flight_bytes = max(self.peak_in_flight_bytes, self.in_flight_bytes)
        self._kick()

    # -- teardown -----------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise ConnectionClosed(self.close_reason or "channel closed")
        if self._peer_hello is None:
            raise ConnectionClosed("channel not open yet")

    def _on_closed(self, reason: str) -> None:
        closed = ConnectionClosed(reason)
        for pending in (self._unacked, self._backlog):
            for entry in pending:
                fut: asyncio.Future[Any] = entry[-1]
                if not fut.done():
                    fut.set_exception(closed)
                    fut.exception()  # mark retrieved: its send() may have been cancelled
            pending.clear()
        self.in_flight_bytes = 0
        self._rx_pending.clear()
        self._rx_pending_bytes = 0
        self._inbox.close(closed)
        self._datagrams.close(closed)


def _check_params(
    queue_capacity: int,
    liveness_timeout: float,
    handshake_timeout: float,
    max_message_size: int,
    window: int,
) -> None:
    if queue_capacity < 1 or liveness_timeout <= 0 or handshake_timeout <= 0:
        raise ValueError("queue_capacity, liveness_timeout and handshake_timeout must be > 0")
    if not 0 <= max_message_size < 2**62 or window < 1:
        raise ValueError("max_message_size must be in [0, 2**62) and window >= 1")


def _flow_window(window: int) -> int:
    return max(window, 1024 * 1024)


async def open_channel(
    ice: IceConnection,
    *,
    is_client: bool,
    certificate: LocalCertificate,
    peer_cert_sha256: bytes,
    queue_capacity: int = 16,
    liveness_timeout: float = 15.0,
    handshake_timeout: float = 10.0,
    max_message_size: int = 16 * 1024 * 1024,
    window: int = DEFAULT_WINDOW,
    started: PinnedQuicConnection | None = None,
    probe_path_mtu: bool = True,
    peer_limits: tuple[int, int] | None = None,
) -> SecureChannel:
    """Run the pinned, mutually authenticated QUIC handshake over a connected ICE path.

    ``is_client`` is True for the dialer. Raises HandshakeFailed (with the reason) if the
    peer's certificate SHA-256 differs from ``peer_cert_sha256``, the peer rejects ours,
    or nothing completes within ``handshake_timeout`` seconds. The caller keeps owning
    ``ice``: closing the channel does not close it. ``probe_path_mtu``: find and use the
    largest packet a direct path carries (:mod:`tierlink.protocol.pmtu`); off, packets stay at 1200
    bytes. ``peer_limits``: the peer's (max_message_size, window) if it told them through an
    authenticated channel (its signed offer or sealed answer); the channel then opens as soon
    as the handshake completes, a round trip before the peer's HELLO. (``started``:
    internal, see :class:`PreparedChannel`, which prepares the dialer's side ahead of ICE.)
    """
    if len(peer_cert_sha256) != 32:
        raise ValueError("peer_cert_sha256 must be the 32-byte SHA-256 of the DER certificate")
    _check_params(queue_capacity, liveness_timeout, handshake_timeout, max_message_size, window)
    if ice.selected_pair() is None:
        raise HandshakeFailed("the ICE connection has no selected pair (connect it first)")
    channel = SecureChannel(
        ice,
        is_client=is_client,
        certificate=certificate,
        peer_cert_sha256=bytes(peer_cert_sha256),
        queue_capacity=queue_capacity,
        liveness_timeout=liveness_timeout,
        max_message_size=max_message_size,
        window=window,
        started=started,
        probe_path_mtu=probe_path_mtu,
        peer_limits=peer_limits,
    )
    await channel._handshake(handshake_timeout)
    return channel


class PreparedChannel:
    """One side of a channel prepared before its ICE path exists.

    The QUIC handshake's first two flights travel in the signaling, ahead of the path.
    Dialer (``is_client``): a node keeps one draft ready (building the client and its
    ClientHello is ~1 ms of CPU), so a dial only packetizes :meth:`first_flight` into its
    offer, and feeds the callee's reply from the answer to :meth:`receive_reply` while its
    ICE checks run. Callee: :meth:`receive_first_flight` processes the offer's ClientHello
    and :meth:`reply` gives the flight for the answer. Once the path works the dialer sends
    its Finished at once (with its first message): the handshake costs no round trip on
    the path. One draft opens one channel; a dialer's draft older than ``liveness_timeout``
    and not yet handed out is rebuilt at open. Settings as for :func:`open_channel`;
    create it on the loop that will open it.
    """

    def __init__(
        self,
        *,
        certificate: LocalCertificate,
        queue_capacity: int = 16,
        liveness_timeout: float = 15.0,
        handshake_timeout: float = 10.0,
        max_message_size: int = 16 * 1024 * 1024,
        window: int = DEFAULT_WINDOW,
        probe_path_mtu: bool = True,
        is_client: bool = True,
    ) -> None:
        _check_params(queue_capacity, liveness_timeout, handshake_timeout, max_message_size, window)
        self.is_client = is_client
        self._probe_path_mtu = probe_path_mtu
        self._certificate = certificate
        self._queue_capacity = queue_capacity
        self._liveness_timeout = liveness_timeout
        self._handshake_timeout = handshake_timeout
        self._max_message_size = max_message_size
        self._window = window
        self._loop = asyncio.get_running_loop()
        self._created = self._loop.time()
        self._config = quic_configuration(
            is_client=is_client,
            certificate=certificate,
            liveness_timeout=liveness_timeout,
            flow_window=_flow_window(window),
        )
        self._quic: PinnedQuicConnection | None = (
            start_client(self._config, self._created) if is_client else None
        )
        self._used = False

    @property
    def fresh(self) -> bool:
        """Not used and young enough to open a channel as it is."""
        return not self._used and self._loop.time() - self._created <= self._liveness_timeout

    def first_flight(self) -> tuple[bytes, ...]:
        """Dialer: the datagrams of the first flight, to carry in the offer (built once;
        their send time, which starts QUIC's loss and RTT clocks, is now)."""
        quic = self._quic
        if not self.is_client or quic is None:
            raise RuntimeError("only an unused dialer's draft has a first flight")
        return hand_out_first_flight(quic, self._loop.time())

    def receive_reply(self, datagrams: tuple[bytes, ...], peer_cert_sha256: bytes) -> None:
        """Dialer: process the callee's reply (from its answer) to our first flight; its
        certificate must match ``peer_cert_sha256`` (the answer's)."""
        quic = self._quic
        if not self.is_client or quic is None or not quic.early_datagrams:
            raise RuntimeError("only a dialer's draft whose first flight went out gets a reply")
        quic.expected_peer_sha256 = peer_cert_sha256
        now = self._loop.time()
        restamp_in_flight(quic, now)  # the reply's ACK says nothing of the path's RTT...
        try:
            for datagram in datagrams:
                quic.receive_datagram(datagram, QUIC_ADDR, now=now)
        except Exception as exc:  # garbage from the sealed answer must not escape
            log.info("ignoring an unusable early QUIC reply: %r", exc)
            return
        forget_rtt_sample(quic)
        quic.early_reply = True

    def receive_first_flight(self, datagrams: tuple[bytes, ...], peer_cert_sha256: bytes) -> bool:
        """Callee: process the dialer's first flight from its offer; False if unusable
        (the dialer then sends it on the path, where it is handled as usual)."""
        if self.is_client or self._quic is not None:
            raise RuntimeError("only a fresh callee's draft receives a first flight")
        try:
            quic = start_server(self._config, datagrams, peer_cert_sha256, self._loop.time())
        except Exception as exc:  # garbage from a signed peer must not escape
            log.info("ignoring an unusable early QUIC flight: %r", exc)
            return False
        self._quic = quic
        return quic is not None

    def reply(self) -> tuple[bytes, ...]:
        """Callee: the flight answering the dialer's, to carry in the answer."""
        quic = self._quic
        if self.is_client or quic is None:
            raise RuntimeError("only a callee's draft that received a first flight replies")
        return hand_out_first_flight(quic, self._loop.time())

    async def open(
        self,
        ice: IceConnection,
        peer_cert_sha256: bytes,
        peer_limits: tuple[int, int] | None = None,
    ) -> SecureChannel:
        """:func:`open_channel` with what was prepared."""
        if self._used:
            raise RuntimeError("a PreparedChannel opens one channel")
        fresh = self.fresh
        self._used = True
        quic, self._quic = self._quic, None
        if not fresh and quic is not None and self.is_client and not quic.early_datagrams:
            quic = None  # stale and not handed out: open_channel starts afresh
        return await open_channel(
            ice,
            is_client=self.is_client,
            certificate=self._certificate,
            peer_cert_sha256=peer_cert_sha256,
            queue_capacity=self._queue_capacity,
            liveness_timeout=self._liveness_timeout,
            handshake_timeout=self._handshake_timeout,
            max_message_size=self._max_message_size,
            window=self._window,
            started=quic,
            probe_path_mtu=self._probe_path_mtu,
            peer_limits=peer_limits,
        )
