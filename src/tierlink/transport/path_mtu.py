"""Path MTU probing on a nominated ICE pair, on asyncio: drives the sans-IO
:class:`~tierlink.protocol.pmtu.PathMtuProber` (its timer, its sends) and answers the peer's
probes. The QUIC pump (:mod:`tierlink.transport.quic`) owns one and applies its
:attr:`PathMtu.packet_size` to aioquic.
"""

from __future__ import annotations

import asyncio
import contextlib

from tierlink.protocol.pmtu import PathMtuProber, answer
from tierlink.transport.aioice_adapter import IceConnection
from tierlink.transport.aioquic_adapter import MAX_PACKET_SIZE


class PathMtu:
    """The packet size one side may send on its path: probed, optionally capped."""

    def __init__(self, ice: IceConnection, base: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._ice = ice
        self._base = base
        self._path_mtu = base  # largest packet the path was found to carry
        self._cap: int | None = None
        self._prober: PathMtuProber | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.probing = False

    @property
    def packet_size(self) -> int:
        """The size to send: what the path carries, within the cap."""
        return self._path_mtu if self._cap is None else min(self._path_mtu, self._cap)

    @property
    def timer_armed(self) -> bool:
        """True while a probe retry is scheduled."""
        return self._timer is not None

    def limit(self, size: int | None) -> None:
        """Cap the packet size at ``size`` (None: no cap); raises ValueError outside
        base..MAX_PACKET_SIZE."""
        if size is not None and not self._base <= size <= MAX_PACKET_SIZE:
            raise ValueError(f"packet size must be within {self._base}-{MAX_PACKET_SIZE}")
        self._cap = size

    def start(self) -> None:
        """Probe a direct pair (a relayed one keeps the base: TURN adds its own overhead)."""
        if self._ice.is_relayed or not self._ice.forbid_fragmentation():
            return
        self.probing = True
        self._prober = PathMtuProber(self._base)
        self._send(self._prober.start(self._loop.time()))

    def _send(self, probes: list[bytes]) -> None:
        try:
            for probe in probes:
                self._ice.send_nowait(probe)
        except ConnectionError:
            return  # the path is gone; the pump notices on its next send
        when = self._prober.timer if self._prober is not None else None
        if when is not None and self._timer is None:
            self._timer = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._prober is not None:
            self._send(self._prober.on_timer(self._loop.time()))

    def on_traffic(self, data: bytes) -> bool:
        """Answer a peer's probe, or apply an acknowledgement of ours; True if the path
        was found to carry larger packets."""
        reply = answer(data)
        if reply is not None:
            with contextlib.suppress(ConnectionError):
                self._ice.send_nowait(reply)
            return False
        size = self._prober.on_ack(data) if self._prober is not None else None
        if size is None:
            return False
        self._path_mtu = size
        return True

    def renewed(self, ice: IceConnection) -> PathMtu:
        """A prober for a new path on ``ice``: the base size until probed, the same cap."""
        fresh = PathMtu(ice, self._base)
        fresh._cap = self._cap
        return fresh

    def stop(self) -> None:
        """Stop probing (the connection is closing, or moved to a new path)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._prober = None
