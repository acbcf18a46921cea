"""Keep-alive and watchdog of every connection on an event loop (QUIC sends no keep-alives).

A PING goes out when the path has been quiet, and the connection expires when nothing
authenticated arrived for ``liveness_timeout`` seconds (see :meth:`Liveness.heard`). The
client keeps the pair alive: its PINGs feed the server's watchdog and their ACKs its own.
The server pings only when the client's PINGs went missing, so an idle connection costs one
PING and one ACK per interval, not two of each.

Idle cost: one :class:`LivenessWheel` per event loop holds a single loop timer for every
connection's keep-alive and watchdog, so a node with many idle connections wakes once per
slot, not once per connection and timer. Keep-alive checks are placed on a grid of slots
(a quarter of the interval, at most one second), rounded *down*: connections whose checks
fall in one slot are handled in one loop pass, and stay aligned. Watchdog deadlines are
exact (never rounded), so a dead path is declared at ``liveness_timeout``, not later.
A received packet only records the time (nothing is rescheduled); a connection's entry
on the wheel moves when it comes due.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import weakref
from collections.abc import Callable

#: Longest keep-alive slot of the wheel's grid, seconds.
MAX_SLOT = 1.0


class LivenessWheel:
    """One loop timer for the keep-alives and watchdogs of every connection on a loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._heap: list[tuple[float, int, Liveness]] = []
        self._order = itertools.count()
        self._handle: asyncio.TimerHandle | None = None
        self._handle_at = 0.0  # its deadline (uvloop's call_at may return a plain Handle)
        self._active = 0
        #: Times the wheel's loop timer fired (one loop wake-up each).
        self.wakeups = 0

    @property
    def watched(self) -> int:
        """Connections the wheel watches now."""
        return self._active

    @property
    def timer_armed(self) -> bool:
        """True while the wheel holds its loop timer (only while it watches something)."""
        return self._handle is not None

    def watch(self, live: Liveness, when: float) -> None:
        """Call ``live.tick`` at ``when`` (and then whenever it asks)."""
        if live.due is None:
            self._active += 1
        live.due = when
        heapq.heappush(self._heap, (when, next(self._order), live))
        self._arm()

    def unwatch(self, live: Liveness) -> None:
        """Forget ``live``; the loop timer goes once nothing is watched."""
        if live.due is None:
            return
        live.due = None
        self._active -= 1
        if self._active == 0:
            self._heap.clear()
            if self._handle is not None:
                self._handle.cancel()
                self._handle = None

    def _arm(self) -> None:
        heap = self._heap
        while heap and heap[0][2].due != heap[0][0]:  # moved or stopped since pushed
            heapq.heappop(heap)
        if not heap:
            return
        when = heap[0][0]
        handle = self._handle
        if handle is not None:
            if self._handle_at <= when:
                return  # fires first; re-arms then
            handle.cancel()
        self._handle = self._loop.call_at(when, self._fire)
        self._handle_at = when

    def _fire(self) -> None:
        self._handle = None
        self.wakeups += 1
        now = self._loop.time()
        heap = self._heap
        due: list[Liveness] = []
        while heap and heap[0][0] <= now:
            when, _, live = heapq.heappop(heap)
            if live.due == when:
                due.append(live)
        for live in due:
            if live.due is not None:  # not stopped by an earlier one's callback
                nxt = live.tick(now)
                if nxt is None:
                    self.unwatch(live)
                else:
                    live.due = nxt
                    heapq.heappush(heap, (nxt, next(self._order), live))
        self._arm()


_WHEELS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LivenessWheel] = (
    weakref.WeakKeyDictionary()
)


def wheel_of(loop: asyncio.AbstractEventLoop) -> LivenessWheel:
    """The event loop's wheel (made on first use)."""
    wheel = _WHEELS.get(loop)
    if wheel is None:
        wheel = _WHEELS[loop] = LivenessWheel(loop)
    return wheel


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
        self._wheel = wheel_of(self._loop)
        self._timeout = liveness_timeout
        # Three PINGs per liveness period: two in a row may be lost before the watchdog
        # fires, and a quiet connection wakes the loop rarely (idle CPU).
        self._interval = min(liveness_timeout / 3, 5.0)
        self._slot = min(self._interval / 4, MAX_SLOT)
        self._quiet = self._interval * (0.5 if is_client else 1.5)
        self._is_client = is_client
        self._ping = ping
        self._expire = expire
        self._last_rx = self._loop.time()
        self._next_check = self._last_rx
        #: When the wheel calls :meth:`tick` next (None: not watched).
        self.due: float | None = None
        self.keepalives_sent = 0

    @property
    def armed_timers(self) -> int:
        """Wheel entries held (1 while watching, 0 before :meth:`start` and after
        :meth:`stop`); the loop timer itself is the wheel's, shared by every connection."""
        return int(self.due is not None)

    def heard(self, now: float) -> None:
        """Authenticated traffic arrived from the peer at ``now``: a QUIC packet that
        decrypted. Anything an attacker can send without the keys (garbage, forged packets,
        path-MTU probes) must not be reported, or a spoofer could keep a dead peer alive."""
        self._last_rx = now

    def start(self) -> None:
        """Start pinging and watching (the connection is open)."""
        now = self._loop.time()
        self._last_rx = now
        self._next_check = self._on_grid(now + self._interval)
        self._wheel.watch(self, self._next_due())

    def stop(self) -> None:
        """Stop pinging and watching."""
        self._wheel.unwatch(self)

    def release(self) -> None:
        """Stop for good and drop the callbacks, so the connection that owns this watchdog
        holds no reference cycle through it and is freed as soon as it is dropped."""
        self.stop()
        self._ping = _ignore
        self._expire = _ignore

    def _on_grid(self, when: float) -> float:
        """``when`` rounded down to the wheel's keep-alive grid (a check comes early, never
        late), so connections whose checks fall in one slot share one loop wake-up."""
        return math.floor(when / self._slot) * self._slot

    def _next_due(self) -> float:
        return min(self._next_check, self._last_rx + self._timeout)

    def tick(self, now: float) -> float | None:
        """Called by the wheel at :attr:`due`: expire, or ping if quiet; the next due time
        (None: expired)."""
        if now >= self._last_rx + self._timeout:
            self._expire(f"peer silent for {self._timeout:g} s (liveness timeout)")
            return None
        if now >= self._next_check:
            pinged = now - self._last_rx >= self._quiet
            if pinged:
                self.keepalives_sent += 1
                self._ping(self.keepalives_sent)
            # the client checks once per interval; the server once the client's PINGs are
            # late, then once per interval while it pings itself
            nxt = self._last_rx + self._quiet
            if self._is_client or pinged:
                nxt = max(nxt, now + self._interval)
            grid = self._on_grid(nxt)
            self._next_check = grid if grid > now else nxt
        if self.due is None:  # stopped by the ping (the path was gone)
            return None
        return self._next_due()


def _ignore(_: object) -> None:
    """A released watchdog's callbacks."""
