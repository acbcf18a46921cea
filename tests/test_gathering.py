"""Gathering from many STUN and TURN servers: a dead server beside a live one holds nothing
up, TURN over TCP and TLS (verified) against a local coturn, time-limited credentials, TURN
client sockets inside the port range, a TCP relay when UDP goes unanswered, and nodes that
connect that way with their signaling over a DHT proxy."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aioice import stun
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.ice_pairs import connect
from tests.nodes import config_for, dial
from tests.waiting import eventually
from tierlink.dht import DhtNodeProcess
from tierlink.errors import DhtUnavailable
from tierlink.node import Node
from tierlink.transport.aioice_adapter import IceConnection
from tierlink.transport.gathering import ServerGathering
from tierlink.transport.ice import IceSettings
from tierlink.transport.ice_servers import TurnServer

LOOPBACK = ["127.0.0.1"]
USER, PASSWORD, SECRET = "alice", "wonderland", "shared-secret"


class StunResponder(asyncio.DatagramProtocol):
    """A STUN server answering every Binding request with the sender's address."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        request = stun.parse_message(data)
        response = stun.Message(
            message_method=stun.Method.BINDING, message_class=stun.Class.RESPONSE,
            transaction_id=request.transaction_id,
        )
        response.attributes["XOR-MAPPED-ADDRESS"] = addr
        assert self.transport is not None
        self.transport.sendto(bytes(response), addr)


@pytest.fixture
async def live_stun() -> AsyncIterator[tuple[str, int]]:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(StunResponder, local_addr=("127.0.0.1", 0))
    yield transport.get_extra_info("sockname")[:2]
    transport.close()


@pytest.fixture
def dead_udp() -> Iterator[tuple[str, int]]:
    """A UDP port that receives and never answers (a dead server, or UDP blocked on the way)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()


async def test_a_dead_stun_server_beside_a_live_one_does_not_hold_the_dial_up(
    live_stun: tuple[str, int], dead_udp: tuple[str, int]
) -> None:
    settings = IceSettings(host_addresses=LOOPBACK, stun_servers=(dead_udp, live_stun))
    a, b = await connect(settings.new_connection(True), settings.new_connection(False))
    try:
        stats = settings.gathering.stats
        live, dead = (f"stun:{h}:{p}" for h, p in (live_stun, dead_udp))
        assert stats.answered == {live: 2}
        assert stats.abandoned == {dead: 2}  # given up after the live answer, not timed out
        assert not stats.timed_out and not stats.failed
        for ice in (a, b):  # the answer (the host's own address) is a redundant srflx
            assert [c.type for c in ice.local_candidates] == ["host"]
        assert a.selected_pair() is not None
    finally:
        await asyncio.gather(a.close(), b.close())


async def test_only_dead_stun_servers_time_out_and_host_candidates_still_connect(
    dead_udp: tuple[str, int]
) -> None:
    gathering = ServerGathering(stun_servers=(dead_udp,), timeout=0.2)
    a = IceConnection(controlling=True, host_addresses=LOOPBACK, servers=gathering)
    b = IceConnection(controlling=False, host_addresses=LOOPBACK)
    await connect(a, b)
    try:
        assert gathering.stats.timed_out == {f"stun:{dead_udp[0]}:{dead_udp[1]}": 1}
        assert [c.type for c in a.local_candidates] == ["host"]
    finally:
        await asyncio.gather(a.close(), b.close())


# -- a local coturn ------------------------------------------------------------------------
@dataclass
class Coturn:
    port: int
    tls_port: int
    ca_file: str


def free_port() -> int:
    """A port free for both TCP and UDP on loopback right now."""
    for _ in range(50):
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port")


def make_ca(directory: Path, name: str) -> tuple[Path, Any, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = directory / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, key, cert


def make_server_cert(directory: Path) -> tuple[Path, Path, Path]:
    """(CA file, server certificate, server key): the server is 127.0.0.1 and localhost."""
    ca_path, ca_key, ca_cert = make_ca(directory, "test-ca")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = directory / "server.pem", directory / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return ca_path, cert_path, key_path


def start_coturn(directory: Path, auth: list[str]) -> tuple[subprocess.Popen[bytes], Coturn]:
    directory.mkdir()
    ca, cert, key = make_server_cert(directory)
    port, tls_port = free_port(), free_port()
    config = directory / "turnserver.conf"
    config.write_text("\n".join([
        "listening-ip=127.0.0.1", "relay-ip=127.0.0.1", f"listening-port={port}",
        f"tls-listening-port={tls_port}", f"cert={cert}", f"pkey={key}", *auth,
        "realm=tierlink.test", "fingerprint", "no-dtls", "no-cli", "allow-loopback-peers",
        "no-multicast-peers", f"pidfile={directory / 'turnserver.pid'}",
        f"userdb={directory / 'turndb'}", f"log-file={directory / 'turnserver.log'}",
        "simple-log", "",
    ]))
    proc = subprocess.Popen(["turnserver", "-c", str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    return proc, Coturn(port, tls_port, str(ca))


async def coturn_running(proc: subprocess.Popen[bytes], server: Coturn) -> None:
    async def listening() -> bool:
        assert proc.poll() is None, "turnserver exited at start"
        try:
            for port in (server.port, server.tls_port):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
        except OSError:
            return False
        return True

    await eventually(listening, what="coturn listening")


@contextlib.asynccontextmanager
async def running_coturn(directory: Path, auth: list[str]) -> AsyncIterator[Coturn]:
    """coturn on loopback (TURN over UDP, TCP and TLS), or the test skipped without it."""
    if shutil.which("turnserver") is None:
        pytest.skip("coturn is not installed (scripts/system-deps.sh test installs it)")
    proc, server = start_coturn(directory, auth)
    try:
        await coturn_running(proc, server)
        yield server
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
async def coturn(tmp_path: Path) -> AsyncIterator[Coturn]:
    """coturn with a static user (long-term credentials)."""
    async with running_coturn(tmp_path / "coturn", ["lt-cred-mech", f"user={USER}:{PASSWORD}"]
                              ) as server:
        yield server


@pytest.fixture
async def coturn_rest(tmp_path: Path) -> AsyncIterator[Coturn]:
    """coturn with use-auth-secret (the TURN REST scheme's time-limited credentials)."""
    async with running_coturn(tmp_path / "coturn",
                              ["use-auth-secret", f"static-auth-secret={SECRET}"]) as server:
        yield server


def turn(server: Coturn, transport: str, **kw: Any) -> TurnServer:
    port = server.tls_port if transport == "tls" else server.port
    return TurnServer("127.0.0.1", port, USER, PASSWORD, transport, **kw)  # type: ignore[arg-type]


async def relayed_exchange(settings: IceSettings) -> tuple[IceConnection, IceConnection]:
    """Two relay-only agents of ``settings``, connected, having passed a datagram."""
    a, b = await connect(settings.new_connection(True), settings.new_connection(False))
    got: list[bytes] = []
    b.set_datagram_handler(got.append)
    a.set_datagram_handler(lambda _: None)
    await eventually(lambda: a.selected_pair() and b.selected_pair(), what="nomination")
    a.send_nowait(b"through the relay")
    await eventually(lambda: got, what="the datagram")
    assert got == [b"through the relay"]
    assert a.is_relayed and b.is_relayed
    return a, b


@pytest.mark.parametrize("transport", ["tcp", "tls"])
async def test_turn_over_tcp_and_tls_relays(coturn: Coturn, transport: str) -> None:
    server = turn(coturn, transport, ca_file=coturn.ca_file if transport == "tls" else None)
    settings = IceSettings(turn_servers=(server,), relay_only=True)
    a, b = await relayed_exchange(settings)
    await asyncio.gather(a.close(), b.close())
    assert settings.gathering.stats.answered == {server.url: 2}


async def test_turn_over_tls_refuses_a_server_the_ca_did_not_sign(
    coturn: Coturn, tmp_path: Path
) -> None:
    other_ca, _, _ = make_ca(tmp_path, "other-ca")
    server = turn(coturn, "tls", ca_file=str(other_ca))
    settings = IceSettings(host_addresses=LOOPBACK, turn_servers=(server,))
    ice = settings.new_connection(True)
    await ice.gather_candidates()
    types = [c.type for c in ice.local_candidates]
    await ice.close()
    assert types == ["host"]
    assert settings.gathering.stats.failed == {server.url: 1}


async def test_udp_unanswered_gets_a_tcp_relay_without_waiting_for_udp(
    coturn: Coturn, dead_udp: tuple[str, int]
) -> None:
    """UDP to the TURN server goes unanswered (blocked); its TCP allocation is used and UDP
    is given up on after the grace, not after a timeout."""
    blocked = TurnServer(dead_udp[0], dead_udp[1], USER, PASSWORD, "udp")
    settings = IceSettings(turn_servers=(blocked, turn(coturn, "tcp")), relay_only=True,
                           stun_servers=(dead_udp,))
    a, b = await relayed_exchange(settings)
    await asyncio.gather(a.close(), b.close())
    stats = settings.gathering.stats
    assert stats.abandoned[blocked.url] == 2 and not stats.timed_out


async def test_time_limited_credentials_from_coturns_shared_secret(coturn_rest: Coturn) -> None:
    server = TurnServer("127.0.0.1", coturn_rest.port, "bob", "", "tcp", secret=SECRET)
    wrong = TurnServer("127.0.0.1", coturn_rest.port, "bob", "", "udp", secret="not-the-secret")
    settings = IceSettings(turn_servers=(server, wrong), relay_only=True)
    a, b = await relayed_exchange(settings)
    await asyncio.gather(a.close(), b.close())
    assert settings.gathering.stats.answered[server.url] == 2
    assert settings.gathering.stats.failed[wrong.url] == 2


async def test_turn_client_sockets_are_inside_the_port_range(coturn: Coturn) -> None:
    """The relay's related address is the client socket as coturn saw it."""
    base = 20000 + free_port() % 40000
    port_range = (base, base + 9)
    servers = (turn(coturn, "udp"), turn(coturn, "tcp"))
    settings = IceSettings(host_addresses=LOOPBACK, turn_servers=servers,
                           port_range=port_range)
    ice = settings.new_connection(True)
    await ice.gather_candidates()
    candidates = ice.local_candidates
    await ice.close()
    assert sorted(c.type for c in candidates) == ["host", "relay", "relay"]
    ports = [c.port if c.type == "host" else c.related_port for c in candidates]
    assert all(p is not None and base <= p <= base + 9 for p in ports), candidates


# -- nodes -----------------------------------------------------------------------------------
async def node_pair(dht_cluster: list[DhtNodeProcess], **kw: Any) -> tuple[Node, Node]:
    a = Node(config_for(dht_cluster[0], **kw))
    b = Node(config_for(dht_cluster[1], **kw))
    await b.start()
    await a.start()
    return a, b


async def exchange(a: Node, b: Node) -> str:
    """Dial b from a, pass a message each way over the secure channel; the path type."""
    ca, cb = await dial(a, b)
    await ca.send(b"ping")
    assert await cb.recv(10) == b"ping"
    await cb.send(b"pong")
    assert await ca.recv(10) == b"pong"
    return ca.path_type


async def test_a_node_dials_with_a_dead_stun_server_beside_a_live_one(
    dht_cluster: list[DhtNodeProcess], live_stun: tuple[str, int], dead_udp: tuple[str, int]
) -> None:
    a, b = await node_pair(dht_cluster, stun_servers=[dead_udp, live_stun])
    async with a, b:
        assert await exchange(a, b) == "host"
        stats = a.ice_settings.gathering.stats
        assert stats.answered[f"stun:{live_stun[0]}:{live_stun[1]}"] >= 1
        assert stats.abandoned[f"stun:{dead_udp[0]}:{dead_udp[1]}"] >= 1
        assert not stats.timed_out


@pytest.mark.parametrize("transport", ["tcp", "tls"])
async def test_nodes_behind_udp_blocking_firewalls_connect_through_turn_over_tcp_or_tls(
    dht_cluster: list[DhtNodeProcess], coturn: Coturn, dead_udp: tuple[str, int],
    transport: str,
) -> None:
    """UDP to STUN and TURN goes unanswered (blocked); signaling goes through the DHT proxy
    over TCP (HTTP), the channel through a relay allocated over TCP or TLS."""
    blocked = TurnServer(dead_udp[0], dead_udp[1], USER, PASSWORD, "udp")
    relay = turn(coturn, transport, ca_file=coturn.ca_file if transport == "tls" else None)
    a, b = await node_pair(dht_cluster, stun_servers=[dead_udp], turn_servers=[blocked, relay],
                           relay_only=True)
    async with a, b:
        assert await exchange(a, b) == "relay"
        for node in (a, b):
            stats = node.ice_settings.gathering.stats
            assert stats.answered[relay.url] >= 1 and stats.abandoned[blocked.url] >= 1


async def test_an_embedded_dht_node_that_reaches_no_one_says_to_use_a_dht_proxy(
    dead_udp: tuple[str, int]
) -> None:
    if shutil.which("dhtnode") is None:
        pytest.skip("dhtnode not installed (apt-get install dhtnode)")
    node = DhtNodeProcess(bootstrap=[dead_udp], join_timeout=0.5)
    with pytest.raises(DhtUnavailable, match="--dht-proxy https://") as info:
        await node.start()
    assert "UDP may be blocked" in str(info.value)
    assert node.pid is None  # the child is not left running
