"""Offer admission: the policy alone (pure, explicit times), then attacks on a callee through a
real dhtnode: a flood of valid offers from fresh identities, one dialer's rapid offers, and
forged offers under a friend's fingerprint."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from unittest import mock

import pytest

from tests.nodes import config_for
from tests.waiting import eventually
from tierlink.errors import RecordError
from tierlink.identity import Identity
from tierlink.node import Node
from tierlink.node.admission import GENERAL, RESERVED, Admission, AdmissionLimits
from tierlink.wire.dhtkeys import offers_key
from tierlink.wire.records import CandidateInfo
from tierlink.wire.signaling import SessionDescription, encode_offer, new_session_id

A = "a" * 128
B = "b" * 128
FRIEND = "f" * 128


def refusal(call: object, *args: object, **kw: object) -> str:
    """The reason of the RecordError ``call(*args, **kw)`` raises."""
    with pytest.raises(RecordError) as exc:
        call(*args, **kw)  # type: ignore[operator]
    return exc.value.reason


# -- the policy --------------------------------------------------------------------------------
def test_opening_budget_allows_its_burst_then_its_rate() -> None:
    adm = Admission(AdmissionLimits(open_rate=10.0, open_burst=3), now=0.0)
    for _ in range(3):
        adm.may_open(0.0)
    assert refusal(adm.may_open, 0.0) == "busy-open"
    assert refusal(adm.may_open, 0.05) == "busy-open"  # half a token back
    adm.may_open(0.1)
    assert adm.refused == {"busy-open": 2}


def test_one_dialer_is_limited_and_another_is_not() -> None:
    adm = Admission(AdmissionLimits(dialer_rate=1.0, dialer_burst=2), now=0.0)
    tickets = [adm.admit(A, 0.0) for _ in range(2)]
    assert refusal(adm.admit, A, 0.0) == "rate-limited"
    adm.admit(B, 0.0)  # B has a bucket of its own
    for t in tickets:
        adm.finish(t, 0.5, connected=False)  # failed answers: no refund
    assert refusal(adm.admit, A, 0.5) == "rate-limited"
    adm.admit(A, 1.0)  # one token refilled after 1 s
    assert adm.refused == {"rate-limited": 2}


def test_a_session_that_completes_a_channel_refunds_its_tokens() -> None:
    """A peer reconnecting in a loop (every answer ends in a channel) is never limited."""
    adm = Admission(AdmissionLimits(dialer_rate=0.001, dialer_burst=2, answer_rate=0.001,
                                    answer_burst=2), now=0.0)
    for i in range(50):
        adm.finish(adm.admit(A, float(i)), float(i), connected=True)
    assert adm.refused == {}
    assert adm.sessions == 0


def test_the_general_pool_fills_and_the_reserved_lane_stays_open() -> None:
    adm = Admission(AdmissionLimits(max_sessions=2, reserved_sessions=1), now=0.0)
    flood = [adm.admit(f"{i:0128x}", 0.0) for i in range(2)]
    assert all(t.lane == GENERAL for t in flood)
    assert refusal(adm.admit, A, 0.0) == "busy"  # a stranger: the general pool is full
    friend = adm.admit(FRIEND, 0.0, allow_listed=True)
    assert friend.lane == RESERVED
    assert refusal(adm.admit, FRIEND, 0.0, allow_listed=True) == "busy"  # the lane is full too
    adm.finish(flood[0], 1.0, connected=False)
    assert adm.admit(A, 1.0).lane == GENERAL
    assert adm.sessions == 3
    assert adm.refused == {"busy": 2}


def test_a_busy_refusal_does_not_spend_the_dialers_tokens() -> None:
    adm = Admission(AdmissionLimits(max_sessions=1, reserved_sessions=0, dialer_burst=1),
                    now=0.0)
    first = adm.admit(A, 0.0)
    for _ in range(5):
        assert refusal(adm.admit, B, 0.0) == "busy"
    adm.finish(first, 0.0, connected=True)
    adm.admit(B, 0.0)  # B's one token is still there


def test_answers_per_second_are_bounded_per_lane() -> None:
    adm = Admission(AdmissionLimits(answer_rate=2.0, answer_burst=2, max_sessions=100),
                    now=0.0)
    for i in range(2):
        adm.finish(adm.admit(f"{i:0128x}", 0.0), 0.0, connected=False)
    assert refusal(adm.admit, A, 0.0) == "busy"
    assert adm.admit(FRIEND, 0.0, allow_listed=True).lane == RESERVED
    assert adm.admit(A, 0.5).lane == GENERAL  # one answer token back


def test_a_peer_dialed_recently_takes_the_reserved_lane_until_it_expires() -> None:
    adm = Admission(AdmissionLimits(recent_peer_s=10.0), now=0.0)
    assert adm.lane_of(A, 0.0) == GENERAL
    adm.dialed(A, 5.0)
    assert adm.lane_of(A, 15.0) == RESERVED
    assert adm.lane_of(A, 15.1) == GENERAL
    assert adm.lane_of(B, 15.0, allow_listed=True) == RESERVED


def test_tracked_dialers_and_peers_are_bounded() -> None:
    adm = Admission(AdmissionLimits(max_tracked=3, dialer_burst=1), now=0.0)
    for i in range(10):
        adm.dialed(f"{i:0128x}", 0.0)
    assert [adm.lane_of(f"{i:0128x}", 0.0) for i in (0, 9)] == [GENERAL, RESERVED]
    adm.admit(A, 0.0)
    for i in range(3):
        adm.admit(f"{i:0128x}", 0.0)
    adm.admit(A, 0.0)  # A's empty bucket was forgotten: a fresh one, never a smaller one


@pytest.mark.parametrize("bad", [dict(open_rate=0.0), dict(dialer_burst=0),
                                 dict(max_sessions=0), dict(reserved_sessions=-1)])
def test_limits_are_checked(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        AdmissionLimits(**bad)  # type: ignore[arg-type]


# -- attacks on a callee -----------------------------------------------------------------------
#: The flood: valid offers from this many fresh identities (each a new fingerprint).
FLOOD = 200


@pytest.fixture
def sink() -> Iterator[tuple[str, int]]:
    """A UDP socket on 127.0.0.2 that never answers: checks to it run until ICE gives up."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.2", 0))
    try:
        yield sock.getsockname()
    finally:
        sock.close()


def offer_to(callee: Node, dialer: Identity, targets: tuple[tuple[str, int], ...]) -> bytes:
    """A valid offer from ``dialer`` to ``callee`` whose candidates are ``targets``."""
    cands = tuple(CandidateInfo(str(i), 1, "udp", 2**24, host, port, "host", None, None)
                  for i, (host, port) in enumerate(targets))
    params = SessionDescription("atk" + "x" * 5, "p" * 22, cands)
    value, _ = encode_offer(dialer, callee.fingerprint, callee.identity.kem_public_key,
                            new_session_id(), params)
    return value


async def put_all(node: Node, callee: Node, values: list[bytes]) -> None:
    """Put ``values`` under ``callee``'s offers key through ``node``'s DHT client."""
    assert node.dht is not None
    dht, key = node.dht, offers_key(callee.fingerprint)
    for i in range(0, len(values), 32):
        await asyncio.gather(*(dht.put(key, v) for v in values[i:i + 32]))


@pytest.mark.parametrize("friend_kind", ["dialed-recently", "allow-listed"])
async def test_a_flood_from_fresh_identities_does_not_starve_a_friend(
    dht_node, sink, friend_kind: str,
) -> None:
    friend_id = Identity.generate()
    allow = None if friend_kind == "dialed-recently" else {friend_id.fingerprint}
    callee = Node(config_for(dht_node, allow=allow))
    friend = Node(config_for(dht_node, identity=friend_id))
    attacker = Node(config_for(dht_node))
    async with callee, friend, attacker:
        if friend_kind == "dialed-recently":
            conn = await callee.connect(friend.fingerprint)
            await conn.close()
        flood = [offer_to(callee, Identity.generate(), (sink,)) for _ in range(FLOOD)]
        await put_all(attacker, callee, flood)
        general = callee.config.admission.max_sessions

        def flooded() -> bool:
            refused = callee.offer_rejections
            handled = callee.offers_answered + refused["busy"] + refused["not-allowed"]
            return handled >= FLOOD

        await eventually(flooded, 30, f"the callee to handle the {FLOOD} flood offers")
        stats = callee.stats()
        if allow is None:
            # Every session of the general pool runs ICE against the sink until it gives up.
            assert stats["offers_in_flight"] == general == callee.offers_answered
            assert stats["offer_rejections"] == {"busy": FLOOD - general}
        else:
            assert stats["offer_rejections"] == {"not-allowed": FLOOD}
        conn = await friend.connect(callee.fingerprint)
        try:
            incoming = await callee.accept(timeout=10)
            assert incoming is not None and incoming.remote_fingerprint == friend.fingerprint
            await conn.send(b"through the flood")
            assert await incoming.recv(5) == b"through the flood"
            await incoming.close()
        finally:
            await conn.close()


async def test_one_dialers_rapid_offers_are_limited_and_forgeries_spend_no_quota(
    dht_node,
) -> None:
    """A dialer's offers beyond its burst are refused ``rate-limited``; offers under a
    friend's fingerprint that fail a check (here: the signature) are refused before
    admission and leave the friend's whole burst intact."""
    limits = AdmissionLimits(dialer_rate=0.001)  # no refill within the test
    callee = Node(config_for(dht_node, admission=limits))
    attacker = Node(config_for(dht_node))
    friend = Identity.generate()
    burst = limits.dialer_burst
    async with callee, attacker:
        # No candidates: each answered session fails ICE at once (no pool pressure).
        rapid = [offer_to(callee, attacker.identity, ()) for _ in range(burst + 12)]
        await put_all(attacker, callee, rapid)
        await eventually(lambda: callee.offer_rejections["rate-limited"] == 12
                         and callee.offers_answered == burst, 20,
                         "the attacker's burst answered, the 12 offers over it refused")

        real_sign = Identity.sign

        def bad_sign(self: Identity, data: bytes) -> bytes:
            signature = bytearray(real_sign(self, data))
            signature[7] ^= 0x01
            return bytes(signature)

        with mock.patch.object(Identity, "sign", bad_sign):  # the friend's name, a bad signature
            forged = [offer_to(callee, friend, ()) for _ in range(3 * burst)]
        await put_all(attacker, callee, forged)
        await eventually(lambda: callee.offer_rejections["signature"] == 3 * burst, 20,
                         "the forged offers refused")
        genuine = [offer_to(callee, friend, ()) for _ in range(burst)]
        await put_all(attacker, callee, genuine)  # anyone may carry a friend's real offers
        await eventually(lambda: callee.offers_answered == 2 * burst, 20,
                         "the friend's whole burst answered")
        await put_all(attacker, callee, [offer_to(callee, friend, ())])
        await eventually(lambda: callee.offer_rejections["rate-limited"] == 13, 20,
                         "the friend's next offer over its burst")
        assert dict(callee.offer_rejections) == {"rate-limited": 13, "signature": 3 * burst}
        await eventually(lambda: callee.stats()["offers_in_flight"] == 0, 20,
                         "every answered session to end")
