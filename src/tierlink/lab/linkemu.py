"""The link emulator process: two TAP devices, Ethernet frames moved between them late.

Run as ``python -m tierlink.lab.linkemu --tap A --tap B --delay-ms D --jitter-ms J``. It
creates both TAP devices in its own namespace and prints ``{"ready": [A, B]}``; the lab then
moves each device into the namespace it belongs to (a TAP's file descriptor keeps working
across namespaces), so the pair is one cable between two namespaces. Every frame read from one
device is written to the other after ``D`` ms plus a jitter drawn per frame, uniform on
``[-J, +J]`` (clamped at 0). Without ``--reorder`` a frame never leaves before the one read
before it in the same direction (its departure is at least the previous one's), so the queue
of each direction is a FIFO and the timer is the earlier of the two heads; with ``--reorder``
departures are kept in a heap and frames may overtake each other.

ARP and IPv6 neighbour discovery pass at once (see :func:`is_neighbour_discovery`). Loss
and rate are not done here (nftables and TBF on the devices do them, in the kernel).

Statistics go to ``--stats FILE`` (rewritten once a second and at exit): frames moved per
direction, the peak number of frames moved in one second, and the longest queue. The process
stops on SIGTERM or after ``--max-seconds``. Only the standard library is used.
"""

from __future__ import annotations

import argparse
import fcntl
import heapq
import json
import os
import random
import select
import signal
import struct
import sys
import time
from collections import deque
from pathlib import Path
from types import FrameType
from typing import Any

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
MAX_FRAME = 65_536
#: Frames read from one device before the loop looks at the timers again.
READ_BATCH = 64
#: A direction's queue is cut at this many frames (a tail drop, counted).
MAX_QUEUE = 200_000


def is_neighbour_discovery(frame: bytes) -> bool:
    """ARP, or IPv6 neighbour/router discovery (ICMPv6 133-137 without extension headers).

    These pass undelayed: on a real WAN they are exchanged with the next hop, a short hop;
    delaying them here would add a whole path's delay to every first packet.
    """
    if frame[12:14] == b"\x08\x06":
        return True
    return (frame[12:14] == b"\x86\xdd" and len(frame) > 54 and frame[20] == 58
            and 133 <= frame[54] <= 137)


def open_tap(name: str) -> int:
    """Create (or attach to) TAP device ``name`` without packet info; non-blocking fd."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    return fd


class Direction:
    """Frames read from ``src`` waiting to be written to ``dst``."""

    def __init__(self, src: int, dst: int, reorder: bool) -> None:
        self.src, self.dst = src, dst
        self.reorder = reorder
        self.fifo: deque[tuple[float, bytes]] = deque()
        self.heap: list[tuple[float, int, bytes]] = []
        self.last = 0.0
        self.seq = 0
        self.moved = 0
        self.dropped = 0
        self.max_queue = 0

    def __len__(self) -> int:
        return len(self.heap) if self.reorder else len(self.fifo)

    def push(self, frame: bytes, due: float) -> None:
        if len(self) >= MAX_QUEUE:
            self.dropped += 1
            return
        if self.reorder:
            self.seq += 1
            heapq.heappush(self.heap, (due, self.seq, frame))
        else:
            due = max(due, self.last)
            self.last = due
            self.fifo.append((due, frame))
        self.max_queue = max(self.max_queue, len(self))

    def next_due(self) -> float | None:
        if self.reorder:
            return self.heap[0][0] if self.heap else None
        return self.fifo[0][0] if self.fifo else None

    def flush(self, now: float) -> int:
        """Write every frame that is due; returns how many."""
        n = 0
        while (due := self.next_due()) is not None and due <= now:
            frame = heapq.heappop(self.heap)[2] if self.reorder else self.fifo.popleft()[1]
            try:
                os.write(self.dst, frame)
            except (BlockingIOError, OSError):
                self.dropped += 1
                continue
            n += 1
        self.moved += n
        return n


class Emulator:
    """The event loop: read both devices, hold frames, write them when due."""

    def __init__(self, fds: tuple[int, int], delay_ms: float, jitter_ms: float,
                 reorder: bool, seed: int | None) -> None:
        self.dirs = (Direction(fds[0], fds[1], reorder), Direction(fds[1], fds[0], reorder))
        self.by_src = {d.src: d for d in self.dirs}
        self.delay = delay_ms / 1000
        self.jitter = jitter_ms / 1000
        self.rng = random.Random(seed)
        self.window_start = time.monotonic()
        self.window_count = 0
        self.peak_pps = 0

    def sample(self) -> float:
        if self.jitter <= 0:
            return self.delay
        return max(0.0, self.delay + self.rng.uniform(-self.jitter, self.jitter))

    def read(self, fd: int, now: float) -> None:
        direction = self.by_src[fd]
        for _ in range(READ_BATCH):
            try:
                frame = os.read(fd, MAX_FRAME)
            except (BlockingIOError, OSError):
                return
            if is_neighbour_discovery(frame):
                try:
                    os.write(direction.dst, frame)
                except OSError:
                    direction.dropped += 1
                continue
            direction.push(frame, now + self.sample())

    def step(self) -> None:
        """One pass: wait for input or the next due frame, read, write what is due."""
        dues = [d for d in (x.next_due() for x in self.dirs) if d is not None]
        now = time.monotonic()
        timeout = max(0.0, min(dues) - now) if dues else 1.0
        readable, _, _ = select.select(list(self.by_src), [], [], min(timeout, 1.0))
        now = time.monotonic()
        for fd in readable:
            self.read(fd, now)
        moved = sum(d.flush(time.monotonic()) for d in self.dirs)
        self.window_count += moved
        if now - self.window_start >= 1.0:
            self.peak_pps = max(self.peak_pps, round(self.window_count / (now - self.window_start)))
            self.window_start, self.window_count = now, 0

    def stats(self) -> dict[str, Any]:
        return {
            "moved": [d.moved for d in self.dirs],
            "dropped": [d.dropped for d in self.dirs],
            "max_queue": max(d.max_queue for d in self.dirs),
            "peak_pps": self.peak_pps,
        }


def _write_stats(path: Path | None, stats: dict[str, Any]) -> None:
    if path is None:
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(stats))
    tmp.replace(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tierlink.lab.linkemu")
    parser.add_argument("--tap", action="append", required=True, help="device name (two)")
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--reorder", action="store_true")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--stats", type=Path, default=None)
    parser.add_argument("--max-seconds", type=float, default=6 * 3600.0)
    args = parser.parse_args(argv)
    if len(args.tap) != 2:
        parser.error("give exactly two --tap devices")
    fds = (open_tap(args.tap[0]), open_tap(args.tap[1]))
    emu = Emulator(fds, args.delay_ms, args.jitter_ms, args.reorder, args.seed)
    running = [True]

    def stop(signum: int, frame: FrameType | None) -> None:
        running[0] = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(json.dumps({"ready": args.tap}), flush=True)
    end = time.monotonic() + args.max_seconds
    next_stats = time.monotonic() + 1.0
    while running[0] and time.monotonic() < end:
        try:
            emu.step()
        except InterruptedError:
            continue
        if time.monotonic() >= next_stats:
            _write_stats(args.stats, emu.stats())
            next_stats = time.monotonic() + 1.0
    _write_stats(args.stats, emu.stats())


if __name__ == "__main__":
    main(sys.argv[1:])
