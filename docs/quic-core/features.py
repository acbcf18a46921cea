"""Behaviour checks behind REPORT.md (in memory, two connections back to back).

venv/bin/python features.py  -> prints one line per finding.
"""

from __future__ import annotations

import gc
import hashlib
import ssl
import time
import weakref

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

import bench
from bench import ADDR, CERT, CERT_PEM, KEY_PEM, CID_LEN, lib_api

from cryptography.hazmat.primitives import serialization

CERT_DER = CERT.public_bytes(serialization.Encoding.DER)
PIN = hashlib.sha256(CERT_DER).hexdigest()


def hkdf_expand_label(h, secret: bytes, label: bytes, context: bytes, length: int) -> bytes:
    full = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes([len(full)]) + full + bytes([len(context)]) + context
    return HKDFExpand({"sha256": hashes.SHA256(), "sha384": hashes.SHA384()}[h], length,
                      info).derive(secret)


def tls_exporter(ems: bytes, label: bytes, context: bytes, length: int) -> bytes:
    """RFC 8446 section 7.5; the suite's hash is told by the secret's length."""
    h = "sha256" if len(ems) == 32 else "sha384"
    secret = hkdf_expand_label(h, ems, label, hashlib.new(h, b"").digest(), len(ems))
    return hkdf_expand_label(h, secret, b"exporter", hashlib.new(h, context).digest(), length)


def hook_exporter(tls_ctx, store: dict, side: str) -> None:
    """Wrap update_traffic_key_cb: at the first 1-RTT key the transcript hash runs through
    the server Finished, which is what exporter_master_secret is derived from."""
    orig = tls_ctx.update_traffic_key_cb

    def cb(direction, epoch, cipher_suite, secret):
        if epoch.name == "ONE_RTT" and side not in store:
            store[side] = tls_ctx.key_schedule.derive_secret(b"exp master")
            store[side + "_suite"] = cipher_suite
        return orig(direction, epoch, cipher_suite, secret)

    tls_ctx.update_traffic_key_cb = cb


def shake(lib, cfg_c, cfg_s, hook=None, steps=20):
    QuicConnection, config, odcid, tweak, ev = lib_api(lib)
    now = time.monotonic()
    c = QuicConnection(configuration=cfg_c)
    tweak(c, True)
    if hook:
        hook(c, "c")
    c.connect(ADDR, now=now)
    first = [d for d, _ in c.datagrams_to_send(now=now)]
    s = QuicConnection(configuration=cfg_s, original_destination_connection_id=odcid(first[0]))
    tweak(s, False)
    if hook:
        hook(s, "s")
    for d in first:
        s.receive_datagram(d, ADDR, now=now)
    evs = {"c": [], "s": []}
    for _ in range(steps):
        now = time.monotonic()
        for d, _ in s.datagrams_to_send(now=now):
            c.receive_datagram(d, ADDR, now=now)
        for d, _ in c.datagrams_to_send(now=now):
            s.receive_datagram(d, ADDR, now=now)
        for side, conn in (("c", c), ("s", s)):
            while (e := conn.next_event()) is not None:
                evs[side].append(e)
    return c, s, evs


def names(evs):
    return [type(e).__name__ for e in evs]


def exporter_check(lib):
    QuicConnection, config, *_ = lib_api(lib)
    store = {}

    def hook(conn, side):
        if lib == "aioquic":
            orig = conn._initialize

            def init(peer_cid):
                orig(peer_cid)
                hook_exporter(conn.tls, store, side)

            conn._initialize = init
        else:
            orig = conn._create_tls

            def create(*a, **k):
                bridge = orig(*a, **k)
                hook_exporter(bridge.tls, store, side)
                return bridge

            conn._create_tls = create

    c, s, evs = shake(lib, config(True), config(False), hook)
    ec = tls_exporter(store["c"], b"EXPORTER-tierlink-test", b"ctx", 32)
    es = tls_exporter(store["s"], b"EXPORTER-tierlink-test", b"ctx", 32)
    print(f"[{lib}] public exporter method on tls.Context: "
          f"{[n for n in dir(c.tls) if 'export' in n.lower()]}; private hook: "
          f"client==server {ec == es}, suite {store['c_suite']!r}, value {ec.hex()[:16]}...")


def qh3_pinning():
    from qh3.quic.configuration import QuicConfiguration
    from qh3 import tls

    def cfg(is_client, fp=None):
        c = QuicConfiguration(is_client=is_client, alpn_protocols=["t"], verify_mode=ssl.CERT_NONE,
                              assert_fingerprint=fp, connection_id_length=CID_LEN,
                              probe_datagram_size=False)
        c.load_cert_chain(CERT_PEM + b"\n" + KEY_PEM)  # client has a certificate too
        return c

    c, s, evs = shake("qh3", cfg(True, PIN), cfg(False))
    pc_ = s.get_peercert()
    print(f"[qh3] client assert_fingerprint=sha256(DER) -> client events {names(evs['c'])[:3]}; "
          f"server.get_peercert() = {pc_!r} (no client certificate: server never requests one); "
          f"client.get_peercert().public_bytes()==DER: {c.get_peercert().public_bytes() == CERT_DER}")
    c, s, evs = shake("qh3", cfg(True, "00" * 32), cfg(False))
    print(f"[qh3] wrong pin -> client {names(evs['c'])} close={c._close_event}; "
          f"server {names(evs['s'])} server _close_event={s._close_event}")
    print(f"[qh3] server-side CertificateRequest support: tls.State has "
          f"{[x.name for x in tls.State if 'SERVER' in x.name]}")
    c, s, evs = shake("qh3", cfg(True), cfg(False))
    print(f"[qh3] negotiated key share (client has ML-KEM key: "
          f"{c.tls._x25519_kyber_768_private_key is not None}); server tls groups "
          f"{[hex(g) for g in s.tls._supported_groups]}; first client datagram carries "
          f"X25519MLKEM768 by default")


def qh3_pmtu():
    from qh3.quic.configuration import QuicConfiguration

    for size, probe in ((1200, True), (16383, True), (1452, False)):
        def cfg(is_client):
            c = QuicConfiguration(is_client=is_client, alpn_protocols=["t"],
                                  verify_mode=ssl.CERT_NONE, connection_id_length=CID_LEN,
                                  max_datagram_size=size, probe_datagram_size=probe)
            c.load_cert_chain(CERT_PEM + b"\n" + KEY_PEM)
            return c

        c, s, evs = shake("qh3", cfg(True), cfg(False))
        # push data both ways for a while with a moving clock so probe timers fire
        sizes = {"c": set(), "s": set()}
        t_end = time.monotonic() + 1.5
        sid = c.get_next_available_stream_id()
        c.send_stream_data(sid, b"x" * 200_000)
        s.send_stream_data(s.get_next_available_stream_id(), b"y" * 200_000)
        while time.monotonic() < t_end:
            now = time.monotonic()
            for src, dst, k in ((c, s, "c"), (s, c, "s")):
                for d, _ in src.datagrams_to_send(now=now):
                    sizes[k].add(len(d))
                    dst.receive_datagram(d, ADDR, now=now)
                while dst.next_event() is not None:
                    pass
                when = src.get_timer()
                if when is not None and when <= now:
                    src.handle_timer(now=now)
            time.sleep(0.002)
        print(f"[qh3] max_datagram_size={size} probe={probe}: client sent sizes max "
              f"{max(sizes['c'])}, server sent max {max(sizes['s'])}; active_path "
              f"c={c._core.active_path} s={s._core.active_path}; "
              f"setter on core: {[n for n in dir(c._core) if 'size' in n or 'mtu' in n]}")


def datagram_backlog(lib):
    QuicConnection, config, odcid, tweak, ev = lib_api(lib)
    c, s, _ = shake(lib, config(True), config(False))
    for i in range(10_000):
        c.send_datagram_frame(i.to_bytes(4, "big") * 250)
    now = time.monotonic()
    out = c.datagrams_to_send(now=now)
    for d, _ in out:
        s.receive_datagram(d, ADDR, now=now)
    got = [e for e in iter(s.next_event, None) if isinstance(e, ev.DatagramFrameReceived)]
    pending = len(c._datagrams_pending) if lib == "aioquic" else "n/a (inside native core)"
    loss = c._loss if lib == "aioquic" else c._core
    print(f"[{lib}] after that flush: bytes_in_flight={loss.bytes_in_flight} "
          f"congestion_window={loss.congestion_window} (private)")
    print(f"[{lib}] 10000 x 1000 B datagram frames queued: first flush sent {len(out)} packets, "
          f"{len(got)} frames delivered; first id {int.from_bytes(got[0].data[:4], 'big') if got else None}; "
          f"still pending: {pending}")


def close_and_release(lib):
    QuicConnection, config, odcid, tweak, ev = lib_api(lib)
    c, s, _ = shake(lib, config(True), config(False))
    c.close(error_code=0, reason_phrase="bye")
    now = time.monotonic()
    for d, _ in c.datagrams_to_send(now=now):
        s.receive_datagram(d, ADDR, now=now)
    evs = names(iter(s.next_event, None))
    print(f"[{lib}] peer CONNECTION_CLOSE: server _close_event={s._close_event!r}; "
          f"public events now {evs}; get_timer in {s.get_timer() - now:.3f} s")
    rtt = (c._loss._rtt_smoothed if lib == "aioquic" else c._core.smoothed_rtt)
    print(f"[{lib}] smoothed RTT (private) = {rtt}")
    gc.collect()
    gc.disable()
    wc, ws = weakref.ref(c), weakref.ref(s)
    del c, s
    alive = (wc() is not None, ws() is not None)
    gc.enable()
    n = gc.collect()
    print(f"[{lib}] after del without gc: alive={alive} (True = freed only by the cyclic GC); "
          f"gc.collect found {n} objects")


if __name__ == "__main__":
    for lib in ("aioquic", "qh3"):
        exporter_check(lib)
    qh3_pinning()
    qh3_pmtu()
    for lib in ("aioquic", "qh3"):
        datagram_backlog(lib)
        close_and_release(lib)
