"""The open secure channel on asyncio: :class:`SecureChannel`.

It owns two components and connects them: the channel protocol
(:class:`~tierlink.protocol.channel.ChannelProtocol`, sans-IO: greeting, message ids, acks,
window, backlog) and the QUIC pump (:class:`~tierlink.transport.quic.QuicPump`: aioquic over
the ICE pair, timers, keep-alive, path MTU). Transport events go from the pump into the
protocol; the protocol's commands go to the pump; its channel events resolve send futures
(:class:`~tierlink.transport.send_futures.SendFutures`) and fill the receive queues
(:class:`~tierlink.transport.recv_queue.RecvQueue`).

Reliable messages are acknowledged by the receiving *channel* once they are in its receive
queue, so ``await send()`` returns a message id only then. Acks are cumulative and written
once per flush. Datagrams are unreliable and go to a drop-oldest queue.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from tierlink.errors import ConnectionClosed
from tierlink.protocol.channel import LOCAL_CLOSE_REASON, ChannelProtocol
from tierlink.protocol.channel_events import (
    ChannelClosed,
    ChannelOpened,
    CloseConnection,
    DatagramDelivered,
    MessageReceived,
    MessagesAcknowledged,
    MessagesSent,
    ProtocolViolation,
    SendDatagram,
    TransportEvent,
    WriteStream,
)
from tierlink.transport.aioice_adapter import IceConnection
from tierlink.transport.aioquic_adapter import PinnedQuicConnection
from tierlink.transport.certs import LocalCertificate
from tierlink.transport.channel_settings import ChannelSettings
from tierlink.transport.quic import QuicPump
from tierlink.transport.quic_setup import quic_configuration
from tierlink.transport.recv_queue import RecvQueue
from tierlink.transport.send_futures import SendFutures

log = logging.getLogger(__name__)


class SecureChannel:
    """An authenticated, encrypted channel to one peer: reliable messages and datagrams.

    Create it with :func:`tierlink.transport.channel.open_channel`. Every method runs on the
    event loop that opened it.
    """

    def __init__(
        self,
        ice: IceConnection,
        *,
        is_client: bool,
        certificate: LocalCertificate,
        peer_cert_sha256: bytes,
        settings: ChannelSettings,
        core: ChannelProtocol,
        started: PinnedQuicConnection | None = None,
    ) -> None:
        """``core``: the channel protocol of this side, created with ``settings`` and not
        opened yet (a prepared callee's has already written its HELLO into ``started``)."""
        self._loop = asyncio.get_running_loop()
        self._sends = SendFutures()
        self._core = core
        core.set_withdrawn(self._sends.withdrawn)
        config = quic_configuration(
            is_client=is_client,
            certificate=certificate,
            liveness_timeout=settings.liveness_timeout,
            window=settings.window,
        )
        self._pump = QuicPump(
            ice,
            self,
            config=config,
            peer_cert_sha256=peer_cert_sha256,
            liveness_timeout=settings.liveness_timeout,
            started=started,
            probe_path_mtu=settings.probe_path_mtu,
        )
        self.is_client = is_client
        self.peer_cert_sha256 = peer_cert_sha256
        self._inbox: RecvQueue[bytes] = RecvQueue(settings.queue_capacity)
        self._datagrams: RecvQueue[bytes] = RecvQueue(settings.queue_capacity)
        self._datagrams_send_dropped = 0

    # -- state ------------------------------------------------------------------------------
    @property
    def max_message_size(self) -> int:
        """Largest reliable message: the smaller of ours and the peer's limit."""
        return self._core.max_message_size

    @property
    def window(self) -> int:
        """Unacknowledged payload bytes the sender may have in flight."""
        return self._core.window

    @property
    def in_flight_bytes(self) -> int:
        """Payload bytes sent and not yet acknowledged."""
        return self._core.in_flight_bytes

    @property
    def peak_in_flight_bytes(self) -> int:
        """The most payload bytes ever unacknowledged at once."""
        return self._core.peak_in_flight_bytes

    @property
    def backlog_messages(self) -> int:
        """Sends waiting for the window."""
        return self._core.backlog_messages

    @property
    def queued_messages(self) -> int:
        """Received messages in the receive queue, not read yet."""
        return len(self._inbox)

    @property
    def held_messages(self) -> int:
        """Received messages held back, unacknowledged, because the receive queue is full."""
        return self._core.held_messages

    @property
    def queue_capacity(self) -> int:
        """Messages (and, separately, datagrams) the receive queues hold."""
        return self._inbox.capacity

    @property
    def hello_received(self) -> bool:
        """True once the peer's HELLO arrived."""
        return self._core.hello_received

    @property
    def closed(self) -> bool:
        """True once the channel is closed (locally, by the peer, or by a failure)."""
        return self._pump.closed

    @property
    def close_reason(self) -> str | None:
        """Why the channel closed (None while open)."""
        return self._pump.close_reason

    @property
    def max_packet_size(self) -> int:
        """The largest QUIC packet sent on this path now (1200 until probing found more)."""
        return self._pump.max_packet_size

    @property
    def path_probing(self) -> bool:
        """True once path MTU probing started (direct pair, don't-fragment set)."""
        return self._pump.path_probing

    @property
    def smoothed_rtt(self) -> float:
        """QUIC's smoothed round-trip time estimate, seconds."""
        return self._pump.smoothed_rtt

    @property
    def keepalives_sent(self) -> int:
        """Keep-alive PINGs sent because the path was quiet."""
        return self._pump.keepalives_sent

    @property
    def unsent_datagrams(self) -> int:
        """Datagrams queued and not yet sent (the congestion window was full)."""
        return self._pump.unsent_datagrams

    @property
    def armed_timers(self) -> int:
        """Timers and callbacks the channel holds on the event loop (0 once closed)."""
        return self._pump.armed_timers

    @property
    def stats(self) -> dict[str, int]:
        """Counters: messages/bytes sent (acked) and received, datagrams, drops, window."""
        out = dict(self._core.stats)
        out["datagrams_send_dropped"] = self._datagrams_send_dropped
        out["datagrams_dropped"] = self._datagrams.dropped
        out["in_flight_bytes"] = self._core.in_flight_bytes
        out["peak_in_flight_bytes"] = self._core.peak_in_flight_bytes
        out["max_packet_size"] = self.max_packet_size
        return out

    def limit_packet_size(self, size: int | None) -> None:
        """Send packets of at most ``size`` bytes (at least 1200); None: as large as the
        probed path carries. For paths that lose large packets without telling."""
        self._pump.limit_packet_size(size)

    def watch_path(self, on_suspect: Callable[[str], None] | None) -> None:
        """Call ``on_suspect("unanswered")`` whenever the open path looks dead."""
        self._pump.path_watch.on_suspect = on_suspect

    def switch_path(self, ice: IceConnection) -> int:
        """Continue over the connected ``ice`` (see :meth:`QuicPump.switch_path`)."""
        return self._pump.switch_path(ice)

    async def complete_handshake(self, timeout: float) -> None:
        """Run the QUIC handshake over the ICE path; HandshakeFailed after ``timeout`` s,
        on a certificate that is not the pinned one, or when the peer rejects ours."""
        await self._pump.start(timeout)

    async def wait_closed(self) -> None:
        """Wait until the channel is closed, for whatever reason."""
        await self._pump.wait_closed()

    # -- sending ----------------------------------------------------------------------------
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
            if fut.cancelled():  # withdraw it now if it still waits for the window
                self._withdraw(fut)

    def submit(self, data: bytes) -> asyncio.Future[int]:
        """Queue one reliable message now; the future gets its id once the peer queued it.

        The pipelined form of :meth:`send` (no task per message): messages go out in call
        order as the window allows and wait in memory until then, so keep the number of
        unfinished futures bounded. Cancelling a future before its message went out
        withdraws the message. Raises like :meth:`send`; the future fails with
        ConnectionClosed if the channel closes first.
        """
        result = self._core.send_message(data)
        fut: asyncio.Future[int] = self._loop.create_future()
        if isinstance(result, int):
            self._sends.in_flight[result] = fut
            self._pump.kick()  # its bytes are written at the flush, with every other send
        else:
            self._sends.queued[result.ticket] = fut
        return fut

    def _withdraw(self, fut: asyncio.Future[int]) -> None:
        """A cancelled send still waiting for the window is never sent; the next ones go."""
        ticket = self._sends.forget(fut)
        if ticket is not None:
            self._core.withdraw(ticket)
            self._apply()

    def send_datagram(self, data: bytes) -> None:
        """Send one unreliable QUIC DATAGRAM (at most DATAGRAM_MAX_PAYLOAD bytes)."""
        self._core.send_datagram(data)
        self._run_commands()

    # -- receiving --------------------------------------------------------------------------
    async def recv(self, timeout: float | None = None) -> bytes | None:
        """Next reliable message; None after ``timeout`` s (0: at once, None: forever)."""
        item = self._inbox.get_nowait()  # no coroutine while messages wait
        if item is None:
            item = await self._inbox.get(timeout)
        if item is not None:
            self._core.message_consumed()
            self._apply()
        return item

    async def recv_datagram(self, timeout: float | None = None) -> bytes | None:
        """Next datagram; None after ``timeout`` s (0: at once, None: forever)."""
        return await self._datagrams.get(timeout)

    # -- closing ----------------------------------------------------------------------------
    async def close(self, reason: str | None = None) -> None:
        """Close the channel; every waiter gets ConnectionClosed (saying ``reason``, if
        given). The ICE stays open."""
        self._core.close(reason or LOCAL_CLOSE_REASON)
        self._apply()

    async def __aenter__(self) -> SecureChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<SecureChannel {'client' if self.is_client else 'server'} {state}>"

    # -- the pump's listener ----------------------------------------------------------------
    def transport_event(self, event: TransportEvent) -> None:
        """From the pump: feed the protocol, then carry out what it asks for."""
        self._core.handle_event(event)
        self._apply()

    def transport_events(self, events: list[TransportEvent]) -> None:
        """From the pump: feed the protocol every event, then carry out what it asks for."""
        handle = self._core.handle_event
        for event in events:
            handle(event)
        self._apply()

    def keep_reading(self) -> bool:
        """Received datagrams wait in a drop-oldest queue: once it is half full, the
        application gets the loop before another packet (up to ~15 of them) is read."""
        return len(self._datagrams) < self._datagrams.capacity // 2

    def before_flush(self) -> None:
        """One cumulative ACK for every message queued since the last flush."""
        self._core.write_ack()
        self._run_commands()

    # -- carrying out -----------------------------------------------------------------------
    def _apply(self) -> None:
        self._run_commands()
        self._dispatch_events()

    def _run_commands(self) -> None:
        pump = self._pump
        for command in self._core.pop_commands():
            if type(command) is WriteStream:
                pump.write_stream(command.stream_id, command.data, command.end_stream)
            elif isinstance(command, SendDatagram):
                self._datagrams_send_dropped += pump.send_datagram(command.data)
            elif isinstance(command, CloseConnection):
                pump.close(command.reason, error_code=command.error_code,
                           peer_reason=command.peer_reason)

    def _dispatch_events(self) -> None:
        for event in self._core.pop_events():
            kind = type(event)
            if kind is MessageReceived:
                self._inbox.offer(event.data)  # type: ignore[union-attr]
                self._pump.kick()  # its ACK leaves with the next flush
            elif kind is DatagramDelivered:
                self._datagrams.offer(event.data)  # type: ignore[union-attr]
            elif kind is MessagesAcknowledged:
                self._sends.acknowledged(event.first_id, event.last_id)  # type: ignore[union-attr]
            elif kind is MessagesSent:
                self._sends.written(event.first_id, event.tickets)  # type: ignore[union-attr]
            elif isinstance(event, ChannelOpened):
                self._pump.mark_ready()
            elif isinstance(event, ProtocolViolation):
                log.debug("closing the channel: the peer broke the protocol: %s", event.detail)
            elif isinstance(event, ChannelClosed):
                self._fail_all(event.reason)

    def _fail_all(self, reason: str) -> None:
        closed = ConnectionClosed(reason)
        self._sends.fail(closed)
        self._inbox.close(closed)
        self._datagrams.close(closed)

