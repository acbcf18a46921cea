"""Probe programs for the lab's real-world presets (firewalls, timeouts, path MTU, services).

Run inside namespaces as ``python -m tierlink.lab.worldprobe ROLE ...``; each prints one JSON
line:

* ``stun --proto udp|tcp|tls --server IP:PORT [--ca FILE]``: one STUN Binding request (TLS
  verified against the lab CA, server name = its IP); ``{"ok", "mapped", "error"}``;
* ``http --to IP:PORT --path P``: one HTTP GET; ``{"ok", "status", "error"}``;
* ``idle --bind IP --server IP:PORT --delays D1,D2``: open a mapping with one probe-server
  request, stay silent, and ask the server to send back after each delay (the ``later`` op);
  ``{"mapped", "arrived": {delay: bool}}``: a NAT that dropped the idle mapping drops them;
* ``mtu --bind IP --server IP:PORT --sizes S1,S2``: probe-server requests of each IP packet
  size, sent with don't-fragment and without the kernel's path-MTU cache
  (``IP_PMTUDISC_PROBE``); ``{"answered": {size: bool}, "errors": {size: text}}``.

Only the standard library is used, so a probe starts fast; every wait is bounded.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import select
import socket
import ssl
import struct
import sys
import time
from typing import Any

from tierlink.hostport import parse_hostport

STUN_MAGIC = 0x2112A442
IP_MTU_DISCOVER = 10
IP_PMTUDISC_PROBE = 3
IPV6_MTU_DISCOVER = 23
IPV6_PMTUDISC_PROBE = 3


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _fmt(addr: tuple[Any, ...]) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _parse_stun(data: bytes, txid: bytes) -> str | None:
    """The XOR-MAPPED-ADDRESS of a Binding success response (IPv4 or IPv6), else None."""
    if len(data) < 20 or data[:2] != b"\x01\x01" or data[8:20] != txid:
        return None
    length = struct.unpack_from("!H", data, 2)[0]
    pos, end = 20, 20 + length
    while pos + 4 <= min(end, len(data)):
        kind, size = struct.unpack_from("!HH", data, pos)
        value = data[pos + 4:pos + 4 + size]
        if kind == 0x0020 and len(value) >= 8:
            port = struct.unpack_from("!H", value, 2)[0] ^ (STUN_MAGIC >> 16)
            key = struct.pack("!I", STUN_MAGIC) + txid
            raw = bytes(b ^ key[i] for i, b in enumerate(value[4:]))
            family = socket.AF_INET if value[1] == 1 else socket.AF_INET6
            return _fmt((socket.inet_ntop(family, raw), port))
        pos += 4 + (size + 3) // 4 * 4
    return None


def stun(proto: str, server: str, ca: str | None, timeout: float = 3.0) -> dict[str, Any]:
    """One STUN Binding request over ``proto`` (see the module doc)."""
    host, port = parse_hostport(server)
    txid = os.urandom(12)
    request = struct.pack("!HHI", 0x0001, 0, STUN_MAGIC) + txid
    try:
        if proto == "udp":
            with socket.socket(_family(host), socket.SOCK_DGRAM) as s:
                s.settimeout(timeout / 3)
                for _ in range(3):
                    s.sendto(request, (host, port))
                    try:
                        data = s.recv(2048)
                    except TimeoutError:
                        continue
                    return {"ok": True, "mapped": _parse_stun(data, txid), "error": None}
            return {"ok": False, "mapped": None, "error": "no answer"}
        raw = socket.create_connection((host, port), timeout=timeout)
        with raw:
            sock: socket.socket = raw
            if proto == "tls":
                ctx = ssl.create_default_context(cafile=ca)
                sock = ctx.wrap_socket(raw, server_hostname=host)
            sock.sendall(request)
            data = sock.recv(2048)
            mapped = _parse_stun(data, txid)
            return {"ok": mapped is not None, "mapped": mapped, "error": None}
    except (OSError, ssl.SSLError) as exc:
        return {"ok": False, "mapped": None, "error": f"{type(exc).__name__}: {exc}"}


def http_get(to: str, path: str, timeout: float = 3.0) -> dict[str, Any]:
    host, port = parse_hostport(to)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        status = conn.getresponse().status
        return {"ok": True, "status": status, "error": None}
    except OSError as exc:
        return {"ok": False, "status": None, "error": f"{type(exc).__name__}: {exc}"}
    finally:
        conn.close()


def _ask(sock: socket.socket, server: tuple[str, int], msg: dict[str, Any],
         wait: float) -> dict[str, Any] | None:
    """Send ``msg`` up to three times; the server's first JSON answer, or None."""
    for _ in range(3):
        sock.sendto(json.dumps(msg).encode(), server)
        ready, _, _ = select.select([sock], [], [], wait)
        if ready:
            data, _src = sock.recvfrom(2048)
            answer: dict[str, Any] = json.loads(data)
            return answer
    return None


def idle(bind: str, server: str, delays: list[float]) -> dict[str, Any]:
    """See the module doc: one socket (one mapping) per delay, since every datagram that
    arrives refreshes its mapping; bounded by the longest delay plus a few seconds."""
    target = parse_hostport(server)
    socks = []
    mapped = []
    try:
        for d in delays:
            s = socket.socket(_family(bind), socket.SOCK_DGRAM)
            socks.append(s)
            s.bind((bind, 0))
            first = _ask(s, target, {"op": "later", "delays": [d]}, 0.5)
            mapped.append(first.get("mapped") if first else None)
        arrived = {str(d): False for d in delays}
        end = time.monotonic() + max(delays) + 4.0
        while (left := end - time.monotonic()) > 0:
            ready, _, _ = select.select(socks, [], [], left)
            for s in ready:
                msg = json.loads(s.recv(2048))
                if msg.get("op") == "later":
                    arrived[str(msg["delay"])] = True
            if all(arrived.values()):
                break
    finally:
        for s in socks:
            s.close()
    return {"mapped": mapped, "arrived": arrived}


def mtu(bind: str, server: str, sizes: list[int]) -> dict[str, Any]:
    """See the module doc: which IP packet sizes reach the server (don't-fragment)."""
    host, port = parse_hostport(server)
    family = _family(host)
    headers = 48 if family == socket.AF_INET6 else 28
    answered: dict[str, bool] = {}
    errors: dict[str, str] = {}
    for size in sizes:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_PROBE)
            else:
                s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_PROBE)
            s.bind((bind, 0))
            base = len(json.dumps({"op": "map", "pad": ""}).encode())
            msg = {"op": "map", "pad": "x" * max(0, size - headers - base)}
            try:
                answered[str(size)] = _ask(s, (host, port), msg, 0.5) is not None
            except OSError as exc:
                answered[str(size)] = False
                errors[str(size)] = f"{type(exc).__name__}: {exc}"
    return {"answered": answered, "errors": errors}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tierlink.lab.worldprobe")
    sub = parser.add_subparsers(dest="role", required=True)
    p = sub.add_parser("stun")
    p.add_argument("--proto", choices=("udp", "tcp", "tls"), required=True)
    p.add_argument("--server", required=True)
    p.add_argument("--ca", default=None)
    p = sub.add_parser("http")
    p.add_argument("--to", required=True)
    p.add_argument("--path", default="/")
    p = sub.add_parser("idle")
    p.add_argument("--bind", required=True)
    p.add_argument("--server", required=True)
    p.add_argument("--delays", required=True)
    p = sub.add_parser("mtu")
    p.add_argument("--bind", required=True)
    p.add_argument("--server", required=True)
    p.add_argument("--sizes", required=True)
    args = parser.parse_args(argv)
    if args.role == "stun":
        out = stun(args.proto, args.server, args.ca)
    elif args.role == "http":
        out = http_get(args.to, args.path)
    elif args.role == "idle":
        out = idle(args.bind, args.server, [min(float(d), 600.0) for d in args.delays.split(",")])
    else:
        out = mtu(args.bind, args.server, [int(x) for x in args.sizes.split(",")])
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
