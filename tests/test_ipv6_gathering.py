"""IPv6 gathering on loopback (``::1``, asked for explicitly): server-reflexive candidates from
a STUN server reached over IPv6, TURN allocations over an IPv6 server address (and the
family a dual-stack server name is reached over), the IPv6 pair chosen between dual-stack
agents, and the 16-candidate budget applied before an offer is written."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from aioice import stun

from tests.ice_pairs import connect
from tests.waiting import eventually
from tierlink.errors import RecordError
from tierlink.transport.aioice_adapter import IceConnection
from tierlink.transport.gathering import ServerGathering
from tierlink.transport.ice import IceSettings, local_infos
from tierlink.transport.ice_servers import TurnServer
from tierlink.wire.signaling import (
    MAX_CANDIDATES,
    OfferSecret,
    SessionDescription,
    decode_answer,
    encode_answer,
)

DUAL = ["127.0.0.1", "::1"]
USER, PASSWORD = "v6user", "v6password"
#: What a NAT66 / NPTv6 box would show the STUN server (never sent to: no checks run).
TRANSLATED = ("2001:db8::99", 40000)


class StunResponder(asyncio.DatagramProtocol):
    """A STUN server answering Binding requests with ``mapped`` (default: the sender)."""

    def __init__(self, mapped: tuple[str, int] | None = None) -> None:
        self.mapped = mapped
        self.transport: asyncio.DatagramTransport | None = None
        self.asked_by: list[str] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        request = stun.parse_message(data)
        self.asked_by.append(addr[0])
        response = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE,
                                transaction_id=request.transaction_id)
        response.attributes["XOR-MAPPED-ADDRESS"] = self.mapped or (addr[0], addr[1])
        assert self.transport is not None
        self.transport.sendto(bytes(response), addr)


@contextlib.asynccontextmanager
async def stun_server(host: str, mapped: tuple[str, int] | None = None
                      ) -> AsyncIterator[tuple[tuple[str, int], StunResponder]]:
    loop = asyncio.get_running_loop()
    transport, responder = await loop.create_datagram_endpoint(
        lambda: StunResponder(mapped), local_addr=(host, 0))
    try:
        yield transport.get_extra_info("sockname")[:2], responder
    finally:
        transport.close()


async def test_a_v6_host_socket_learns_its_srflx_from_a_v6_stun_server() -> None:
    """Each host socket asks the STUN servers of its own family: the IPv6 one gets its
    translated address (as behind NPTv6), with its base's local preference; an answer equal
    to the base (no NAT) is redundant and dropped."""
    async with stun_server("::1", TRANSLATED) as (v6, v6_seen), \
            stun_server("127.0.0.1") as (v4, v4_seen):
        gathering = ServerGathering(stun_servers=(v6, v4))
        ice = IceConnection(controlling=True, host_addresses=DUAL, servers=gathering)
        try:
            await ice.gather_candidates()
            by = {(c.type, c.host): c for c in ice.local_candidates}
        finally:
            await ice.close()
    assert set(by) == {("host", "127.0.0.1"), ("host", "::1"), ("srflx", TRANSLATED[0])}
    srflx, base = by[("srflx", TRANSLATED[0])], by[("host", "::1")]
    assert (srflx.port, srflx.related_address, srflx.related_port) == (
        TRANSLATED[1], "::1", base.port)
    assert (srflx.priority >> 8) & 0xFFFF == (base.priority >> 8) & 0xFFFF
    assert v6_seen.asked_by == ["::1"] and v4_seen.asked_by == ["127.0.0.1"]
    assert gathering.stats.answered == {f"stun:[::1]:{v6[1]}": 1, f"stun:127.0.0.1:{v4[1]}": 1}


async def test_between_dual_stack_agents_the_ipv6_pair_is_checked_first_and_selected() -> None:
    """Local preference: an IPv6 host candidate ranks above an IPv4 one (RFC 6724 / RFC
    8421), so the IPv6 pair is checked first and, working, selected."""
    a, b = await connect(IceConnection(controlling=True, host_addresses=DUAL),
                         IceConnection(controlling=False, host_addresses=DUAL))
    try:
        await eventually(lambda: a.selected_pair() and b.selected_pair(), what="nomination")
        for ice in (a, b):
            prio = {c.host: c.priority for c in ice.local_candidates}
            assert prio["::1"] > prio["127.0.0.1"]
            pair = ice.selected_pair()
            assert pair is not None
            assert (pair[0].host, pair[1].host) == ("::1", "::1")
    finally:
        await asyncio.gather(a.close(), b.close())


# -- TURN over IPv6 -------------------------------------------------------------------------
def free_port() -> int:
    """A port free for TCP and UDP on 127.0.0.1 and ::1 right now."""
    for _ in range(50):
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
            port = int(probe.getsockname()[1])
        try:
            for family, kind in ((socket.AF_INET, socket.SOCK_STREAM),
                                 (socket.AF_INET, socket.SOCK_DGRAM),
                                 (socket.AF_INET6, socket.SOCK_STREAM),
                                 (socket.AF_INET6, socket.SOCK_DGRAM)):
                with socket.socket(family, kind) as sock:
                    sock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", port))
        except OSError:
            continue
        return port
    raise AssertionError("no free port")


@pytest.fixture
async def coturn(tmp_path: Path) -> AsyncIterator[int]:
    """coturn listening and relaying on 127.0.0.1 and ::1 (UDP and TCP); its port."""
    if shutil.which("turnserver") is None:
        pytest.skip("coturn is not installed (scripts/system-deps.sh test installs it)")
    port = free_port()
    conf = tmp_path / "turnserver.conf"
    conf.write_text("\n".join([
        "listening-ip=127.0.0.1", "listening-ip=::1", "relay-ip=127.0.0.1", "relay-ip=::1",
        f"listening-port={port}", "lt-cred-mech", f"user={USER}:{PASSWORD}",
        "realm=tierlink.test", "fingerprint", "no-tls", "no-dtls", "no-cli",
        "allow-loopback-peers", "no-multicast-peers", f"pidfile={tmp_path / 'turn.pid'}",
        f"userdb={tmp_path / 'turndb'}", f"log-file={tmp_path / 'turn.log'}", "simple-log", "",
    ]))
    proc = subprocess.Popen(["turnserver", "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)

    async def listening() -> bool:
        assert proc.poll() is None, "turnserver exited at start"
        try:
            for host in ("127.0.0.1", "::1"):
                _, writer = await asyncio.open_connection(host, port)
                writer.close()
        except OSError:
            return False
        return True

    try:
        await eventually(listening, what="coturn listening")
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


async def test_turn_allocates_over_an_ipv6_server_address(coturn: int) -> None:
    """An agent with IPv6 only reaches TURN over IPv6; the relayed address is IPv4 (RFC 8656
    default without REQUESTED-ADDRESS-FAMILY), which IPv4-only peers can reach."""
    settings = IceSettings(host_addresses=[],
                           turn_servers=(TurnServer("::1", coturn, USER, PASSWORD, "udp"),))
    a, b = await connect(settings.new_connection(True), settings.new_connection(False))
    try:
        got: list[bytes] = []
        b.set_datagram_handler(got.append)
        a.set_datagram_handler(lambda _: None)
        await eventually(lambda: a.selected_pair() and b.selected_pair(), what="nomination")
        for ice in (a, b):
            (relay,) = ice.local_candidates
            assert (relay.type, relay.host, relay.related_address) == ("relay", "127.0.0.1",
                                                                        "::1")
            assert ice.is_relayed
        a.send_nowait(b"through a relay reached over IPv6")
        await eventually(lambda: got, what="the datagram")
        assert got == [b"through a relay reached over IPv6"]
    finally:
        await asyncio.gather(a.close(), b.close())


async def test_a_dual_stack_turn_name_is_reached_over_the_family_the_agent_has(
    coturn: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A TURN server named by a host name with addresses in both families: an agent with
    IPv4 reaches it over IPv4, an IPv6-only agent over IPv6 (the related address shows the
    family the server saw)."""
    loop = asyncio.get_running_loop()
    resolve = loop.getaddrinfo

    async def fake(host: str, port: int, *, family: int = 0, **kw: Any) -> Any:
        if host == "turn.test":
            host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
        return await resolve(host, port, family=family, **kw)

    monkeypatch.setattr(loop, "getaddrinfo", fake)
    server = TurnServer("turn.test", coturn, USER, PASSWORD, "udp")
    for hosts, seen_as in ((DUAL, "127.0.0.1"), (["::1"], "::1")):
        gathering = ServerGathering(turn_servers=(server,))
        ice = IceConnection(controlling=True, host_addresses=hosts, servers=gathering)
        try:
            await ice.gather_candidates()
            relays = [c for c in ice.local_candidates if c.type == "relay"]
            assert [(c.host, c.related_address) for c in relays] == [("127.0.0.1", seen_as)]
        finally:
            await ice.close()
        assert not gathering.stats.failed


# -- the candidate budget -------------------------------------------------------------------
def open_udp_sockets() -> int:
    return sum(1 for c in psutil.Process(os.getpid()).net_connections("udp"))


async def test_an_agent_with_many_addresses_offers_at_most_sixteen_candidates() -> None:
    """20 host addresses: an offer carrying all of them is refused by every peer's decoder
    (the hostile-DHT bound); the agent keeps 16 and closes the other sockets."""
    addresses = [f"127.0.0.{i}" for i in range(1, 19)] + ["::1"]
    before = open_udp_sockets()
    ice = IceConnection(controlling=True, host_addresses=addresses)
    try:
        await ice.gather_candidates()
        infos = local_infos(ice)
        assert len(infos) == MAX_CANDIDATES
        assert "::1" in {c.host for c in infos}  # the best of its kind always stays
        await eventually(lambda: open_udp_sockets() - before == MAX_CANDIDATES,
                         what="the sockets of the dropped candidates closed")
        secret = OfferSecret(os.urandom(32), os.urandom(16), "ab" * 64, "cd" * 64)

        def answer(candidates: Any) -> SessionDescription:
            sd = SessionDescription("ufrag", "p" * 22, candidates)
            return decode_answer(encode_answer(secret, sd), secret)

        assert answer(infos).candidates == infos
        with pytest.raises(RecordError):  # what sending every candidate would have met
            answer(infos + infos[:4])
    finally:
        await ice.close()
    await eventually(lambda: open_udp_sockets() == before, what="every socket closed")
