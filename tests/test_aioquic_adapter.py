"""The aioquic internals the aioquic adapter relies on still exist and still behave.

Every name in the adapter's PRIVATE_NAMES resolves on the installed aioquic, which must be the
pinned version. Sans-IO: two PinnedQuicConnections exchange datagrams in memory (no sockets),
so an aioquic upgrade that renames or changes any of them fails here, loudly, before the
channel misbehaves.
"""

from __future__ import annotations

import contextlib
import ssl
from typing import Any

import pytest
from aioquic import tls
from aioquic.buffer import Buffer  # type: ignore[attr-defined]
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.congestion.cubic import CubicCongestionControl
from aioquic.quic.congestion.reno import RenoCongestionControl
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import pull_quic_header
from aioquic.quic.recovery import QuicPacketPacer, QuicPacketRecovery, QuicPacketSpace
from cryptography.hazmat.primitives import hashes

from tests.private_names import installed_version, missing, pinned_version
from tierlink.transport import aioquic_adapter
from tierlink.transport.aioquic_adapter import (
    MAX_PACKET_SIZE,
    PIN_MISMATCH_REASON,
    ExporterSecret,
    PinnedQuicConnection,
    close_event,
    forget_rtt_sample,
    initial_destination_cid,
    max_datagram_size,
    pending_datagrams,
    release,
    restamp_in_flight,
    set_max_datagram_size,
    tls_exporter,
)
from tierlink.transport.certs import LocalCertificate, certificate_sha256
from tierlink.transport.channel import DATAGRAM_MAX_PAYLOAD
from tierlink.transport.quic_setup import CONNECTION_ID_LENGTH, MAX_DATAGRAM_SIZE

ADDR = ("0.0.0.0", 0)
BAD_CERTIFICATE = 42  # TLS alert


def _config(cert: LocalCertificate, is_client: bool) -> QuicConfiguration:
    return QuicConfiguration(
        is_client=is_client,
        alpn_protocols=["tierlink/1"],
        certificate=cert.certificate,
        private_key=cert.private_key,
        verify_mode=ssl.CERT_NONE,
        max_datagram_size=MAX_DATAGRAM_SIZE,
        max_datagram_frame_size=65536,
        connection_id_length=CONNECTION_ID_LENGTH,
    )


class Pair:
    """A client and a lazily created server exchanging datagrams in memory."""

    def __init__(self, client_expects: bytes, server_expects: bytes) -> None:
        self.ca, self.cb = LocalCertificate.generate(), LocalCertificate.generate()
        self.client = PinnedQuicConnection(
            configuration=_config(self.ca, True),
            expected_peer_sha256=client_expects or self.cb.sha256,
        )
        self.server_expects = server_expects or self.ca.sha256
        self.server: PinnedQuicConnection | None = None
        self.now = 0.0
        self.client.connect(ADDR, now=self.now)

    def pump(self, rounds: int = 10) -> list[int]:
        """Exchange datagrams until quiet; return the sizes of every datagram sent."""
        sizes: list[int] = []
        for _ in range(rounds):
            self.now += 0.001
            moved = False
            for data, _ in self.client.datagrams_to_send(now=self.now):
                sizes.append(len(data))
                moved = True
                if self.server is None:
                    header = pull_quic_header(Buffer(data=data), CONNECTION_ID_LENGTH)
                    self.server = PinnedQuicConnection(
                        configuration=_config(self.cb, False),
                        expected_peer_sha256=self.server_expects,
                        original_destination_connection_id=header.destination_cid,
                    )
                self.server.receive_datagram(data, ADDR, now=self.now)
            if self.server is not None:
                for data, _ in self.server.datagrams_to_send(now=self.now):
                    sizes.append(len(data))
                    moved = True
                    self.client.receive_datagram(data, ADDR, now=self.now)
            if not moved:
                break
        return sizes


def _events(conn: QuicConnection) -> list[events.QuicEvent]:
    out = []
    while (event := conn.next_event()) is not None:
        out.append(event)
    return out


def test_installed_aioquic_is_the_pinned_version() -> None:
    assert installed_version("aioquic") == pinned_version("aioquic"), (
        "aioquic was upgraded: check every name in the aioquic adapter's PRIVATE_NAMES, then "
        "update the pin"
    )


def test_private_names_resolve_on_the_installed_aioquic() -> None:
    cert = LocalCertificate.generate()
    plain = QuicConnection(configuration=_config(cert, True))  # not ours: ours sets names
    plain.connect(ADDR, now=0.0)
    instances = {
        QuicConnection: plain,
        tls.Context: plain.tls,
        tls.KeySchedule: tls.KeySchedule(tls.CipherSuite.AES_128_GCM_SHA256),
        QuicPacketRecovery: plain._loss,
        QuicPacketSpace: plain._loss.spaces[0],
        QuicPacketPacer: QuicPacketPacer(max_datagram_size=MAX_DATAGRAM_SIZE),
        RenoCongestionControl: RenoCongestionControl(max_datagram_size=MAX_DATAGRAM_SIZE),
        CubicCongestionControl: CubicCongestionControl(max_datagram_size=MAX_DATAGRAM_SIZE),
    }
    problems = missing(aioquic_adapter.PRIVATE_NAMES, "aioquic", instances)
    assert not problems, "aioquic changed:\n" + "\n".join(problems)
    # The defaults the adapter changes are still what it expects to change.
    assert plain.tls._request_client_certificate is False
    assert tls.Group.X25519 in plain.tls._supported_groups


def test_pinned_connection_shadows_nothing_of_aioquic_but_initialize() -> None:
    overridden = {n for n in vars(PinnedQuicConnection) if hasattr(QuicConnection, n)}
    assert overridden - {"__doc__", "__module__"} == {"__init__", "_initialize"}
    cert = LocalCertificate.generate()
    ours = PinnedQuicConnection(configuration=_config(cert, True), expected_peer_sha256=b"")
    plain = QuicConnection(configuration=_config(cert, True))
    added = set(vars(ours)) - set(vars(plain))
    assert added == {
        "expected_peer_sha256", "peer_certificate_sha256", "pin_error", "exporter_secret",
        "early_datagrams", "early_reply",
    }
    assert not any(hasattr(QuicConnection, n) for n in added)


def test_pinned_connection_installs_its_tls_settings() -> None:
    cert = LocalCertificate.generate()
    conn = PinnedQuicConnection(configuration=_config(cert, True), expected_peer_sha256=b"\0" * 32)
    conn.connect(ADDR, now=0.0)
    assert isinstance(conn.tls, tls.Context)
    assert conn.tls._request_client_certificate is True
    assert conn.tls._supported_groups == [tls.Group.X25519]


def test_initial_destination_cid() -> None:
    cert = LocalCertificate.generate()
    conn = PinnedQuicConnection(configuration=_config(cert, True), expected_peer_sha256=b"\0" * 32)
    conn.connect(ADDR, now=0.0)
    initial = conn.datagrams_to_send(now=0.0)[0][0]
    header = pull_quic_header(Buffer(data=initial), CONNECTION_ID_LENGTH)
    assert initial_destination_cid(initial, CONNECTION_ID_LENGTH) == header.destination_cid
    assert len(header.destination_cid) == 8  # aioquic's client picks an 8-byte initial id
    assert initial_destination_cid(b"", CONNECTION_ID_LENGTH) is None
    assert initial_destination_cid(b"\x40" + bytes(40), CONNECTION_ID_LENGTH) is None


def test_mutual_handshake_pins_both_certificates() -> None:
    pair = Pair(b"", b"")
    pair.pump()
    assert pair.server is not None
    assert pair.client.peer_certificate_sha256 == pair.cb.sha256
    # The server saw the client certificate: the request for it reached the client.
    assert pair.server.peer_certificate_sha256 == pair.ca.sha256
    assert certificate_sha256(pair.ca.der) == pair.ca.sha256
    assert any(isinstance(e, events.HandshakeCompleted) for e in _events(pair.client))
    assert any(isinstance(e, events.HandshakeCompleted) for e in _events(pair.server))
    assert close_event(pair.client) is None and close_event(pair.server) is None


def test_tls_exporter_is_one_value_per_connection_shared_by_both_ends() -> None:
    """RFC 8446 §7.5 on both ends: the server has it from the ClientHello on, the client
    from the server's Finished; labels and contexts separate values, connections too."""
    pair = Pair(b"", b"")
    with pytest.raises(RuntimeError):
        tls_exporter(pair.client, b"EXPORTER-test", b"", 32)
    pair.pump(1)  # the ClientHello reaches the server, whose flight reaches the client
    assert pair.server is not None and pair.server.exporter_secret is not None
    assert pair.client.exporter_secret is not None
    pair.pump()
    values = {tls_exporter(c, b"EXPORTER-test", b"", 32) for c in (pair.client, pair.server)}
    assert len(values) == 1
    (value,) = values
    assert tls_exporter(pair.client, b"EXPORTER-other", b"", 32) != value
    assert tls_exporter(pair.client, b"EXPORTER-test", b"ctx", 32) != value
    assert len(tls_exporter(pair.client, b"EXPORTER-test", b"", 48)) == 48
    other = Pair(b"", b"")
    other.pump()
    assert tls_exporter(other.client, b"EXPORTER-test", b"", 32) != value


def _openssl_tls13_pair() -> tuple[Any, Any, list[bytes]]:
    """An OpenSSL TLS 1.3 client and server handshaken in memory, with their key log."""
    from OpenSSL import SSL

    cert = LocalCertificate.generate()
    logged: list[bytes] = []

    def context(server: bool) -> Any:
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
        ctx.set_keylog_callback(lambda _conn, line: logged.append(bytes(line)))
        if server:
            ctx.use_certificate(cert.certificate)
            ctx.use_privatekey(cert.private_key)
        return ctx

    server, client = SSL.Connection(context(True)), SSL.Connection(context(False))
    server.set_accept_state()
    client.set_connect_state()
    for _ in range(10):
        for here, there in ((client, server), (server, client)):
            with contextlib.suppress(SSL.WantReadError):
                here.do_handshake()
            with contextlib.suppress(SSL.WantReadError):
                there.bio_write(here.bio_read(65536))
    return client, server, logged


@pytest.mark.parametrize("context", [b"", b"some context"])
def test_exporter_formula_is_rfc_8446_as_openssl_computes_it(context: bytes) -> None:
    """ExporterSecret.export, from the exporter master secret OpenSSL logs for a TLS 1.3
    connection, gives what OpenSSL's own exporter gives."""
    client, server, logged = _openssl_tls13_pair()
    (line,) = {entry for entry in logged if entry.startswith(b"EXPORTER_SECRET ")}  # both
    secret = bytes.fromhex(line.split()[2].decode())
    suite = client.get_cipher_name()
    algorithm = hashes.SHA384() if suite.endswith("SHA384") else hashes.SHA256()
    label = b"EXPORTER-tierlink-channel-binding"
    ours = ExporterSecret(algorithm, secret).export(label, context, 32)
    assert ours == client.export_keying_material(label, 32, context)
    assert ours == server.export_keying_material(label, 32, context)


@pytest.mark.parametrize("side", ["client", "server"])
def test_pin_mismatch_aborts_with_bad_certificate(side: str) -> None:
    wrong = b"\x01" * 32
    pair = Pair(wrong if side == "client" else b"", wrong if side == "server" else b"")
    pair.pump()
    assert pair.server is not None
    rejecting, other = (
        (pair.client, pair.server) if side == "client" else (pair.server, pair.client)
    )
    assert rejecting.pin_error is not None and wrong.hex() in rejecting.pin_error
    assert rejecting.peer_certificate_sha256 is None
    local = close_event(rejecting)
    assert local is not None and local.error_code == 0x100 + BAD_CERTIFICATE
    remote = close_event(other)
    assert remote is not None and remote.error_code == 0x100 + BAD_CERTIFICATE
    assert remote.reason_phrase == PIN_MISMATCH_REASON
    if side == "client":  # (a rejected client finished its side before the server checked)
        assert not any(isinstance(e, events.HandshakeCompleted) for e in _events(other))


def test_pending_datagrams_and_payload_limit() -> None:
    pair = Pair(b"", b"")
    pair.pump()
    assert pair.server is not None
    _events(pair.server)
    pending = pending_datagrams(pair.client)
    assert len(pending) == 0
    pair.client.send_datagram_frame(b"x" * DATAGRAM_MAX_PAYLOAD)
    pair.client.send_datagram_frame(b"y")
    assert len(pending) == 2
    sizes = pair.pump()
    assert len(pending) == 0
    assert max(sizes) <= MAX_DATAGRAM_SIZE
    got = [e.data for e in _events(pair.server) if isinstance(e, events.DatagramFrameReceived)]
    assert got == [b"x" * DATAGRAM_MAX_PAYLOAD, b"y"]


def test_datagram_payload_limit_has_headroom() -> None:
    """The largest payload that fits one packet is at least DATAGRAM_MAX_PAYLOAD."""
    pair = Pair(b"", b"")
    pair.pump()
    assert pair.server is not None
    _events(pair.server)
    largest = 0
    for size in range(DATAGRAM_MAX_PAYLOAD, MAX_DATAGRAM_SIZE):
        pair.client.send_datagram_frame(b"z" * size)
        pair.pump()
        if pending_datagrams(pair.client):
            pending_datagrams(pair.client).clear()  # stuck: did not fit in an empty packet
            break
        largest = size
    assert largest >= DATAGRAM_MAX_PAYLOAD
    print(f"largest single-packet datagram payload: {largest} bytes")


@pytest.mark.parametrize("size", [1452, MAX_PACKET_SIZE])
def test_raised_packet_size_is_used_and_data_arrives_intact(size: int) -> None:
    """set_max_datagram_size: larger packets, none above the size, stream bytes exact."""
    pair = Pair(b"", b"")
    pair.pump()
    assert pair.server is not None
    assert max_datagram_size(pair.client) == MAX_DATAGRAM_SIZE
    set_max_datagram_size(pair.client, size)
    assert max_datagram_size(pair.client) == size
    assert pair.client._loss.congestion_window >= min(10 * size, max(14_720, 2 * size))
    data = bytes(range(256)) * 1024  # 256 KiB
    sid = pair.client.get_next_available_stream_id(is_unidirectional=True)
    pair.client.send_stream_data(sid, data, end_stream=True)
    received = bytearray()
    sizes: list[int] = []
    for _ in range(200):
        pair.now += 0.001
        for dgram, _ in pair.client.datagrams_to_send(now=pair.now):
            sizes.append(len(dgram))
            pair.server.receive_datagram(dgram, ADDR, now=pair.now)
        for dgram, _ in pair.server.datagrams_to_send(now=pair.now):
            pair.client.receive_datagram(dgram, ADDR, now=pair.now)
        for event in _events(pair.server):
            if isinstance(event, events.StreamDataReceived):
                received += event.data
        if len(received) == len(data):
            break
    assert bytes(received) == data
    assert max(sizes) <= size
    assert max(sizes) > size - 64  # full packets of the new size were built
    with pytest.raises(ValueError):
        set_max_datagram_size(pair.client, MAX_PACKET_SIZE + 1)


def test_restamp_and_forget_rtt() -> None:
    """The adapters that keep flights sent in the signaling out of the RTT estimate."""
    cert = LocalCertificate.generate()
    conn = PinnedQuicConnection(configuration=_config(cert, True), expected_peer_sha256=b"\0" * 32)
    conn.connect(ADDR, now=1.0)
    conn.datagrams_to_send(now=1.0)
    in_flight = [p for space in conn._loss.spaces for p in space.sent_packets.values()]
    assert in_flight and all(p.sent_time == 1.0 for p in in_flight)
    restamp_in_flight(conn, 5.0)
    assert all(p.sent_time == 5.0 for p in in_flight)
    assert conn._loss._time_of_last_sent_ack_eliciting_packet == 5.0
    conn._loss._rtt_initialized = True
    forget_rtt_sample(conn)
    assert conn._loss._rtt_initialized is False


def test_release_frees_a_finished_connection_without_the_cycle_collector() -> None:
    """aioquic's connection refers to itself; released, reference counting frees it."""
    import gc
    import weakref

    pair = Pair(b"", b"")
    pair.pump()
    assert pair.server is not None
    pair.client.close(error_code=0)
    pair.pump()
    refs = [weakref.ref(pair.client), weakref.ref(pair.server)]
    tls_ref = weakref.ref(pair.client.tls)
    gc.disable()
    try:
        release(pair.client)
        release(pair.server)
        pair.client = pair.server = None  # type: ignore[assignment]
        assert all(r() is None for r in refs) and tls_ref() is None
    finally:
        gc.enable()


def test_unreleased_connection_needs_the_cycle_collector() -> None:
    """Why release exists: without it the same connection outlives its last reference."""
    import gc
    import weakref

    pair = Pair(b"", b"")
    pair.pump()
    ref = weakref.ref(pair.client)
    gc.disable()
    try:
        pair.client = None  # type: ignore[assignment]
        assert ref() is not None  # still alive: a reference cycle holds it
    finally:
        gc.enable()
    gc.collect()
    assert ref() is None
