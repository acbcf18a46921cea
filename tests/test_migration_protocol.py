"""Path migration, sans-IO: the dead-path detector, the restart negotiation and the restart
value (its sealing, and what it refuses)."""

from __future__ import annotations

import os

import pytest

from tierlink.errors import RecordError
from tierlink.identity import Identity
from tierlink.protocol.path_restart import (
    DeadPathDetector,
    RestartNegotiation,
    State,
    Verdict,
)
from tierlink.wire.records import CandidateInfo
from tierlink.wire.signaling import (
    MAX_RESTART_SIZE,
    RESTART_ANSWER,
    RESTART_OFFER,
    TO_CALLEE,
    TO_DIALER,
    OfferSecret,
    Restart,
    SessionDescription,
    decode_restart,
    encode_restart,
    is_restart,
    new_session_id,
)

A, B = Identity.generate().fingerprint, Identity.generate().fingerprint


# -- the detector ----------------------------------------------------------------------------
def test_nothing_outstanding_means_no_deadline() -> None:
    d = DeadPathDetector()
    assert d.update(10.0, outstanding=False, acked=False, pto=0.1) is None
    assert not d.expired(1e9)


def test_the_deadline_runs_from_the_first_unanswered_send_and_moves_on_acks() -> None:
    d = DeadPathDetector(floor=1.0, ceiling=3.0, multiple=4.0)
    assert d.update(10.0, outstanding=True, acked=False, pto=0.1) == 11.0  # floor
    assert d.update(10.5, outstanding=True, acked=False, pto=0.1) == 11.0  # more sent: same
    assert d.update(10.8, outstanding=True, acked=True, pto=0.5) == 12.8  # 4 x PTO
    assert not d.expired(12.7) and d.expired(12.8)
    assert d.update(12.0, outstanding=False, acked=True, pto=0.5) is None  # all answered


def test_the_bound_is_clamped_and_a_declaration_waits_one_more_bound() -> None:
    d = DeadPathDetector(floor=1.0, ceiling=3.0, multiple=4.0)
    assert d.bound(0.01) == 1.0 and d.bound(0.5) == 2.0 and d.bound(5.0) == 3.0
    d.update(0.0, outstanding=True, acked=False, pto=5.0)
    d.declared(3.0, pto=5.0)
    assert d.deadline == 6.0
    with pytest.raises(ValueError):
        DeadPathDetector(floor=2.0, ceiling=1.0)


# -- the negotiation -------------------------------------------------------------------------
def test_offers_are_numbered_and_one_restart_runs_at_a_time() -> None:
    n = RestartNegotiation(is_dialer=True)
    assert n.start() == 1 and n.start() is None
    assert n.on_answer(1) and not n.on_answer(1)  # a second answer is unexpected
    n.finish(True, 1, succeeded=True)
    assert n.state is State.IDLE and n.start() == 2
    assert n.counts["started"] == 2 and n.counts["succeeded"] == 1
    assert n.refused["unexpected"] == 1


def test_a_replayed_or_older_offer_is_refused() -> None:
    n = RestartNegotiation(is_dialer=False)
    assert n.on_offer(3) is Verdict.ANSWER
    n.finish(False, 3, succeeded=True)
    assert n.on_offer(3) is Verdict.REFUSE and n.on_offer(2) is Verdict.REFUSE
    assert n.refused["replay"] == 2
    assert n.on_offer(4) is Verdict.ANSWER


def test_when_both_offer_at_once_the_dialer_wins() -> None:
    dialer, callee = RestartNegotiation(is_dialer=True), RestartNegotiation(is_dialer=False)
    d_seq, c_seq = dialer.start(), callee.start()
    assert d_seq == 1 and c_seq == 1
    assert dialer.on_offer(c_seq) is Verdict.REFUSE  # the dialer keeps its own
    assert dialer.refused["conflict"] == 1
    assert callee.on_offer(d_seq) is Verdict.REPLACE  # the callee answers the dialer's
    assert callee.counts["yielded"] == 1
    callee.finish(True, c_seq, succeeded=False)  # its dropped restart ends: no effect
    assert callee.state is State.ANSWERING and callee.counts["failed"] == 0
    assert dialer.on_answer(d_seq)
    dialer.finish(True, d_seq, succeeded=True)
    callee.finish(False, d_seq, succeeded=True)
    assert dialer.state is callee.state is State.IDLE


def test_the_dialer_refuses_the_callees_offer_even_after_its_own_was_answered() -> None:
    dialer = RestartNegotiation(is_dialer=True)
    seq = dialer.start()
    assert seq is not None and dialer.on_answer(seq)
    assert dialer.on_offer(1) is Verdict.REFUSE


def test_an_answer_to_an_old_offer_is_unexpected() -> None:
    n = RestartNegotiation(is_dialer=True)
    n.start()
    n.finish(True, 1, succeeded=False)
    n.start()
    assert not n.on_answer(1) and n.on_answer(2)


# -- the value -------------------------------------------------------------------------------
def _secret(key: bytes | None = None, session: bytes | None = None) -> OfferSecret:
    return OfferSecret(key or os.urandom(32), session or new_session_id(), A, B)


DESCRIPTION = SessionDescription(
    "ufrag", "p" * 22, (CandidateInfo("1", 1, "udp", 2130706431, "127.0.0.1", 4000, "host"),)
)


def test_a_restart_round_trips_in_its_direction_only() -> None:
    secret = _secret()
    restart = Restart(RESTART_OFFER, 7, DESCRIPTION)
    value = encode_restart(secret, TO_CALLEE, restart)
    assert is_restart(value) and value[:2] == b"\x01\x07"
    assert decode_restart(value, secret, TO_CALLEE) == restart
    with pytest.raises(RecordError) as exc:  # reflected back to its sender
        decode_restart(value, secret, TO_DIALER)
    assert exc.value.reason == "decrypt"


@pytest.mark.parametrize("other", ["key", "session", "pair"])
def test_a_restart_opens_only_in_its_own_session(other: str) -> None:
    secret = _secret()
    value = encode_restart(secret, TO_DIALER, Restart(RESTART_ANSWER, 1, DESCRIPTION))
    if other == "key":
        wrong = _secret(session=secret.session_id)  # a third party: no session secret
    elif other == "session":
        wrong = _secret(key=secret.key)
    else:
        wrong = OfferSecret(secret.key, secret.session_id, B, A)
    with pytest.raises(RecordError) as exc:
        decode_restart(value, wrong, TO_DIALER)
    assert exc.value.reason == "decrypt"


def test_tampered_and_oversized_restarts_are_refused() -> None:
    secret = _secret()
    value = bytearray(encode_restart(secret, TO_CALLEE, Restart(RESTART_OFFER, 1, DESCRIPTION)))
    value[-1] ^= 1
    with pytest.raises(RecordError) as exc:
        decode_restart(bytes(value), secret, TO_CALLEE)
    assert exc.value.reason == "decrypt"
    with pytest.raises(RecordError) as exc:
        decode_restart(b"\x01\x07" + bytes(MAX_RESTART_SIZE), secret, TO_CALLEE)
    assert exc.value.reason == "oversize"
    with pytest.raises(ValueError):
        encode_restart(secret, TO_CALLEE, Restart(RESTART_OFFER, 0, DESCRIPTION))
