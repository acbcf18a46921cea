"""The channel's greeting, sans-IO: our HELLO once the keys exist, the peer's HELLO checked.

A channel opens only when the QUIC handshake completed *and* the peer's HELLO proved this
dial (:class:`~tierlink.wire.channel_frames.ChannelBinding` over the TLS exporter); limits
that came signed with the offer or answer must be the ones that HELLO repeats. Used by
:class:`~tierlink.protocol.channel.ChannelProtocol`, which owns the streams and events.
"""

from __future__ import annotations

from tierlink.wire.channel_frames import (
    PROTOCOL_VERSION,
    TAG_CONTROL,
    ChannelBinding,
    Hello,
    ProtocolError,
    encode_hello,
)


class Greeting:
    """One side's HELLO exchange: what to send, and whether the peer has proven the dial."""

    def __init__(self, *, is_client: bool, binding: ChannelBinding, max_message_size: int,
                 window: int, peer_limits: tuple[int, int] | None) -> None:
        self.is_client = is_client
        self._binding = binding
        self._max_message_size = max_message_size
        self._window = window
        self._peer_limits = peer_limits
        self.exporter: bytes | None = None  # set once the keys exist: we greeted
        self.handshake_done = False
        self.hello_received = False
        self.proven: Hello | None = None  # the peer's HELLO, its proof verified

    @property
    def ready(self) -> bool:
        """The handshake completed and the peer proved this dial: the channel may open."""
        return self.handshake_done and self.proven is not None

    def on_keys(self, exporter: bytes) -> bytes | None:
        """The connection's keys exist: our control stream's first bytes (tag and HELLO),
        or None when we greeted already (a prepared callee's pump announces keys again)."""
        if self.exporter is not None:
            if exporter != self.exporter:
                raise ProtocolError("the connection's exporter value changed")
            return None
        self.exporter = exporter
        proof = self._binding.proof(self.is_client, exporter)
        return TAG_CONTROL + encode_hello(
            Hello(PROTOCOL_VERSION, self._max_message_size, self._window, proof))

    def on_handshake_completed(self) -> None:
        """The QUIC handshake completed (once, after the keys)."""
        if self.handshake_done:
            raise ProtocolError("second handshake completion")
        if self.exporter is None:
            raise ProtocolError("handshake completed before the keys were announced")
        self.handshake_done = True

    def on_hello(self, hello: Hello) -> bool:
        """The peer's HELLO: True if it proves this dial, False if the binding fails (a
        failed handshake); ProtocolError for anything else wrong with it."""
        if self.hello_received:
            raise ProtocolError("second HELLO")
        self.hello_received = True
        if hello.version != PROTOCOL_VERSION:
            raise ProtocolError(
                f"peer speaks channel protocol {hello.version}, we speak {PROTOCOL_VERSION}"
            )
        limits = self._peer_limits
        if limits is not None and (hello.max_message_size, hello.window) != tuple(limits):
            raise ProtocolError("the peer's HELLO disagrees with the limits it signaled")
        if self.exporter is None:
            raise ProtocolError("HELLO before the connection's keys")
        if not self._binding.verify(not self.is_client, self.exporter, hello.proof):
            return False
        self.proven = hello
        return True
