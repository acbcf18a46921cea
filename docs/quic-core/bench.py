"""In-memory QUIC core cost: aioquic 1.7.2 vs qh3 2.1.0, two QuicConnections back to back.

No sockets, no event loop: datagrams are handed from one connection to the other in the same
process. Time is measured with time.perf_counter around each library call (single thread, so
wall ~= CPU of the call; machine is shared, hence interleaved rounds and medians).

Usage: venv/bin/python bench.py LIB KIND [ROUNDS]
  LIB  = aioquic | qh3
  KIND = bulk | msg1k | msg1k_batch | handshake
Prints one JSON line per round.
"""

from __future__ import annotations

import datetime
import gc
import json
import os
import ssl
import sys
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

PACKET = 1452  # max_datagram_size for both libraries (1500-byte Ethernet, IPv6)
ADDR = ("0.0.0.0", 0)
CID_LEN = 8
pc = time.perf_counter


def make_cert():
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tierlink")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=365)).sign(key, hashes.SHA256())
    )
    return key, cert


KEY, CERT = make_cert()
CERT_PEM = CERT.public_bytes(serialization.Encoding.PEM)
KEY_PEM = KEY.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
)


def lib_api(lib: str):
    if lib == "aioquic":
        from aioquic import tls
        from aioquic.buffer import Buffer
        from aioquic.quic import events
        from aioquic.quic.configuration import QuicConfiguration
        from aioquic.quic.connection import QuicConnection
        from aioquic.quic.packet import pull_quic_header

        def config(is_client: bool):
            return QuicConfiguration(
                is_client=is_client, alpn_protocols=["tierlink/1"], certificate=CERT,
                private_key=KEY, verify_mode=ssl.CERT_NONE, max_datagram_size=PACKET,
                max_datagram_frame_size=65536, idle_timeout=60, connection_id_length=CID_LEN,
                max_data=64 << 20, max_stream_data=32 << 20,
            )

        def odcid(datagram: bytes) -> bytes:
            return pull_quic_header(Buffer(data=datagram), host_cid_length=CID_LEN).destination_cid

        def tweak(conn, is_client):  # what tierlink's PinnedQuicConnection does
            orig = conn._initialize

            def init(peer_cid):
                orig(peer_cid)
                conn.tls._request_client_certificate = True
                conn.tls._supported_groups = [tls.Group.X25519]

            conn._initialize = init
    else:
        from qh3 import tls
        from qh3._hazmat import Buffer
        from qh3.quic import events
        from qh3.quic.configuration import QuicConfiguration
        from qh3.quic.connection import QuicConnection
        from qh3.quic.packet import pull_quic_header

        def config(is_client: bool):
            c = QuicConfiguration(
                is_client=is_client, alpn_protocols=["tierlink/1"], verify_mode=ssl.CERT_NONE,
                max_datagram_size=PACKET, probe_datagram_size=False,
                max_datagram_frame_size=65536, idle_timeout=60, connection_id_length=CID_LEN,
                max_data=64 << 20, max_stream_data=32 << 20,
            )
            c.load_cert_chain(CERT_PEM + b"\n" + KEY_PEM)
            return c

        def odcid(datagram: bytes) -> bytes:
            return pull_quic_header(Buffer(data=datagram), host_cid_length=CID_LEN).destination_cid

        def tweak(conn, is_client):
            if lib == "qh3-x25519":  # offer only X25519, as tierlink does with aioquic
                orig = conn._create_tls

                def create(*a, **k):
                    bridge = orig(*a, **k)
                    bridge.tls._supported_groups = [tls.Group.X25519]
                    return bridge

                conn._create_tls = create

    return QuicConnection, config, odcid, tweak, events


class Pair:
    def __init__(self, lib: str):
        QuicConnection, config, odcid, tweak, self.ev = lib_api(lib)
        self.t = {"c_send": 0.0, "s_recv": 0.0, "s_send": 0.0, "c_recv": 0.0}
        self.n = {"c2s": 0, "s2c": 0, "c2s_bytes": 0}
        cfg_c, cfg_s = config(True), config(False)
        now = time.monotonic()
        t0 = pc()
        self.client = QuicConnection(configuration=cfg_c)
        tweak(self.client, True)
        self.client.connect(ADDR, now=now)
        first = [d for d, _ in self.client.datagrams_to_send(now=now)]
        self.server = QuicConnection(
            configuration=cfg_s, original_destination_connection_id=odcid(first[0])
        )
        tweak(self.server, False)
        for d in first:
            self.server.receive_datagram(d, ADDR, now=now)
        done = {"c": False, "s": False}
        for _ in range(20):
            now = time.monotonic()
            for d, _ in self.server.datagrams_to_send(now=now):
                self.client.receive_datagram(d, ADDR, now=now)
            for d, _ in self.client.datagrams_to_send(now=now):
                self.server.receive_datagram(d, ADDR, now=now)
            for side, conn in (("c", self.client), ("s", self.server)):
                while (e := conn.next_event()) is not None:
                    if isinstance(e, self.ev.HandshakeCompleted):
                        done[side] = True
            if all(done.values()):
                break
        # let HANDSHAKE_DONE / acks settle
        for _ in range(3):
            now = time.monotonic()
            for d, _ in self.server.datagrams_to_send(now=now):
                self.client.receive_datagram(d, ADDR, now=now)
            for d, _ in self.client.datagrams_to_send(now=now):
                self.server.receive_datagram(d, ADDR, now=now)
        self.handshake_s = pc() - t0
        assert all(done.values()), done
        self.received = 0
        self.sid = self.client.get_next_available_stream_id()

    def pump(self):
        """One exchange: client -> server, server (acks) -> client, timers. Returns packets c2s."""
        t, n, c, s = self.t, self.n, self.client, self.server
        now = time.monotonic()
        a = pc()
        out = c.datagrams_to_send(now=now)
        b = pc()
        t["c_send"] += b - a
        for d, _ in out:
            s.receive_datagram(d, ADDR, now=now)
            n["c2s_bytes"] += len(d)
        while (e := s.next_event()) is not None:
            if isinstance(e, self.ev.StreamDataReceived):
                self.received += len(e.data)
        a = pc()
        t["s_recv"] += a - b
        back = s.datagrams_to_send(now=now)
        b = pc()
        t["s_send"] += b - a
        for d, _ in back:
            c.receive_datagram(d, ADDR, now=now)
        while c.next_event() is not None:
            pass
        a = pc()
        t["c_recv"] += a - b
        n["c2s"] += len(out)
        n["s2c"] += len(back)
        if not out and not back:  # blocked: fire due timers (ack delay, pacing)
            for conn in (c, s):
                when = conn.get_timer()
                if when is not None and when <= time.monotonic() + 0.03:
                    while time.monotonic() < when:
                        pass
                    conn.handle_timer(now=time.monotonic())
        return len(out)


def run(lib: str, kind: str) -> dict:
    gc.collect()
    p = Pair(lib)
    if kind == "handshake":
        return {"lib": lib, "kind": kind, "handshake_ms": p.handshake_s * 1e3}
    c = p.client
    if kind == "bulk":
        total = 24 << 20
        chunk = b"\0" * (256 << 10)
        sent = 0
        t0 = pc()
        while p.received < total:
            while sent < total and sent - p.received < (4 << 20):
                a = pc()
                c.send_stream_data(p.sid, chunk)
                p.t["c_send"] += pc() - a
                sent += len(chunk)
            p.pump()
        wall = pc() - t0
        r = {"MB_s": total / wall / 1e6}
    else:
        batch = 1 if kind == "msg1k" else 32
        count = 20_000 if batch == 1 else 60_000
        msg = b"m" * 1024
        t0 = pc()
        i = 0
        while i < count:
            a = pc()
            for _ in range(batch):
                c.send_stream_data(p.sid, msg)
            p.t["c_send"] += pc() - a
            i += batch
            p.pump()
        while p.received < count * 1024:
            p.pump()
        wall = pc() - t0
        r = {"msg_s": count / wall}
    pk = p.n["c2s"]
    r.update(
        lib=lib, kind=kind, wall_s=wall, pkts=pk, acks=p.n["s2c"],
        avg_pkt=p.n["c2s_bytes"] / pk,
        send_us_pkt=p.t["c_send"] / pk * 1e6,  # send_stream_data + datagrams_to_send
        recv_us_pkt=p.t["s_recv"] / pk * 1e6,  # receive_datagram + next_event
        ack_us_pkt=(p.t["s_send"] + p.t["c_recv"]) / pk * 1e6,  # acks built + consumed
    )
    return r


if __name__ == "__main__":
    lib, kind = sys.argv[1], sys.argv[2]
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    run(lib, "handshake")  # warm-up: first handshake in a process pays lazy initialization
    for _ in range(rounds):
        print(json.dumps(run(lib, kind)), flush=True)
