"""Cheap checks before costly ones, and bounded receiver state, written as attacks.

A value's claimed signer and addressee are readable before its ML-DSA signature is verified:
a value for someone else, or from a sender the receiver does not allow, must cost no
verification. The answerer's replay cache stays bounded whatever the DHT delivers.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.verify_counter import VerifyCounter
from tierlink.dht.record_book import RecordBook
from tierlink.errors import RecordError
from tierlink.identity import Identity
from tierlink.node.answer import Answerer, SeenSessions
from tierlink.node.answered import AnsweredSessions
from tierlink.node.config import NodeConfig
from tierlink.offline.delivered import DeliveredLog
from tierlink.offline.inbox import Inbox
from tierlink.wire.ack import create_ack, open_ack
from tierlink.wire.envelope import ack_token, create_envelope, open_envelope
from tierlink.wire.records import MAX_CLOCK_SKEW_MS, CandidateInfo, PeerRecord, now_ms
from tierlink.wire.signaling import (
    MAX_OFFER_LIFETIME_S,
    SessionDescription,
    decode_offer,
    encode_offer,
    new_session_id,
)

ME = Identity.generate()
FRIEND = Identity.generate()
STRANGER = Identity.generate()
OTHER = Identity.generate()
PARAMS = SessionDescription(
    "uFrg", "p" * 22, (CandidateInfo("1", 1, "udp", 2130706431, "127.0.0.1", 40000, "host"),)
)


@pytest.fixture
def log(tmp_path: Path) -> Iterator[DeliveredLog]:
    d = DeliveredLog(tmp_path / "offline.sqlite", synchronous="NORMAL")
    yield d
    d.close()


def envelope(sender: Identity, to: Identity = ME) -> bytes:
    return create_envelope(sender, to.fingerprint, to.kem_public_key, b"hi", 3600.0)[0]


def offer(dialer: Identity, to: Identity = ME) -> bytes:
    return encode_offer(dialer, to.fingerprint, to.kem_public_key, new_session_id(), PARAMS)[0]


def answerer(allow: set[str] | None = None, data_dir: Path | None = None) -> Answerer:
    """An answerer whose offer checks run without a DHT, endpoint or tasks."""
    none: Any = None
    return Answerer(none, ME, NodeConfig(ME, allow=allow, data_dir=data_dir), none, none, none)


# -- offline envelopes -----------------------------------------------------------------------
def test_stranger_envelope_to_allow_listed_inbox_costs_no_verification(
    log: DeliveredLog, verifies: VerifyCounter
) -> None:
    inbox = Inbox(ME, log, allow=lambda fp: fp == FRIEND.fingerprint)
    res = inbox.process([envelope(STRANGER)])
    assert res.rejected == {"not-allowed": 1} and verifies.calls == 0
    res = inbox.process([envelope(FRIEND)])
    assert [e.sender_fingerprint for e in res.accepted] == [FRIEND.fingerprint]
    assert verifies.calls == 1


def test_envelope_for_someone_else_costs_no_verification(verifies: VerifyCounter) -> None:
    with pytest.raises(RecordError) as exc:
        open_envelope(envelope(FRIEND, to=OTHER), ME)
    assert exc.value.reason == "decrypt" and verifies.calls == 0


# -- offers ----------------------------------------------------------------------------------
def test_stranger_offer_to_allow_listed_node_costs_no_verification(
    verifies: VerifyCounter,
) -> None:
    a = answerer(allow={FRIEND.fingerprint})
    with pytest.raises(RecordError) as exc:
        a.check_offer(offer(STRANGER))
    assert exc.value.reason == "not-allowed" and verifies.calls == 0
    assert a.check_offer(offer(FRIEND)).signer == FRIEND.fingerprint
    assert verifies.calls == 1


def test_offer_for_someone_else_costs_no_verification(verifies: VerifyCounter) -> None:
    """Sealed to another peer (its KEM key, its fingerprint as associated data): the AEAD
    refuses it before anything inside is read."""
    with pytest.raises(RecordError) as exc:
        decode_offer(offer(FRIEND, to=OTHER), ME)
    assert exc.value.reason == "decrypt" and verifies.calls == 0


# -- acks ------------------------------------------------------------------------------------
def test_acks_cost_no_verification(verifies: VerifyCounter) -> None:
    """An ack is AEAD under the pair's token, unsigned: neither a stranger's ack nor the
    genuine one costs an ML-DSA verification."""
    token = ack_token(ME, FRIEND.fingerprint)
    with pytest.raises(RecordError) as exc:
        open_ack(create_ack(ack_token(STRANGER, FRIEND.fingerprint), [bytes(16)]), token)
    assert exc.value.reason == "decrypt"
    assert open_ack(create_ack(token, [bytes(16)]), token).message_ids == (bytes(16),)
    assert verifies.calls == 0


# -- peer records ----------------------------------------------------------------------------
def test_record_of_another_fingerprint_costs_no_verification(verifies: VerifyCounter) -> None:
    """An attacker's own validly signed record under the victim's key costs no verify."""
    book = RecordBook()
    foreign = PeerRecord.create(STRANGER, 1).encode(STRANGER)
    genuine = PeerRecord.create(FRIEND, 1).encode(FRIEND)
    best = book.newest([foreign, genuine], FRIEND.fingerprint)
    assert best is not None and best.fingerprint == FRIEND.fingerprint
    assert book.rejected == {"fingerprint": 1} and verifies.calls == 1
    with pytest.raises(RecordError) as exc:
        book.accept(foreign, FRIEND.fingerprint)
    assert exc.value.reason == "fingerprint" and verifies.calls == 1


# -- the answerer's replay cache -------------------------------------------------------------
def test_seen_sessions_stay_bounded_under_a_flood() -> None:
    seen, now = SeenSessions(capacity=64), now_ms()
    for i in range(10_000):
        assert seen.add(i.to_bytes(16, "big"), now + 60_000, now)
        assert len(seen) <= 64
    assert not seen.add((9_999).to_bytes(16, "big"), now + 60_000, now)


def test_seen_session_expires_on_the_receivers_clock() -> None:
    """A sender's far expiry cannot keep an entry past the longest offer lifetime (plus the
    clock skew an offer is accepted with, before and after)."""
    seen, now = SeenSessions(), now_ms()
    assert seen.add(b"s" * 16, now + 10**12, now)
    later = now + int(MAX_OFFER_LIFETIME_S * 1000) + 2 * MAX_CLOCK_SKEW_MS + 1
    assert seen.add(b"t" * 16, later + 60_000, later)
    assert len(seen) == 1


def test_replayed_offer_is_refused_after_a_flood() -> None:
    a = answerer()
    a.seen_sessions = SeenSessions(capacity=4)
    values = [offer(FRIEND) for _ in range(10)]
    for v in values:
        a.check_offer(v)
    assert len(a.seen_sessions) == 4
    with pytest.raises(RecordError) as exc:
        a.check_offer(values[-1])
    assert exc.value.reason == "replay"


# -- replays across a restart ---------------------------------------------------------------
def test_offer_replayed_after_a_restart_is_refused(tmp_path: Path) -> None:
    """A captured offer put again after the callee restarted (a fresh Answerer, same identity
    and state directory) is a replay; an offer it never answered, made while it was down, is
    still accepted."""
    captured, made_while_down = offer(FRIEND), offer(FRIEND)
    before = answerer(data_dir=tmp_path)
    with before.remembering():
        before.check_offer(captured)
    after = answerer(data_dir=tmp_path)
    with after.remembering():
        with pytest.raises(RecordError) as exc:
            after.check_offer(captured)
        assert exc.value.reason == "replay"
        assert after.check_offer(made_while_down).signer == FRIEND.fingerprint
    again = answerer(data_dir=tmp_path)
    with again.remembering():
        for value in (captured, made_while_down):
            with pytest.raises(RecordError) as exc:
                again.check_offer(value)
            assert exc.value.reason == "replay"


def test_remembered_sessions_stay_bounded_and_expire_across_restarts(tmp_path: Path) -> None:
    log = AnsweredSessions(tmp_path / "state.db")
    try:
        seen, now = SeenSessions(capacity=2), now_ms()
        seen.attach(log, now)
        for i in range(5):
            assert seen.add(bytes([i]) * 16, now + 60_000 + i, now)
        assert len(log.load(now, 100)) == 2  # evicted from memory, forgotten on disk
        assert seen.add(b"x" * 16, now + 1_000, now)  # evicts [3]*16, expires first
    finally:
        log.close()
    log = AnsweredSessions(tmp_path / "state.db")
    try:
        restarted = SeenSessions(capacity=4)
        later = now + MAX_CLOCK_SKEW_MS + 2_000  # b"x" can no longer count: forgotten
        restarted.attach(log, later)
        assert len(restarted) == 1 and len(log.load(later, 100)) == 1
        assert not restarted.add(bytes([4]) * 16, now + 60_000, later)
        assert restarted.add(bytes([3]) * 16, now + 60_000, later)
        assert restarted.add(b"x" * 16, now + 60_000, later)
    finally:
        log.close()
