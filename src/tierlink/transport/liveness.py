"""Keep-alive and watchdog of one connection on asyncio (QUIC sends no keep-alives itself).

A PING goes out when the path has been quiet, and the connection expires when nothing
authenticated arrived for ``liveness_timeout`` seconds (see :meth:`Liveness.heard`). The
client keeps the pair alive: its PINGs feed the server's watchdog and their ACKs its own.
The server pings only when the client's PINGs went missing, so an idle connection costs one
PING and one ACK per interval, not two of each.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Liveness:
    """Calls ``ping(n)`` when the path is quiet and ``expire(reason)`` once it is dead."""

    def __init__(
        self,
        liveness_timeout: float,
        *,
        is_client: bool,
        ping: Callable[[int], None],
        expire: Callable[[str], None],
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._timeout = liveness_timeout
        # Three PINGs per liveness period: two in a row may be lost before the watchdog
        # fires, and a quiet connection wakes the loop rarely (idle CPU).
        self._interval = min(liveness_timeout / 3, 5.0)
        self._quiet = self._interval * (0.5 if is_client else 1.5)
        self._ping = ping
        self._expire = expire
        self._last_rx = self._loop.time()
        self._ping_timer: asyncio.TimerHandle | None = None
        self._live_timer: asyncio.TimerHandle | None = None
        self.keepalives_sent = 0

    @property
    def armed_timers(self) -> int:
        """Timers held on the event loop (0 before :meth:`start` and after :meth:`stop`)."""
        return (self._ping_timer is not None) + (self._live_timer is not None)

    def heard(self, now: float) -> None:
        """Authenticated traffic arrived from the peer at ``now``: a QUIC packet that
        decrypted. Anything an attacker can send without the keys (garbage, forged packets,
        path-MTU probes) must not be reported, or a spoofer could keep a dead peer alive."""
        self._last_rx = now

    def start(self) -> None:
        """Start pinging and watching (the connection is open)."""
        self._last_rx = self._loop.time()
        self._ping_timer = self._loop.call_later(self._interval, self._on_ping_timer)
        self._live_timer = self._loop.call_at(self._last_rx + self._timeout, self._on_live_timer)

    def stop(self) -> None:
        """Cancel both timers."""
        for handle in (self._ping_timer, self._live_timer):
            if handle is not None:
                handle.cancel()
        self._ping_timer = self._live_timer = None

    def release(self) -> None:
        """Stop for good and drop the callbacks, so the connection that owns this watchdog
        holds no reference cycle through it and is freed as soon as it is dropped."""
        self.stop()
        self._ping = _ignore
        self._expire = _ignore

    def _on_ping_timer(self) -> None:
        self._ping_timer = None
        if self._loop.time() - self._last_rx >= self._quiet:
            self.keepalives_sent += 1
            self._ping(self.keepalives_sent)
        if self._live_timer is not None:  # not stopped by the ping
            self._ping_timer = self._loop.call_later(self._interval, self._on_ping_timer)

    def _on_live_timer(self) -> None:
        self._live_timer = None
        deadline = self._last_rx + self._timeout
        if self._loop.time() >= deadline:
            self.stop()
            self._expire(f"peer silent for {self._timeout:g} s (liveness timeout)")
        else:
            self._live_timer = self._loop.call_at(deadline, self._on_live_timer)


def _ignore(_: object) -> None:
    """A released watchdog's callbacks."""
