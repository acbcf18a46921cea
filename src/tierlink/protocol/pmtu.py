"""Path MTU probing on the ICE path (sans-IO): how large a QUIC packet the pair carries.

QUIC starts with 1200-byte packets, which fit every path, TURN overhead included. A direct
path usually carries more: 1452 bytes of UDP payload on 1500-byte Ethernet (IPv6; 1472 over
IPv4), 8952 with jumbo frames, up to 65 507 on loopback. A packet is aioquic's unit of work
(tens of microseconds of Python per packet on each side), so larger packets carry more
messages per unit of CPU: on loopback 16 KB packets move ~2.5x the 1 KiB messages of 1200-byte
ones. Packetization-layer PMTU discovery (RFC 8899, as QUIC stacks such as quinn do it):

* a probe is one datagram of exactly the probed size:
  ``PROBE (0x8a) || nonce (16 B) || zero padding``;
* the peer answers every probe with ``PROBE_ACK (0x8b) || nonce || received length (u32)``;
* every size above the current one is probed at once; the largest size acknowledged with
  its own nonce and its full length becomes the packet size; unanswered probes are retried
  (a lost probe is not proof of a small MTU) up to ``attempts`` times, then given up.

Both first bytes lie in 0x80-0xbf, which is neither STUN (0-3) nor QUIC (every QUIC packet
sets the fixed bit 0x40), so the pump tells probes from QUIC by their first byte. Probes go
out with the don't-fragment bit set (see :meth:`tierlink.transport.aioice_adapter.IceConnection.
forbid_fragmentation`), so a too-large probe is dropped on the way instead of arriving in
fragments. The nonce keeps an off-path sender from faking an acknowledgement.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence

PROBE = 0x8A
PROBE_ACK = 0x8B
NONCE_SIZE = 16
_ACK = struct.Struct(">B16sI")
#: Sizes tried above the base (UDP payload bytes): aioquic's largest packet (its stream
#: frames carry 2-byte lengths, so a packet never holds more than 16 383 bytes of frame),
#: jumbo-frame Ethernet, and 1500-byte Ethernet over IPv6.
DEFAULT_SIZES = (16_383, 8_952, 1_452)
DEFAULT_ATTEMPTS = 3
DEFAULT_INTERVAL = 0.5


def is_probe_traffic(data: bytes) -> bool:
    """True for a probe or probe acknowledgement (never a QUIC or STUN datagram)."""
    return bool(data) and data[0] in (PROBE, PROBE_ACK)


def answer(data: bytes) -> bytes | None:
    """The acknowledgement to send back for a received probe; None for anything else."""
    if len(data) < 1 + NONCE_SIZE or data[0] != PROBE:
        return None
    return _ACK.pack(PROBE_ACK, data[1 : 1 + NONCE_SIZE], len(data))


class PathMtuProber:
    """Finds the largest datagram the path carries, one side's sending direction.

    Drive it with :meth:`start`, :meth:`on_timer` at :attr:`timer`, and :meth:`on_ack`
    for every received acknowledgement; send what they return.
    """

    def __init__(
        self,
        base: int,
        sizes: Sequence[int] = DEFAULT_SIZES,
        *,
        attempts: int = DEFAULT_ATTEMPTS,
        interval: float = DEFAULT_INTERVAL,
    ) -> None:
        if base < 1 + NONCE_SIZE or attempts < 1 or interval <= 0:
            raise ValueError("base must hold a probe header; attempts and interval > 0")
        self.size = base
        self._sizes = sorted({s for s in sizes if s > base}, reverse=True)
        self._attempts = attempts
        self._interval = interval
        self._tries = dict.fromkeys(self._sizes, 0)
        self._pending: dict[bytes, int] = {}  # nonce -> probed size
        self.timer: float | None = None

    @property
    def done(self) -> bool:
        """True once nothing is left to probe."""
        return not self._unsettled()

    def _unsettled(self) -> list[int]:
        return [s for s in self._sizes if s > self.size and self._tries[s] < self._attempts]

    def _probes(self, now: float) -> list[bytes]:
        out = []
        for size in self._unsettled():
            self._tries[size] += 1
            nonce = os.urandom(NONCE_SIZE)
            self._pending[nonce] = size
            out.append(bytes((PROBE,)) + nonce + bytes(size - 1 - NONCE_SIZE))
        self.timer = now + self._interval if out else None
        return out

    def start(self, now: float) -> list[bytes]:
        """The first round of probes (one per size above the current one)."""
        return self._probes(now)

    def on_timer(self, now: float) -> list[bytes]:
        """Retry the sizes still unanswered; the timer stops when none is left."""
        if self.timer is None or now < self.timer:
            return []
        self._pending.clear()  # late answers to earlier rounds no longer count
        return self._probes(now)

    def on_ack(self, data: bytes) -> int | None:
        """Handle an acknowledgement; the new (larger) packet size, or None."""
        if len(data) != _ACK.size or data[0] != PROBE_ACK:
            return None
        _, nonce, received = _ACK.unpack(data)
        size = self._pending.pop(nonce, None)
        if size is None or received != size or size <= self.size:
            return None
        self.size = size
        if self.done:
            self.timer = None
            self._pending.clear()
        return size
