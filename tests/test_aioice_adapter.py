"""The aioice adapter: every aioice internal it relies on still exists (on the pinned aioice,
else the test says which name broke), and the behaviour built on them."""

from __future__ import annotations

import asyncio
import socket
from typing import Any, cast

import aioice
import pytest
from aioice import Candidate, stun
from aioice.ice import CandidatePair, StunProtocol, get_host_addresses
from aioice.turn import TurnTransport

from tests.ice_pairs import connect
from tests.private_names import installed_version, missing, pinned_version
from tests.waiting import eventually
from tierlink.transport import (
    aioice_adapter,
    aioice_checks,
    aioice_consent,
    aioice_gather,
    aioice_socket,
    aioice_transaction,
    aioice_turn,
)
from tierlink.transport.aioice_adapter import IceConnection
from tierlink.transport.aioice_checks import ScheduledChecks
from tierlink.transport.aioice_gather import machine_addresses
from tierlink.transport.aioice_socket import RECV_BATCH

#: The aioice methods IceConnection and its base ScheduledChecks override on purpose (each
#: listed in PRIVATE_NAMES).
OVERRIDES = {
    "__init__", "gather_candidates", "get_component_candidates", "data_received", "close",
}
CHECK_OVERRIDES = {"connect", "check_start", "check_incoming"}


def test_installed_aioice_is_the_pinned_version() -> None:
    assert installed_version("aioice") == pinned_version("aioice") == aioice.__version__, (
        "aioice was upgraded: check every name in the aioice adapter's PRIVATE_NAMES and the "
        "upstream line references in aioice_adapter.py, then update the pin"
    )


async def test_private_names_resolve_on_the_installed_aioice() -> None:
    plain = aioice.Connection(ice_controlling=True)  # not ours: our attributes would mask
    protocol = StunProtocol(plain)
    candidate = Candidate("1", 1, "udp", 1, "127.0.0.1", 9, "host")
    instances = {
        aioice.Connection: plain,
        StunProtocol: protocol,
        CandidatePair: CandidatePair(protocol, candidate),
        stun.Message: stun.Message(stun.Method.BINDING, stun.Class.REQUEST),
    }
    names = (
        aioice_adapter.PRIVATE_NAMES + aioice_checks.PRIVATE_NAMES
        + aioice_transaction.PRIVATE_NAMES + aioice_socket.PRIVATE_NAMES
        + aioice_turn.PRIVATE_NAMES + aioice_consent.PRIVATE_NAMES + aioice_gather.PRIVATE_NAMES
    )
    problems = missing(names, "aioice", instances)
    assert not problems, "aioice changed:\n" + "\n".join(problems)


async def test_a_relayed_pair_has_no_socket_to_batch_or_mark() -> None:
    """aioice's TURN transport has no "socket" extra info: no batch reader, no DF bit."""
    relay = TurnTransport(cast(Any, None))
    assert relay.get_extra_info("socket") is None
    protocol = StunProtocol(cast(Any, None))
    protocol.transport = cast(Any, relay)
    assert aioice_socket.udp_socket(protocol) is None
    assert aioice_socket.forbid_fragmentation(protocol) is False


def test_a_changed_name_or_signature_is_reported() -> None:
    problems = missing(
        ["aioice.ice.Connection._no_such_name", "aioice.ice.Connection.check_incoming(message)"],
        "aioice", {},
    )
    assert len(problems) == 2
    assert "'_no_such_name' is missing" in problems[0] and "aioice==0.13.0" in problems[0]
    assert "takes (message, addr, protocol), not (message)" in problems[1]


def test_ice_connection_shadows_nothing_of_aioice_but_its_overrides() -> None:
    plain = {"__doc__", "__module__", "__dict__", "__weakref__"}
    overridden = {n for n in vars(IceConnection) if hasattr(aioice.Connection, n)}
    assert overridden - plain == OVERRIDES
    in_checks = {n for n in vars(ScheduledChecks) if hasattr(aioice.Connection, n)}
    assert in_checks - plain == CHECK_OVERRIDES
    assert IceConnection.__mro__[1:3] == (ScheduledChecks, aioice.Connection)
    ours = set(vars(IceConnection(controlling=True))) - set(vars(aioice.Connection(True)))
    assert ours and all(n.startswith("_tl_") for n in ours)
    assert not any(hasattr(aioice.Connection, n) for n in ours)


async def connected_pair(
    batch_receive: bool = True, port_range: tuple[int, int] | None = None
) -> tuple[IceConnection, IceConnection]:
    a = IceConnection(controlling=True, host_addresses=["127.0.0.1"], port_range=port_range)
    b = IceConnection(
        controlling=False, host_addresses=["127.0.0.1"], batch_receive=batch_receive,
        port_range=port_range,
    )
    return await connect(a, b)


async def first_pass_then_all(got: list[bytes], total: int) -> int:
    """How many datagrams the first delivering loop pass handed over; then wait for all."""
    await eventually(lambda: got, 10, "the first datagram", interval=0)  # one pass per poll
    first = len(got)
    await eventually(lambda: len(got) == total, what=f"all {total} datagrams")
    return first


async def test_gathering_is_restricted_to_the_allow_list() -> None:
    conn = IceConnection(controlling=True, host_addresses=["127.0.0.1"])
    try:
        await conn.gather_candidates()
        assert [(c.host, c.type) for c in conn.local_candidates] == [("127.0.0.1", "host")]
    finally:
        await conn.close()


async def test_without_allow_list_gathering_is_on_the_machines_reachable_addresses() -> None:
    conn = IceConnection(controlling=True)
    try:
        await conn.gather_candidates()
        hosts = [c.host for c in conn.local_candidates]
        assert hosts == machine_addresses()
        listed = get_host_addresses(use_ipv4=True, use_ipv6=False)
        assert [h for h in hosts if ":" not in h] == [a for a in listed if a != "127.0.0.1"]
        assert "127.0.0.1" not in hosts and "::1" not in hosts
    finally:
        await conn.close()


async def test_relay_only_gathers_no_host_candidate_even_with_an_allow_list() -> None:
    conn = IceConnection(controlling=True, host_addresses=["127.0.0.1"], relay_only=True)
    try:
        await conn.gather_candidates()  # no TURN server: nothing at all
        assert conn.local_candidates == []
    finally:
        await conn.close()


async def test_handler_send_nowait_and_selected_pair() -> None:
    a, b = await connected_pair()
    try:
        got: list[bytes] = []
        a.send_nowait(b"early")  # before the handler: kept in the small pending buffer
        await eventually(lambda: b.held_datagrams == 1, what="the early datagram held")
        b.set_datagram_handler(got.append)
        assert got == [b"early"] and b.held_datagrams == 0
        a.send_nowait(b"late")
        await eventually(lambda: len(got) == 2, what="the late datagram")
        assert got == [b"early", b"late"]
        sel = a.selected_pair()
        assert sel is not None and sel[0].host == "127.0.0.1" and not a.is_relayed
    finally:
        await a.close()
        await b.close()


@pytest.mark.parametrize("batch", [True, False])
async def test_burst_is_handled_in_one_pass_in_order_and_close_frees_the_socket(
    batch: bool,
) -> None:
    a, b = await connected_pair(batch)
    try:
        got: list[bytes] = []
        b.set_datagram_handler(got.append)
        burst = [b"\x40" + i.to_bytes(2, "big") for i in range(RECV_BATCH + 36)]
        for data in burst:
            a.send_nowait(data)
        # asyncio reads one datagram per pass; the adapter drains the socket behind it
        assert await first_pass_then_all(got, len(burst)) == (RECV_BATCH if batch else 1)
        assert got == burst
        sel = b.selected_pair()
        assert sel is not None
        port = sel[0].port
    finally:
        await a.close()
        await b.close()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", port))  # the socket's duplicate was closed with the connection


async def test_keep_reading_ends_a_batch_without_losing_anything() -> None:
    """A handler whose consumer is behind stops the batch; the rest waits in the socket."""
    a, b = await connected_pair()
    try:
        got: list[bytes] = []
        room = 5  # the consumer takes 5 per loop pass, then wants the loop back
        b.set_datagram_handler(got.append, keep_reading=lambda: len(got) % room != 0)
        burst = [b"\x40" + i.to_bytes(2, "big") for i in range(40)]
        for data in burst:
            a.send_nowait(data)
        assert await first_pass_then_all(got, len(burst)) == room  # batch ended early
        assert got == burst  # the rest was read in later passes, in order
    finally:
        await a.close()
        await b.close()


def test_check_interval_below_rfc_minimum_is_refused() -> None:
    with pytest.raises(ValueError, match="check_interval"):
        IceConnection(controlling=True, host_addresses=["127.0.0.1"], check_interval=0.001)


async def test_connect_with_several_pairs_and_fast_pacing() -> None:
    addrs = ["127.0.0.1", "127.0.0.2"]
    a = IceConnection(controlling=True, host_addresses=addrs, check_interval=0.005)
    b = IceConnection(controlling=False, host_addresses=addrs, check_interval=0.005)
    try:
        await connect(a, b)
        got: list[bytes] = []
        b.set_datagram_handler(got.append)
        a.send_nowait(b"\x40hello")
        await eventually(lambda: got, what="the datagram")
        assert got == [b"\x40hello"]
    finally:
        await a.close()
        await b.close()


async def test_connect_without_remote_candidates_fails() -> None:
    a = IceConnection(controlling=True, host_addresses=["127.0.0.1"])
    try:
        await a.gather_candidates()
        await a.add_remote_candidate(None)
        a.remote_username, a.remote_password = "user", "password-password-pw"
        with pytest.raises(ConnectionError, match="ICE negotiation failed"):
            await asyncio.wait_for(a.connect(), 10)
        assert a.selected_pair() is None
    finally:
        await a.close()


async def test_port_range_binds_host_sockets_inside_it() -> None:
    a, b = await connected_pair(port_range=(41000, 41003))
    c = IceConnection(controlling=False, host_addresses=["127.0.0.1"], port_range=(41004, 41004))
    d = IceConnection(controlling=False, host_addresses=["127.0.0.1"], port_range=(41004, 41004))
    try:
        ports = {c.port for x in (a, b) for c in x.local_candidates}
        assert len(ports) == 2 and all(41000 <= p <= 41003 for p in ports)
        await c.gather_candidates()
        with pytest.raises(OSError, match="no free UDP port"):
            await d.gather_candidates()
        with pytest.raises(ValueError, match="port range"):
            IceConnection(controlling=True, port_range=(5000, 4000))
    finally:
        for x in (a, b, c, d):
            await x.close()
