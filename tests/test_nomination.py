"""Direct-first nomination: the sans-IO policy with explicit times, the check transaction,
and two agents on loopback where one remote candidate is presented as a TURN relay."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from typing import Any

import pytest
from aioice import stun

from tests.waiting import eventually
from tierlink.protocol.nomination import (
    INITIAL_RTO,
    MAX_EARLY_RESENDS,
    MAX_RTO,
    MIN_RTO,
    GraceSettings,
    Nominate,
    PairFacts,
    Wait,
    check_rto,
    decide,
)
from tierlink.transport.aioice_adapter import IceConnection
from tierlink.transport.aioice_transaction import CheckTransaction
from tierlink.transport.ice import PathTally

GRACE = GraceSettings(floor=0.05, rtt_factor=4.0, cap=0.5)


def pair(key: int, relayed: bool, state: str, at: float | None = None,
         rtt: float | None = None, priority: int | None = None) -> PairFacts:
    prio = priority if priority is not None else (10 if relayed else 100) + key
    return PairFacts(key, relayed, prio, state, at, rtt)  # type: ignore[arg-type]


# -- the policy -------------------------------------------------------------------------------
def test_nothing_succeeded_waits_for_a_check() -> None:
    assert decide([pair(1, False, "pending"), pair(2, True, "failed")], 5.0, GRACE) == Wait()


def test_a_direct_success_is_nominated_at_once_even_with_higher_pairs_pending() -> None:
    pairs = [pair(9, False, "pending"), pair(1, False, "succeeded", 1.0, 0.01),
             pair(2, True, "succeeded", 0.9, 0.001)]
    assert decide(pairs, 1.0, GRACE) == Nominate(1, relayed=False)


def test_the_best_direct_success_wins() -> None:
    pairs = [pair(1, False, "succeeded", 1.0), pair(5, False, "succeeded", 1.1)]
    assert decide(pairs, 1.2, GRACE) == Nominate(5, relayed=False)


def test_a_relay_success_waits_a_multiple_of_its_rtt_for_a_pending_direct_pair() -> None:
    pairs = [pair(1, False, "pending"), pair(2, True, "succeeded", 10.0, 0.03)]
    assert decide(pairs, 10.0, GRACE) == Wait(until=pytest.approx(10.12))
    assert decide(pairs, 10.119, GRACE) == Wait(until=pytest.approx(10.12))
    assert decide(pairs, 10.12, GRACE) == Nominate(2, relayed=True)


def test_a_direct_success_within_the_grace_beats_the_relay() -> None:
    pairs = [pair(1, False, "succeeded", 10.05, None), pair(2, True, "succeeded", 10.0, 0.03)]
    assert decide(pairs, 10.05, GRACE) == Nominate(1, relayed=False)


def test_the_grace_has_a_floor_and_a_cap() -> None:
    fast = [pair(1, False, "pending"), pair(2, True, "succeeded", 0.0, 0.001)]
    assert decide(fast, 0.0, GRACE) == Wait(until=pytest.approx(0.05))
    slow = [pair(1, False, "pending"), pair(2, True, "succeeded", 0.0, 2.0)]
    assert decide(slow, 0.0, GRACE) == Wait(until=pytest.approx(0.5))
    unknown = [pair(1, False, "pending"), pair(2, True, "succeeded", 0.0, None)]
    assert decide(unknown, 0.0, GRACE) == Wait(until=pytest.approx(0.05))


def test_relay_is_nominated_at_once_when_no_direct_pair_is_left() -> None:
    pairs = [pair(1, False, "failed"), pair(2, True, "succeeded", 3.0, 0.2),
             pair(3, True, "pending")]
    assert decide(pairs, 3.0, GRACE) == Nominate(2, relayed=True)


def test_the_grace_runs_from_the_first_relay_success_with_the_best_relay_rtt() -> None:
    pairs = [pair(1, False, "pending"), pair(2, True, "succeeded", 1.0, 0.1, priority=5),
             pair(3, True, "succeeded", 1.05, 0.05, priority=7)]
    # best relayed pair: 3 (RTT 50 ms, grace 200 ms), counted from the first success at 1.0
    assert decide(pairs, 1.1, GRACE) == Wait(until=pytest.approx(1.2))
    assert decide(pairs, 1.2, GRACE) == Nominate(3, relayed=True)


def test_grace_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        GraceSettings(floor=1.0, cap=0.5)
    with pytest.raises(ValueError):
        GraceSettings(rtt_factor=-1)


def test_check_rto_follows_the_largest_rtt_within_bounds() -> None:
    assert check_rto(None) == INITIAL_RTO < 0.5
    assert check_rto(0.0001) == MIN_RTO
    assert check_rto(0.04) == pytest.approx(0.08)
    assert check_rto(10.0) == MAX_RTO


# -- the check transaction ----------------------------------------------------------------------
class FakeProtocol:
    """What a CheckTransaction needs of aioice's StunProtocol: transactions and send_stun."""

    def __init__(self) -> None:
        self.transactions: dict[bytes, Any] = {}
        self.sent: list[stun.Message] = []

    def send_stun(self, message: stun.Message, addr: tuple[str, int]) -> None:
        self.sent.append(stun.parse_message(bytes(message)))


KEY = b"remote-password-remote-pw"


def transaction(protocol: FakeProtocol, rto: float, counts: list[bool]) -> CheckTransaction:
    request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST,
                           attributes={"USERNAME": "them:us", "PRIORITY": 1})
    return CheckTransaction(request, ("127.0.0.1", 9), protocol,  # type: ignore[arg-type]
                            KEY, rto, counts.append)


def response_to(copy: stun.Message, key: bytes = KEY) -> stun.Message:
    response = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE,
                            transaction_id=copy.transaction_id)
    response.add_message_integrity(key)
    return stun.parse_message(bytes(response))


async def test_every_copy_is_a_signed_transaction_of_its_own_and_answers_are_matched() -> None:
    protocol, counts = FakeProtocol(), []
    t = transaction(protocol, rto=30.0, counts=counts)
    task = asyncio.ensure_future(t.run())
    await eventually(lambda: len(protocol.sent) == 1, what="the first copy")
    assert [t.resend_now() for _ in range(MAX_EARLY_RESENDS + 1)] == [True] * 3 + [False]
    assert len(protocol.sent) == 1 + MAX_EARLY_RESENDS == t.copies and counts == [False] * 3
    assert len({m.transaction_id for m in protocol.sent}) == 4 == len(protocol.transactions)
    assert all(m.check_message_integrity(KEY) and m.attributes["USERNAME"] == "them:us"
               for m in protocol.sent)
    t.response_received(response_to(protocol.sent[0], b"someone-else-password-x"),
                        ("127.0.0.1", 9))
    stranger = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    t.response_received(response_to(stranger), ("127.0.0.1", 9))
    assert not task.done()  # unauthenticated, or not one of our copies: ignored
    t.response_received(response_to(protocol.sent[2]), ("127.0.0.1", 9))
    message, _ = await task
    assert message.message_class == stun.Class.RESPONSE
    assert t.rtt is not None and t.rtt >= 0  # the answered copy's own RTT
    assert protocol.transactions == {} and t.resend_now() is False


async def test_silence_times_out_after_seven_transmissions() -> None:
    protocol, counts = FakeProtocol(), []
    quiet = transaction(protocol, rto=0.001, counts=counts)
    with pytest.raises(stun.TransactionTimeout):
        await quiet.run()
    assert counts == [True] * 6 and len(protocol.sent) == 7  # 6 retransmissions on timeout
    assert protocol.transactions == {}


# -- two agents on loopback ----------------------------------------------------------------------
Dropper = Callable[[IceConnection, tuple[str, int]], bool]


def drop_requests(conn: IceConnection, drop: Dropper) -> None:
    """Drop ``conn``'s connectivity checks (STUN requests) for which ``drop`` says so (a NAT
    that filters them); run after gathering and before connect."""
    for protocol in conn._protocols:  # test plumbing: aioice's sockets of this agent
        send = protocol.send_stun

        def send_stun(message: stun.Message, addr: tuple[str, int], send: Any = send) -> None:
            if message.message_class == stun.Class.REQUEST and drop(conn, addr):
                return
            send(message, addr)

        protocol.send_stun = send_stun  # type: ignore[method-assign]


async def relay_and_direct(grace: GraceSettings, drop: Dropper) -> tuple[IceConnection, ...]:
    """``a`` (controlling) reaches ``b`` at 127.0.0.1 (direct) and at 127.0.0.2, which ``a``
    is told is a TURN relay candidate; ``drop`` filters ``a``'s checks."""
    a = IceConnection(controlling=True, host_addresses=["127.0.0.1"], grace=grace)
    b = IceConnection(controlling=False, host_addresses=["127.0.0.1", "127.0.0.2"])
    await asyncio.gather(a.gather_candidates(), b.gather_candidates())
    for candidate in b.local_candidates:
        c = copy.copy(candidate)
        if c.host == "127.0.0.2":
            c.type, c.priority = "relay", 1000  # below any host candidate
        await a.add_remote_candidate(c)
    for candidate in a.local_candidates:
        await b.add_remote_candidate(candidate)
    for x, y in ((a, b), (b, a)):
        await x.add_remote_candidate(None)
        x.remote_username, x.remote_password = y.local_username, y.local_password
    drop_requests(a, drop)
    await asyncio.wait_for(asyncio.gather(a.connect(), b.connect()), 20)
    return a, b


def remote_host(conn: IceConnection) -> str:
    sel = conn.selected_pair()
    assert sel is not None
    return sel[1].host


async def test_a_direct_pair_that_succeeds_after_the_relay_is_still_nominated() -> None:
    """The direct check is filtered until the relayed pair succeeded (a restricted NAT that
    had not seen the peer yet): aggressive nomination would have selected the relay."""
    a, b = await relay_and_direct(
        GraceSettings(floor=10.0, cap=10.0),
        lambda conn, addr: addr[0] == "127.0.0.1" and conn.check_report()["pairs_succeeded"] == 0,
    )
    try:
        assert remote_host(a) == "127.0.0.1" and not a.is_relayed
        report = a.check_report()
        assert report["first_success"] == "relay"
        assert report["direct_ms"] is not None and report["relay_wait_ms"] is not None
        assert report["checks_resent_early"] + report["checks_retransmitted"] >= 1
        sel = b.selected_pair()
        assert sel is not None and sel[0].host == "127.0.0.1"  # both ends agree
        tally, events = PathTally(), []
        tally.listeners.append(events.append)
        tally.add(a, connected=True, peer="b")
        assert tally.counts["paths_direct"] == tally.counts["direct_after_relay"] == 1
        assert [(e["peer"], e["tier"]) for e in events] == [("b", "direct")]
    finally:
        await a.close()
        await b.close()


async def test_relay_is_nominated_after_the_grace_when_no_direct_check_succeeds() -> None:
    a, b = await relay_and_direct(
        GraceSettings(floor=0.05, cap=0.05), lambda conn, addr: addr[0] == "127.0.0.1"
    )
    try:
        assert remote_host(a) == "127.0.0.2"
        report = a.check_report()
        assert report["first_success"] == "relay" and report["direct_ms"] is None
        assert report["relay_wait_ms"] is not None and report["relay_wait_ms"] > 0
        tally = PathTally()
        tally.add(a, connected=True)
        assert tally.counts["paths_relay"] == tally.counts["relay_after_wait"] == 1
        assert tally.counts["checks_sent"] == report["checks_sent"]
    finally:
        await a.close()
        await b.close()


async def test_a_check_the_peer_filtered_is_resent_when_the_peers_check_arrives() -> None:
    """``b``'s checks are dropped until ``a`` starts (``a``'s NAT had not seen ``b``);
    ``a``'s check then reaches ``b``, and ``b`` resends at once instead of after its
    retransmission timeout."""
    a = IceConnection(controlling=True, host_addresses=["127.0.0.1"])
    b = IceConnection(controlling=False, host_addresses=["127.0.0.1"])
    await asyncio.gather(a.gather_candidates(), b.gather_candidates())
    for x, y in ((a, b), (b, a)):
        for candidate in y.local_candidates:
            await x.add_remote_candidate(candidate)
        await x.add_remote_candidate(None)
        x.remote_username, x.remote_password = y.local_username, y.local_password
    a_started = asyncio.Event()
    dropped: list[int] = []

    def until_a_starts(conn: IceConnection, addr: tuple[str, int]) -> bool:
        if a_started.is_set():
            return False
        dropped.append(1)
        return True

    drop_requests(b, until_a_starts)
    try:
        b_task = asyncio.ensure_future(b.connect())
        await eventually(lambda: dropped, what="b's first check (dropped)")
        a_started.set()
        await asyncio.wait_for(asyncio.gather(a.connect(), b_task), 20)
        assert b.check_report()["checks_resent_early"] >= 1
        assert a.selected_pair() is not None and b.selected_pair() is not None
    finally:
        await a.close()
        await b.close()
