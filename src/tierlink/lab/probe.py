"""Tiny UDP probe programs that measure a NAT's mapping and filtering (RFC 4787 / RFC 5780).

Run inside namespaces as ``python -m tierlink.lab.probe ROLE ...``:

* ``server --bind IP:PORT ...``: answers ``map`` requests with the source address it saw, and
  on a ``filter`` request sends one unsolicited datagram from *each* of its sockets to that
  source (so the client learns which sources its NAT lets through).
* ``nat --primary IP1:P1 --alt IP2:P2 --bind HOST``: mapping test (one socket toward IP1:P1,
  IP2:P1 and IP2:P2) and filtering test (a fresh socket that contacted only IP1:P1); prints one
  JSON result.
* ``hairpin-recv`` / ``hairpin-send``: does a LAN peer reach us through our public mapping?
* ``hairpin-both``: two peers send to each other's public mapping at once (behind a CGN
  and each behind its own port-restricted home NAT).

Only the standard library is used, so a probe starts fast.
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import sys
import time
from typing import Any

from tierlink.hostport import parse_hostport

EIM = "endpoint-independent"
ADM = "address-dependent"
APDM = "address-and-port-dependent"
NO_NAT = "no-nat"
EIF = "endpoint-independent"
ADF = "address-dependent"
APDF = "address-and-port-dependent"
UNKNOWN = "unknown"  # no mapping seen (nothing came back)
BLOCKED = "blocked"  # no unsolicited datagram came through


def _fmt(addr: tuple[Any, ...]) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


#: Longest delay the server accepts for a ``later`` request (seconds).
MAX_LATER = 600.0


def serve(binds: list[str], duration: float) -> None:
    """Probe server: one socket per bind address, until ``duration`` seconds have passed.

    Ops: ``map`` (answer with the source address seen), ``filter`` (one datagram from every
    socket of the same family), ``later`` (answer like ``map``, then send ``{"op": "later",
    "delay": d}`` from the same socket after each of ``delays`` seconds).
    """
    socks = []
    for b in binds:
        host, port = parse_hostport(b)
        s = socket.socket(_family(host), socket.SOCK_DGRAM)
        s.bind((host, port))
        socks.append(s)
    print(json.dumps({"ready": binds}), flush=True)
    pending: list[tuple[float, socket.socket, tuple[Any, ...], float]] = []
    end = time.monotonic() + duration
    while time.monotonic() < end:
        now = time.monotonic()
        for item in [p for p in pending if p[0] <= now]:
            pending.remove(item)
            item[1].sendto(json.dumps({"op": "later", "delay": item[3]}).encode(), item[2])
        wait = min([1.0, *(p[0] - now for p in pending)])
        readable, _, _ = select.select(socks, [], [], max(0.0, wait))
        for s in readable:
            data, src = s.recvfrom(65535)
            try:
                req = json.loads(data)
            except ValueError:
                continue
            if req.get("op") in ("map", "later"):
                reply = {"op": "map", "mapped": _fmt(src), "via": _fmt(s.getsockname())}
                s.sendto(json.dumps(reply).encode(), src)
            if req.get("op") == "later" and len(pending) < 1000:
                for d in req.get("delays", [])[:4]:
                    delay = min(float(d), MAX_LATER)
                    pending.append((time.monotonic() + delay, s, src, d))
            elif req.get("op") == "filter":
                for other in socks:
                    if other.family != s.family:
                        continue
                    msg = {"op": "filter", "from": _fmt(other.getsockname())}
                    other.sendto(json.dumps(msg).encode(), src)


def _request_map(sock: socket.socket, server: tuple[str, int]) -> str | None:
    """The address ``server`` saw our socket as (None after 5 unanswered tries)."""
    for _ in range(5):
        sock.sendto(b'{"op": "map"}', server)
        end = time.monotonic() + 0.4
        while (left := end - time.monotonic()) > 0:
            ready, _, _ = select.select([sock], [], [], left)
            if not ready:
                break
            data, src = sock.recvfrom(2048)
            if src[:2] == server:
                mapped: str = json.loads(data)["mapped"]
                return mapped
    return None


def classify_mapping(local: str, mapped: dict[str, str | None], order: list[str]) -> str:
    """RFC 5780 mapping class from the mappings seen by dest I, II (other ip), III (other both)."""
    m1, m2, m3 = (mapped[k] for k in order)
    if None in (m1, m2, m3):
        return UNKNOWN
    if m1 == local and m2 == local and m3 == local:
        return NO_NAT
    if m1 == m2:
        return EIM
    if m2 == m3:
        return ADM
    return APDM


def classify_filtering(received: list[str], primary: str, alt_ip: str) -> str:
    """Filtering class from which server sockets' unsolicited datagrams got through."""
    p_ip = parse_hostport(primary)[0]
    hosts = [parse_hostport(r)[0] for r in received]
    if alt_ip in hosts:
        return EIF
    if any(h == p_ip and r != primary for h, r in zip(hosts, received, strict=True)):
        return ADF
    if primary in received:
        return APDF
    return BLOCKED


def probe_nat(bind: str, primary: str, alt: str, listen: float = 1.0) -> dict[str, Any]:
    """Mapping and filtering test from ``bind`` against a probe server (see module doc)."""
    p_ip, p_port = parse_hostport(primary)
    a_ip, a_port = parse_hostport(alt)
    dests = [primary, _fmt((a_ip, p_port)), _fmt((a_ip, a_port))]
    s1 = socket.socket(_family(bind), socket.SOCK_DGRAM)
    s1.bind((bind, 0))
    local = _fmt(s1.getsockname())
    mapped = {d: _request_map(s1, parse_hostport(d)) for d in dests}
    s1.close()

    s2 = socket.socket(_family(bind), socket.SOCK_DGRAM)
    s2.bind((bind, 0))
    filter_mapped = _request_map(s2, (p_ip, p_port))
    received: list[str] = []
    s2.sendto(b'{"op": "filter"}', (p_ip, p_port))
    end = time.monotonic() + listen
    while (left := end - time.monotonic()) > 0:
        ready, _, _ = select.select([s2], [], [], left)
        if not ready:
            break
        data, _src = s2.recvfrom(2048)
        msg = json.loads(data)
        if msg.get("op") == "filter" and msg["from"] not in received:
            received.append(msg["from"])
    s2.close()
    sources = [primary, _fmt((p_ip, a_port)), _fmt((a_ip, p_port)), _fmt((a_ip, a_port))]
    return {
        "local": local,
        "mapped": mapped,
        "mapping": classify_mapping(local, mapped, dests),
        "filter_mapped": filter_mapped,
        "filter_received": {s: s in received for s in sources},
        "filtering": classify_filtering(received, primary, a_ip),
    }


def hairpin_recv(bind: str, server: str, wait: float) -> None:
    """Print our public mapping, then whether a datagram from a LAN peer arrives through it."""
    s = socket.socket(_family(bind), socket.SOCK_DGRAM)
    s.bind((bind, 0))
    mapped = _request_map(s, parse_hostport(server))
    print(json.dumps({"mapped": mapped, "local": _fmt(s.getsockname())}), flush=True)
    result: dict[str, Any] = {"received": False, "from": None}
    end = time.monotonic() + wait
    while (left := end - time.monotonic()) > 0:
        ready, _, _ = select.select([s], [], [], left)
        if not ready:
            break
        data, src = s.recvfrom(2048)
        if data == b"hairpin":
            result = {"received": True, "from": _fmt(src)}
            break
    print(json.dumps(result), flush=True)


def hairpin_both(bind: str, server: str, wait: float) -> None:
    """Print our public mapping, read the peer's from stdin, then send to it (10 times, 50 ms
    apart) while listening; print whether the peer's datagram arrived. Both sides sending is
    what opens port-restricted NATs in front of each end (as ICE checks do)."""
    s = socket.socket(_family(bind), socket.SOCK_DGRAM)
    s.bind((bind, 0))
    mapped = _request_map(s, parse_hostport(server))
    print(json.dumps({"mapped": mapped, "local": _fmt(s.getsockname())}), flush=True)
    peer = json.loads(sys.stdin.readline() or "{}").get("mapped")
    result: dict[str, Any] = {"received": False, "from": None}
    sent = 0
    end = time.monotonic() + wait
    while (left := end - time.monotonic()) > 0 and not result["received"]:
        if peer and sent < 10:
            s.sendto(b"hairpin", parse_hostport(peer))
            sent += 1
        ready, _, _ = select.select([s], [], [], min(left, 0.05))
        if ready:
            data, src = s.recvfrom(2048)
            if data == b"hairpin":
                result = {"received": True, "from": _fmt(src)}
    for _ in range(10 - sent):  # the peer may still be waiting for ours
        if peer:
            s.sendto(b"hairpin", parse_hostport(peer))
    print(json.dumps(result), flush=True)


def hairpin_send(bind: str, server: str, to: str) -> None:
    """Contact the server (so we have a mapping), then send to a LAN peer's public mapping."""
    s = socket.socket(_family(bind), socket.SOCK_DGRAM)
    s.bind((bind, 0))
    mapped = _request_map(s, parse_hostport(server))
    for _ in range(10):
        s.sendto(b"hairpin", parse_hostport(to))
        time.sleep(0.05)
    print(json.dumps({"mapped": mapped}), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tierlink.lab.probe")
    sub = parser.add_subparsers(dest="role", required=True)
    p = sub.add_parser("server")
    p.add_argument("--bind", action="append", required=True)
    p.add_argument("--duration", type=float, default=3600.0)
    p = sub.add_parser("nat")
    p.add_argument("--bind", required=True)
    p.add_argument("--primary", required=True)
    p.add_argument("--alt", required=True)
    p = sub.add_parser("hairpin-recv")
    p.add_argument("--bind", required=True)
    p.add_argument("--server", required=True)
    p.add_argument("--wait", type=float, default=3.0)
    p = sub.add_parser("hairpin-both")
    p.add_argument("--bind", required=True)
    p.add_argument("--server", required=True)
    p.add_argument("--wait", type=float, default=3.0)
    p = sub.add_parser("hairpin-send")
    p.add_argument("--bind", required=True)
    p.add_argument("--server", required=True)
    p.add_argument("--to", required=True)
    args = parser.parse_args(argv)
    if args.role == "server":
        serve(args.bind, args.duration)
    elif args.role == "nat":
        print(json.dumps(probe_nat(args.bind, args.primary, args.alt)), flush=True)
    elif args.role == "hairpin-recv":
        hairpin_recv(args.bind, args.server, args.wait)
    elif args.role == "hairpin-both":
        hairpin_both(args.bind, args.server, args.wait)
    else:
        hairpin_send(args.bind, args.server, args.to)


if __name__ == "__main__":
    main(sys.argv[1:])
