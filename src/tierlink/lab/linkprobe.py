"""UDP programs that measure an emulated link: RTT/jitter/loss by echo, and packet-rate capacity.

Run inside namespaces as ``python -m tierlink.lab.linkprobe ROLE ...``; each prints one JSON
line when ready (servers) or done (clients):

* ``echo --bind IP:PORT``: sends every datagram back to its source;
* ``rtt --to IP:PORT --count N --interval S``: N numbered echo requests, one per S seconds,
  then waits for late replies; prints the RTTs (ms), how many came back, and how many came
  back after a later-numbered one (``reordered``);
* ``sink --bind IP:PORT``: counts datagrams per ``step`` tag, prints the counts on SIGTERM
  or after ``--duration``;
* ``flood --to IP:PORT --rates R1,R2,.. --seconds S``: S seconds at each rate (datagrams/s),
  tagged by step, prints what it sent.

Only the standard library is used, so a probe starts fast. Every run is bounded in count and
time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import select
import signal
import socket
import struct
import sys
import time
from typing import Any

from tierlink.hostport import parse_hostport

_RTT = struct.Struct("!Id")  # sequence number, send time
_FLOOD = struct.Struct("!II")  # step, sequence number


def _socket(host: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.socket(family, socket.SOCK_DGRAM)


def echo(bind: str, duration: float) -> None:
    host, port = parse_hostport(bind)
    s = _socket(host)
    s.bind((host, port))
    print(json.dumps({"ready": bind}), flush=True)
    end = time.monotonic() + duration
    while (left := end - time.monotonic()) > 0:
        ready, _, _ = select.select([s], [], [], min(left, 1.0))
        if ready:
            data, src = s.recvfrom(2048)
            s.sendto(data, src)


def _warm_up(s: socket.socket, wait: float) -> None:
    """One echo (up to 5 tries) before measuring: neighbour caches and conntrack get set up,
    and the measurement sees a path in steady state."""
    for _ in range(5):
        s.send(_RTT.pack(0xFFFFFFFF, 0.0))
        ready, _, _ = select.select([s], [], [], wait)
        if ready:
            try:
                s.recv(2048)
            except ConnectionRefusedError:
                continue
            return


def rtt(to: str, count: int, interval: float, wait: float, size: int) -> dict[str, Any]:
    """Numbered echo requests; RTT of each reply, by sequence number (duplicates ignored)."""
    host, port = parse_hostport(to)
    s = _socket(host)
    s.connect((host, port))
    pad = b"\0" * max(0, size - _RTT.size)
    _warm_up(s, wait)
    rtts: dict[int, float] = {}
    highest, reordered = -1, 0
    start = time.monotonic()
    sent = 0
    end = start + count * interval + wait
    while (now := time.monotonic()) < end:
        if sent < count and now >= start + sent * interval:
            s.send(_RTT.pack(sent, now) + pad)
            sent += 1
            continue
        next_send = start + sent * interval if sent < count else end
        ready, _, _ = select.select([s], [], [], max(0.0, min(next_send, end) - now))
        if ready:
            try:
                data = s.recv(2048)
            except ConnectionRefusedError:
                continue
            seq, t0 = _RTT.unpack_from(data)
            if seq == 0xFFFFFFFF or seq in rtts:
                continue
            rtts[seq] = (time.monotonic() - t0) * 1000
            reordered += seq < highest
            highest = max(highest, seq)
    return {"sent": sent, "received": len(rtts), "reordered": reordered,
            "rtt_ms": [round(v, 3) for v in rtts.values()]}


def sink(bind: str, duration: float) -> None:
    host, port = parse_hostport(bind)
    s = _socket(host)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind((host, port))
    counts: dict[int, int] = {}
    stop = [False]

    def on_term(signum: int, frame: object) -> None:
        stop[0] = True

    signal.signal(signal.SIGTERM, on_term)
    print(json.dumps({"ready": bind}), flush=True)
    end = time.monotonic() + duration
    while not stop[0] and (left := end - time.monotonic()) > 0:
        ready, _, _ = select.select([s], [], [], min(left, 0.2))
        if not ready:
            continue
        for _ in range(256):
            try:
                data = s.recv(2048, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            step = _FLOOD.unpack_from(data)[0]
            counts[step] = counts.get(step, 0) + 1
    print(json.dumps({"received": {str(k): v for k, v in sorted(counts.items())}}), flush=True)


def flood(to: str, rates: list[int], seconds: float, size: int) -> dict[str, Any]:
    """``seconds`` at each rate, paced in 1 ms slots; a short pause between steps."""
    host, port = parse_hostport(to)
    s = _socket(host)
    s.connect((host, port))
    pad = b"\0" * max(0, size - _FLOOD.size)
    sent: list[int] = []
    for step, rate in enumerate(rates):
        n = 0
        total = int(rate * seconds)
        start = time.monotonic()
        while n < total:
            due = int((time.monotonic() - start) * rate) + 1
            while n < min(due, total):
                with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
                    s.send(_FLOOD.pack(step, n) + pad)
                n += 1
            time.sleep(0.001)
        sent.append(n)
        time.sleep(0.5)  # let the step drain before the next one
    return {"sent": sent, "rates": rates}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tierlink.lab.linkprobe")
    sub = parser.add_subparsers(dest="role", required=True)
    p = sub.add_parser("echo")
    p.add_argument("--bind", required=True)
    p.add_argument("--duration", type=float, default=600.0)
    p = sub.add_parser("rtt")
    p.add_argument("--to", required=True)
    p.add_argument("--count", type=int, default=200)
    p.add_argument("--interval", type=float, default=0.02)
    p.add_argument("--wait", type=float, default=2.0)
    p.add_argument("--size", type=int, default=100)
    p = sub.add_parser("sink")
    p.add_argument("--bind", required=True)
    p.add_argument("--duration", type=float, default=120.0)
    p = sub.add_parser("flood")
    p.add_argument("--to", required=True)
    p.add_argument("--rates", required=True, help="comma-separated datagrams/s")
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--size", type=int, default=100)
    args = parser.parse_args(argv)
    if args.role == "echo":
        echo(args.bind, args.duration)
    elif args.role == "rtt":
        out = rtt(args.to, min(args.count, 100_000), args.interval, args.wait, args.size)
        print(json.dumps(out), flush=True)
    elif args.role == "sink":
        sink(args.bind, args.duration)
    else:
        rates = [int(r) for r in args.rates.split(",")]
        print(json.dumps(flood(args.to, rates, args.seconds, args.size)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
