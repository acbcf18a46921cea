"""QUIC core x kernel I/O at MTU 1500: aioquic 1.7.2 vs qh3 2.1.0 over a real UDP socket.

Two processes (sender = QUIC client, receiver = QUIC server, separate interpreters) in a
fresh network namespace whose loopback has MTU 1500 (``tierlink.bench.netns``), default
asyncio loop, one UDP socket per side on 127.0.0.1. A minimal sans-IO pump: datagrams ->
``receive_datagram``; after each read (batch) -> events -> ``datagrams_to_send`` -> send;
the core's timer via ``loop.call_at``. No tierlink channel, no aioice: an upper bound.

I/O variants:
  plain  asyncio DatagramProtocol (one datagram per loop pass), transport.sendto per datagram
  batch  the same, the callback also reading what else waits on a dup (tierlink's BatchReader)
  gso    loop.add_reader + recvmsg with UDP_GRO (segments split; qh3: receive_gro_buffer),
         sendmsg with UDP_SEGMENT per run of equal-size datagrams
Workloads: ``bulk`` 64 KiB messages on one stream (MB/s), ``msg1k`` 1 KiB messages, each its
own send_stream_data, pipelined, the receiver taking each (msg/s); the sender keeps at most
WINDOW bytes ahead of the receiver's credit (sent back on the same stream). ``raw``: 1 KiB
datagrams without QUIC on the same socket variant, unpaced and paced (best rate < 1 % loss).
CPU per side from getrusage over the measured window.

Usage (root; run it under ``flock /tmp/tools/bench.lock``):
  PYTHONPATH=src:/tmp/qh3stack-lib python docs/quic-core/stack_bench.py [--rounds 3]
      [--seconds 3] [--out docs/quic-core/stack_results.jsonl]
One JSON line per measurement is appended to --out; summarize with ``--summary FILE``.
``STACK_BENCH_SOCKBUF=0`` keeps the kernel's default socket buffers (a diagnostic).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import resource
import socket
import ssl
import statistics
import struct
import subprocess
import sys
from typing import Any

PACKET = 1452
CID_LEN = 8
WINDOW = 1 << 20  # bytes the sender may be ahead of the receiver application
CREDIT_STEP = 64 << 10  # the receiver returns credit every this many bytes
WARMUP_S = 0.5
#: SO_RCVBUF/SO_SNDBUF asked for (tierlink's SOCKET_BUFFER); 0 keeps the kernel default
SOCK_BUF = int(os.environ.get("STACK_BENCH_SOCKBUF", 2 << 20))
RECV_BATCH = 64
SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
RAW_SIZE = 1024
HERE = os.path.abspath(__file__)


def core_stats(lib: str, conn: Any) -> dict[str, Any]:
    """Congestion state at the end of a run (private attributes; diagnostics only)."""
    try:
        if lib == "qh3":
            c = conn._core
            return {"cwnd": c.congestion_window, "in_flight": c.bytes_in_flight,
                    "srtt_ms": 1e3 * (c.smoothed_rtt or 0), "lost": c.loss_total,
                    "pto": c.pto_total}
        loss = conn._loss
        return {"cwnd": loss._cc.congestion_window, "in_flight": loss.bytes_in_flight,
                "srtt_ms": 1e3 * loss._rtt_smoothed}
    except AttributeError as exc:
        return {"stats_error": str(exc)}


def cpu() -> tuple[float, float]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime, ru.ru_stime


# ---------------------------------------------------------------- QUIC cores


def make_core(lib: str, is_client: bool, first: bytes | None = None) -> tuple[Any, Any]:
    """A client (or a server for the Initial ``first``) of ``lib``; its events module."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tierlink")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    common = dict(is_client=is_client, alpn_protocols=["tierlink/1"], verify_mode=ssl.CERT_NONE,
                  max_datagram_size=PACKET, max_datagram_frame_size=65536, idle_timeout=30,
                  connection_id_length=CID_LEN, max_data=64 << 20, max_stream_data=32 << 20)
    if lib == "aioquic":
        from aioquic import tls
        from aioquic.buffer import Buffer
        from aioquic.quic import events
        from aioquic.quic.configuration import QuicConfiguration
        from aioquic.quic.connection import QuicConnection
        from aioquic.quic.packet import pull_quic_header
        cfg = QuicConfiguration(certificate=cert, private_key=key, **common)
    else:
        from qh3 import tls
        from qh3._hazmat import Buffer
        from qh3.quic import events
        from qh3.quic.configuration import QuicConfiguration
        from qh3.quic.connection import QuicConnection
        from qh3.quic.packet import pull_quic_header
        cfg = QuicConfiguration(probe_datagram_size=False, **common)
        cfg.load_cert_chain(
            cert.public_bytes(serialization.Encoding.PEM) + b"\n" + key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption()))
    odcid = None
    if first is not None:
        odcid = pull_quic_header(Buffer(data=first), host_cid_length=CID_LEN).destination_cid
    conn = QuicConnection(configuration=cfg, original_destination_connection_id=odcid)
    if lib == "aioquic":  # X25519 only, as tierlink offers
        orig_init = conn._initialize

        def init(peer_cid: bytes) -> None:
            orig_init(peer_cid)
            conn.tls._supported_groups = [tls.Group.X25519]
        conn._initialize = init
    else:
        orig_create = conn._create_tls

        def create(*a: Any, **k: Any) -> Any:
            bridge = orig_create(*a, **k)
            bridge.tls._supported_groups = [tls.Group.X25519]
            return bridge
        conn._create_tls = create
    return conn, events


# ---------------------------------------------------------------- socket I/O variants


class Io:
    """One UDP socket read and written the way ``variant`` says; ``on_datagrams(list, addr,
    gro_buffer_or_None, segment)`` gets every read batch."""

    def __init__(self, variant: str, sock: socket.socket, on_datagrams: Any) -> None:
        self.variant, self.sock, self.on = variant, sock, on_datagrams
        self.loop = asyncio.get_running_loop()
        self.transport: Any = None
        self.rx = self.tx = self.send_calls = self.recv_calls = self.send_dropped = 0
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            if SOCK_BUF:
                sock.setsockopt(socket.SOL_SOCKET, opt, SOCK_BUF)
        sock.setblocking(False)
        self.dup = None
        if variant == "batch":
            self.dup = sock.dup()
            self.dup.setblocking(False)
        if variant == "gso":
            sock.setsockopt(SOL_UDP, UDP_GRO, 1)
            self.loop.add_reader(sock.fileno(), self._readable_gro)

    async def start(self) -> None:
        if self.variant == "gso":
            return
        io = self

        class Proto(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                io._received(data, addr)

        self.transport, _ = await self.loop.create_datagram_endpoint(Proto, sock=self.sock)

    def _received(self, data: bytes, addr: Any) -> None:
        batch = [data]
        self.recv_calls += 1
        if self.dup is not None:
            recvfrom = self.dup.recvfrom
            for _ in range(RECV_BATCH - 1):
                try:
                    d, _a = recvfrom(65536)
                except (BlockingIOError, InterruptedError):
                    break
                batch.append(d)
                self.recv_calls += 1
        self.rx += len(batch)
        self.on(batch, addr, None, 0)

    def _readable_gro(self) -> None:
        recvmsg, space = self.sock.recvmsg, socket.CMSG_SPACE(4)
        for _ in range(RECV_BATCH):
            try:
                data, anc, _flags, addr = recvmsg(65536, space)
            except (BlockingIOError, InterruptedError):
                return
            self.recv_calls += 1
            seg = 0
            for level, kind, cdata in anc:
                if level == SOL_UDP and kind == UDP_GRO:
                    seg = struct.unpack("=i", cdata[:4])[0]
            if seg and len(data) > seg:
                parts = [data[i:i + seg] for i in range(0, len(data), seg)]
                self.rx += len(parts)
                self.on(parts, addr, data, seg)
            else:
                self.rx += 1
                self.on([data], addr, None, 0)

    def send(self, datagrams: list[bytes], addr: Any) -> None:
        if not datagrams:
            return
        self.tx += len(datagrams)
        if self.variant != "gso":
            sendto = self.transport.sendto
            for d in datagrams:
                sendto(d, addr)
            self.send_calls += len(datagrams)
            return
        i, n = 0, len(datagrams)
        while i < n:  # a run: equal sizes, possibly one shorter last segment
            seg = len(datagrams[i])
            most = min(64, 65000 // seg)
            j = i + 1
            while j < n and j - i < most and len(datagrams[j]) == seg:
                j += 1
            if j < n and j - i < most and len(datagrams[j]) < seg:
                j += 1
            self._sendmsg(datagrams[i:j], seg, addr)
            i = j

    def _sendmsg(self, run: list[bytes], seg: int, addr: Any) -> None:
        self.send_calls += 1
        try:
            if len(run) == 1:
                self.sock.sendto(run[0], addr)
            else:
                self.sock.sendmsg([b"".join(run)],
                                  [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", seg))], 0, addr)
        except (BlockingIOError, InterruptedError):
            self.send_dropped += len(run)

    def backlog(self) -> int:
        return self.transport.get_write_buffer_size() if self.transport is not None else 0


def gso_supported() -> str | None:
    """None if this kernel takes UDP_SEGMENT and UDP_GRO, else why not."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setsockopt(SOL_UDP, UDP_SEGMENT, PACKET)
            s.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError as exc:
        return str(exc)
    return None


# ---------------------------------------------------------------- QUIC pump and roles


class Pump:
    """Sans-IO pump of one core over an Io: input batch -> events -> flush -> timer."""

    def __init__(self, lib: str, variant: str, sock: socket.socket, is_client: bool,
                 peer: Any, app: Any) -> None:
        self.lib, self.is_client, self.peer, self.app = lib, is_client, peer, app
        self.loop = asyncio.get_running_loop()
        self.io = Io(variant, sock, self.on_datagrams)
        self.conn: Any = None
        self.events: Any = None
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at: float | None = None
        self.batch_api = lib == "qh3" and variant != "plain"
        self.timer_fires = self.flushes = self.empty_flushes = 0
        if is_client:
            self.conn, self.events = make_core(lib, True)
            self.conn.connect(peer, now=self.loop.time())

    def on_datagrams(self, batch: list[bytes], addr: Any, gro: bytes | None, seg: int) -> None:
        now = self.loop.time()
        if self.conn is None:
            self.peer = addr
            self.conn, self.events = make_core(self.lib, False, batch[0])
        conn = self.conn
        if self.batch_api and gro is not None:
            conn.receive_gro_buffer(gro, seg, addr, now)
        elif self.batch_api and len(batch) > 1:
            conn.receive_many_datagrams(batch, addr, now)
        else:
            for d in batch:
                conn.receive_datagram(d, addr, now)
        self.after_input()

    def after_input(self) -> None:
        conn, app = self.conn, self.app
        while (ev := conn.next_event()) is not None:
            app.on_event(self, ev)
        app.on_pass(self)
        self.flush()

    def flush(self) -> None:
        out = self.conn.datagrams_to_send(now=self.loop.time())
        self.flushes += 1
        self.empty_flushes += not out
        if out:
            self.io.send([d for d, _ in out], self.peer)
        t = self.conn.get_timer()
        if t != self.timer_at:
            if self.timer is not None:
                self.timer.cancel()
            self.timer_at = t
            self.timer = None if t is None else self.loop.call_at(t, self.on_timer)

    def on_timer(self) -> None:
        self.timer_fires += 1
        self.timer = self.timer_at = None
        self.conn.handle_timer(now=self.loop.time())
        self.after_input()


class Window:
    """The measured interval [t0, t1]: CPU and counters sampled at both ends."""

    def __init__(self) -> None:
        self.marks: list[dict[str, Any]] = []

    def mark(self, loop: asyncio.AbstractEventLoop, **counters: int) -> None:
        u, s = cpu()
        self.marks.append({"t": loop.time(), "utime": u, "stime": s, **counters})

    def result(self) -> dict[str, Any]:
        a, b = self.marks[0], self.marks[-1]
        return {k: b[k] - a[k] for k in a}


class Sender:
    """QUIC client: after the handshake announces [t0, t1], then writes messages on stream
    0 while it is less than WINDOW ahead of the receiver's credit."""

    def __init__(self, workload: str, seconds: float) -> None:
        self.size = 65536 if workload == "bulk" else 1024
        self.msg = b"m" * self.size
        self.seconds = seconds
        self.sent = self.credit = 0
        self.running = False
        self.cbuf = b""
        self.window = Window()
        self.done = asyncio.get_running_loop().create_future()

    def on_event(self, pump: Pump, ev: Any) -> None:
        E = pump.events
        if isinstance(ev, E.HandshakeCompleted) and not self.running:
            loop = pump.loop
            t0 = loop.time() + WARMUP_S
            self.t1 = t0 + self.seconds
            pump.conn.send_stream_data(0, struct.pack("!dd", t0, self.t1))  # stream header
            self.running = True
            loop.call_at(t0, lambda: self.window.mark(loop, tx=pump.io.tx, rx=pump.io.rx,
                                                      calls=pump.io.send_calls))
            loop.call_at(self.t1, self.stop, pump)
        elif isinstance(ev, E.StreamDataReceived) and ev.stream_id == 0:
            self.cbuf += ev.data
            whole = len(self.cbuf) // 8
            if whole:  # the newest complete credit counts
                self.credit = struct.unpack_from("!Q", self.cbuf, (whole - 1) * 8)[0]
                self.cbuf = self.cbuf[whole * 8:]
        elif isinstance(ev, E.ConnectionTerminated) and not self.done.done():
            self.done.set_result(None)

    def on_pass(self, pump: Pump) -> None:
        if not self.running:
            return
        send, msg, size = pump.conn.send_stream_data, self.msg, self.size
        while self.sent - self.credit < WINDOW:
            send(0, msg)
            self.sent += size

    def stop(self, pump: Pump) -> None:
        self.window.mark(pump.loop, tx=pump.io.tx, rx=pump.io.rx, calls=pump.io.send_calls)
        self.running = False
        if not self.done.done():
            self.done.set_result(None)


class Receiver:
    """QUIC server: takes every message off stream 0, returns credit, samples [t0, t1]."""

    def __init__(self, workload: str) -> None:
        self.size = 65536 if workload == "bulk" else 1024
        self.bytes = self.msgs = self.credited = 0
        self.buf = bytearray()
        self.window = Window()
        self.done = asyncio.get_running_loop().create_future()
        self.ctl: bytes | None = b""

    def sample(self, pump: Pump) -> None:
        self.window.mark(pump.loop, bytes=self.bytes, msgs=self.msgs, rx=pump.io.rx,
                         tx=pump.io.tx, calls=pump.io.recv_calls)

    def on_event(self, pump: Pump, ev: Any) -> None:
        E = pump.events
        if isinstance(ev, E.StreamDataReceived):
            if ev.stream_id == 0:
                data = ev.data
                if self.ctl is not None:  # the stream starts with [t0, t1]
                    take = 16 - len(self.ctl)
                    self.ctl += data[:take]
                    data = data[take:]
                    if len(self.ctl) == 16:
                        t0, t1 = struct.unpack("!dd", self.ctl)
                        self.ctl = None
                        pump.loop.call_at(t0, self.sample, pump)
                        pump.loop.call_at(t1, self.sample, pump)
                        pump.loop.call_at(t1 + 0.3, self.finish)
                self.bytes += len(data)
                buf = self.buf
                buf += data
                size = self.size
                n = len(buf) // size
                if n:
                    for i in range(n):  # the application takes each message
                        bytes(buf[i * size:(i + 1) * size])
                    self.msgs += n
                    del buf[:n * size]
        elif isinstance(ev, E.ConnectionTerminated):
            self.finish()

    def on_pass(self, pump: Pump) -> None:
        if self.bytes - self.credited >= CREDIT_STEP:
            self.credited = self.bytes
            pump.conn.send_stream_data(0, struct.pack("!Q", self.bytes))

    def finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)


def bound_socket() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    return s


async def quic_role(a: argparse.Namespace) -> dict[str, Any]:
    sock = bound_socket()
    loop = asyncio.get_running_loop()
    if a.role == "receiver":
        app: Any = Receiver(a.workload)
        pump = Pump(a.core, a.variant, sock, False, None, app)
        print(json.dumps({"port": sock.getsockname()[1]}), flush=True)
    else:
        app = Sender(a.workload, a.seconds)
        pump = Pump(a.core, a.variant, sock, True, ("127.0.0.1", a.port), app)
    await pump.io.start()
    if pump.conn is not None:
        pump.flush()
    await asyncio.wait_for(app.done, a.seconds + 20)
    stats = core_stats(a.core, pump.conn) if pump.conn is not None else {}
    if a.role == "sender":
        await asyncio.sleep(0.5)  # keep acking while the receiver takes its last sample
        pump.conn.close()
        pump.flush()
    w = app.window.result() if len(app.window.marks) >= 2 else {}
    out = {"role": a.role, **w, "send_dropped": pump.io.send_dropped, **stats,
           "timer_fires": pump.timer_fires, "flushes": pump.flushes,
           "empty_flushes": pump.empty_flushes,
           "rcvbuf": sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)}
    if a.variant == "gso":
        loop.remove_reader(sock.fileno())
    return out


# ---------------------------------------------------------------- raw datagrams


async def raw_role(a: argparse.Namespace) -> dict[str, Any]:
    """receiver: count 1 KiB datagrams until 0.4 s pass without one; sender: send for
    ``seconds`` at ``rate`` (0: unpaced)."""
    sock = bound_socket()
    loop = asyncio.get_running_loop()
    if a.role == "receiver":
        st = {"n": 0, "first": 0.0, "last": 0.0, "c0": (0.0, 0.0)}

        def on(batch: list[bytes], addr: Any, gro: bytes | None, seg: int) -> None:
            if st["n"] == 0:
                st["first"], st["c0"] = loop.time(), cpu()
            st["n"] += len(batch)
            st["last"] = loop.time()

        io = Io(a.variant, sock, on)
        await io.start()
        print(json.dumps({"port": sock.getsockname()[1]}), flush=True)
        deadline = loop.time() + a.seconds + 20
        while loop.time() < deadline and (st["n"] == 0 or loop.time() - st["last"] < 0.4):
            await asyncio.sleep(0.05)
        c1 = cpu()
        return {"role": "receiver", "received": st["n"], "wall": st["last"] - st["first"],
                "utime": c1[0] - st["c0"][0], "stime": c1[1] - st["c0"][1],
                "calls": io.recv_calls}
    io = Io(a.variant, sock, lambda *x: None)
    await io.start()
    peer, payload = ("127.0.0.1", a.port), bytes(RAW_SIZE)
    sent = dropped = 0
    c0, t0 = cpu(), loop.time()
    t1 = t0 + a.seconds
    while (now := loop.time()) < t1:
        due = 64 if a.rate <= 0 else int((now - t0) * a.rate) - sent - dropped
        if due > 0:
            if io.backlog() > 65536:
                dropped += due
            else:
                io.send([payload] * due, peer)
                sent += due
        await asyncio.sleep(0 if a.rate <= 0 else 0.0005)
    c1 = cpu()
    return {"role": "sender", "sent": sent - io.send_dropped,
            "dropped_by_sender": dropped + io.send_dropped, "wall": loop.time() - t0,
            "utime": c1[0] - c0[0], "stime": c1[1] - c0[1], "calls": io.send_calls}


def child(a: argparse.Namespace) -> None:
    coro = raw_role(a) if a.workload == "raw" else quic_role(a)
    try:
        out = asyncio.run(coro)
    except Exception as exc:  # report, the parent records the failed measurement
        out = {"role": a.role, "error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(out), flush=True)


# ---------------------------------------------------------------- parent: rounds in a namespace


def run_pair(ns: str, workload: str, core: str, variant: str, seconds: float,
             rate: float = 0.0) -> tuple[dict[str, Any], dict[str, Any]]:
    """Receiver and sender processes inside ``ns``; their result dicts (or an error)."""
    base = ["ip", "netns", "exec", ns, sys.executable, HERE, "--child", "--workload",
            workload, "--core", core, "--variant", variant, "--seconds", str(seconds)]
    procs: list[subprocess.Popen[str]] = []
    try:
        recv = subprocess.Popen([*base, "--role", "receiver"], stdout=subprocess.PIPE,
                                text=True)
        procs.append(recv)
        first = json.loads(recv.stdout.readline() or "{}")  # type: ignore[union-attr]
        if "port" not in first:
            return {"error": f"receiver did not start: {first}"}, {}
        send = subprocess.Popen([*base, "--role", "sender", "--port", str(first["port"]),
                                 "--rate", str(rate)], stdout=subprocess.PIPE, text=True)
        procs.append(send)
        s_out, _ = send.communicate(timeout=seconds + 60)
        r_out, _ = recv.communicate(timeout=30)

        def last(text: str) -> dict[str, Any]:
            lines = [x for x in text.splitlines() if x.strip()]
            return json.loads(lines[-1]) if lines else {"error": "no output"}
        return last(r_out), last(s_out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def udp_errors(ns: str) -> dict[str, int]:
    """The namespace's UDP receive/send buffer error counters (/proc/net/snmp)."""
    text = subprocess.run(["ip", "netns", "exec", ns, "cat", "/proc/net/snmp"],
                          capture_output=True, text=True, check=True).stdout
    head, values = [ln.split()[1:] for ln in text.splitlines() if ln.startswith("Udp:")][:2]
    row = dict(zip(head, values, strict=True))
    return {"rcvbuf_errors": int(row["RcvbufErrors"]), "sndbuf_errors": int(row["SndbufErrors"])}


def quic_row(r: dict[str, Any], s: dict[str, Any], workload: str) -> dict[str, Any]:
    if "error" in r or "error" in s or "t" not in r or "t" not in s:
        return {"error": r.get("error") or s.get("error") or "no window"}
    r_cpu, s_cpu = r["utime"] + r["stime"], s["utime"] + s["stime"]
    row = {
        "MB_s": r["bytes"] / r["t"] / 1e6, "msg_s": r["msgs"] / r["t"], "window_s": r["t"],
        "data_pkts": r["rx"], "ack_pkts": r["tx"], "sender_pkts": s["tx"],
        "payload_per_pkt": r["bytes"] / max(r["rx"], 1),
        "send_us_pkt": 1e6 * s_cpu / max(s["tx"], 1),
        "recv_us_pkt": 1e6 * r_cpu / max(r["rx"], 1),
        "send_sys_us_pkt": 1e6 * s["stime"] / max(s["tx"], 1),
        "recv_sys_us_pkt": 1e6 * r["stime"] / max(r["rx"], 1),
        "send_cpu_frac": s_cpu / s["t"], "recv_cpu_frac": r_cpu / r["t"],
        "recv_calls_per_pkt": r["calls"] / max(r["rx"], 1),
        "send_calls_per_pkt": s["calls"] / max(s["tx"], 1),
        "send_dropped": s.get("send_dropped", 0), "rcvbuf": r.get("rcvbuf"),
    }
    if workload == "msg1k":
        row["send_us_msg"] = 1e6 * s_cpu / max(r["msgs"], 1)
        row["recv_us_msg"] = 1e6 * r_cpu / max(r["msgs"], 1)
    return row


def raw_trial(ns: str, variant: str, seconds: float, rate: float) -> dict[str, Any]:
    r, s = run_pair(ns, "raw", "none", variant, seconds, rate)
    if "error" in r or "error" in s:
        return {"rate": rate, "error": r.get("error") or s.get("error")}
    got, sent = r["received"], max(s["sent"], 1)
    return {
        "rate": rate, "sent": s["sent"], "received": got,
        "send_rate": s["sent"] / s["wall"], "delivered_rate": got / max(r["wall"], 1e-9),
        "loss_percent": 100.0 * (1 - got / sent),
        "recv_us_pkt": 1e6 * (r["utime"] + r["stime"]) / max(got, 1),
        "send_us_pkt": 1e6 * (s["utime"] + s["stime"]) / sent,
        "recv_calls_per_pkt": r["calls"] / max(got, 1),
    }


def raw_row(ns: str, variant: str, seconds: float) -> dict[str, Any]:
    """Unpaced trial, then paced at fractions of its delivered rate: the best < 1 % loss."""
    unpaced = raw_trial(ns, variant, seconds, 0.0)
    if "error" in unpaced:
        return {"error": unpaced["error"]}
    trials = []
    for f in (0.6, 0.7, 0.8, 0.9, 1.0, 1.2):
        trials.append(raw_trial(ns, variant, seconds, f * unpaced["delivered_rate"]))
    ok = [t for t in trials if "error" not in t and t["loss_percent"] < 1.0
          and t["delivered_rate"] >= 0.9 * t["send_rate"]]
    best = max(ok, key=lambda t: t["delivered_rate"]) if ok else None
    return {"unpaced_rate": unpaced["delivered_rate"], "unpaced_loss": unpaced["loss_percent"],
            "unpaced_recv_us_pkt": unpaced["recv_us_pkt"],
            "unpaced_send_us_pkt": unpaced["send_us_pkt"],
            "paced_rate": best["delivered_rate"] if best else None,
            "paced_recv_us_pkt": best["recv_us_pkt"] if best else None,
            "trials": [unpaced, *trials]}


STAT_KEYS = ("cwnd", "in_flight", "srtt_ms", "lost", "pto", "timer_fires", "flushes",
             "empty_flushes", "utime", "stime")


def measure(a: argparse.Namespace) -> None:
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "..", "..", "src"))
    from tierlink.bench import netns

    variants = [v for v in a.variants.split(",") if v]
    why = gso_supported()
    if "gso" in variants and why is not None:
        print(f"UDP GSO/GRO not supported here ({why}): variant gso skipped", file=sys.stderr)
        variants.remove("gso")
    cores = a.cores.split(",")
    meta = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "kernel": os.uname().release, "python": sys.version.split()[0]}
    with netns.mtu_namespace(1500) as ns, open(a.out, "a") as out:
        link = subprocess.run(["ip", "-n", ns, "-o", "link", "show", "lo"],
                              capture_output=True, text=True, check=True).stdout.split()
        meta["lo_mtu"] = int(link[link.index("mtu") + 1])
        def emit(row: dict[str, Any]) -> None:
            row.update(meta, loadavg=[round(x, 2) for x in os.getloadavg()])
            out.write(json.dumps(row) + "\n")
            out.flush()
            print(json.dumps({k: (round(v, 2) if isinstance(v, float) else v)
                              for k, v in row.items() if k != "trials"}), flush=True)

        for rnd in range(1, a.rounds + 1):
            order = cores if rnd % 2 else cores[::-1]
            vs = variants if rnd % 2 else variants[::-1]
            for workload in [w for w in ("bulk", "msg1k") if w in a.workloads]:
                for v in vs:
                    for c in order:
                        e0 = udp_errors(ns)
                        r, s = run_pair(ns, workload, c, v, a.seconds)
                        e1 = udp_errors(ns)
                        emit({"round": rnd, "workload": workload, "core": c, "variant": v,
                              **quic_row(r, s, workload),
                              **{k: e1[k] - e0[k] for k in e0},
                              "sender_stats": {k: s.get(k) for k in STAT_KEYS},
                              "receiver_stats": {k: r.get(k) for k in STAT_KEYS}})
            if "raw" in a.workloads:
                for v in vs:
                    emit({"round": rnd, "workload": "raw", "core": "none", "variant": v,
                          **raw_row(ns, v, a.raw_seconds)})


# ---------------------------------------------------------------- summary


def med(values: list[float]) -> str:
    if not values:
        return "-"
    m = statistics.median(values)
    fmt = (lambda x: f"{x:,.0f}") if m >= 100 else (lambda x: f"{x:.1f}")
    return f"{fmt(m)} ({fmt(min(values))}-{fmt(max(values))})"


def summary(path: str) -> None:
    with open(path) as f:
        rows = [json.loads(x) for x in f if x.strip()]
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        if "error" not in r:
            groups.setdefault((r["workload"], r["core"], r["variant"]), []).append(r)
    print("| core | I/O | 64 KiB MB/s | CPU µs/pkt send / recv | CPU-bound MB/s "
          "| 1 KiB msg/s | CPU µs/msg send / recv | CPU-bound msg/s | n |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for core in ("aioquic", "qh3"):
        for v in ("plain", "batch", "gso"):
            b, m = groups.get(("bulk", core, v), []), groups.get(("msg1k", core, v), [])
            if not b and not m:
                continue
            col = lambda rs, k: [float(r[k]) for r in rs]  # noqa: E731
            # the rate if the busier side had a whole core: payload / its CPU per packet
            b_cap = [r["payload_per_pkt"] / max(r["send_us_pkt"], r["recv_us_pkt"]) for r in b]
            m_cap = [1e6 / max(r["send_us_msg"], r["recv_us_msg"]) for r in m]
            print(f"| {core} | {v} | {med(col(b, 'MB_s'))} | {med(col(b, 'send_us_pkt'))} / "
                  f"{med(col(b, 'recv_us_pkt'))} | {med(b_cap)} | {med(col(m, 'msg_s'))} | "
                  f"{med(col(m, 'send_us_msg'))} / {med(col(m, 'recv_us_msg'))} | "
                  f"{med(m_cap)} | {len(b)}/{len(m)} |")
    print("\n| raw 1 KiB datagrams | unpaced delivered/s (loss %) | paced best < 1 % loss/s "
          "| recv µs/pkt (paced) | send µs/pkt (unpaced) | n |")
    print("|---|---:|---:|---:|---:|---:|")
    for v in ("plain", "batch", "gso"):
        rs = groups.get(("raw", "none", v), [])
        if rs:
            paced = [float(r["paced_rate"]) for r in rs if r.get("paced_rate")]
            pus = [float(r["paced_recv_us_pkt"]) for r in rs if r.get("paced_recv_us_pkt")]
            print(f"| {v} | {med([r['unpaced_rate'] for r in rs])} "
                  f"({med([r['unpaced_loss'] for r in rs])}) | {med(paced)} | {med(pus)} | "
                  f"{med([r['unpaced_send_us_pkt'] for r in rs])} | {len(rs)} |")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--child", action="store_true")
    p.add_argument("--role", default="")
    p.add_argument("--workload", default="bulk")
    p.add_argument("--core", default="qh3")
    p.add_argument("--variant", default="plain")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--rate", type=float, default=0.0)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--raw-seconds", type=float, default=1.5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cores", default="aioquic,qh3")
    p.add_argument("--variants", default="plain,batch,gso")
    p.add_argument("--workloads", default="bulk,msg1k,raw")
    p.add_argument("--out", default=os.path.join(os.path.dirname(HERE), "stack_results.jsonl"))
    p.add_argument("--summary", default=None, help="print the tables of this results file")
    a = p.parse_args()
    if a.summary:
        summary(a.summary)
    elif a.child:
        child(a)
    else:
        measure(a)


if __name__ == "__main__":
    main()
