"""Inbox policy: verification, replays, duplicates and per-sender / per-fetch caps."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tierlink.identity import Identity
from tierlink.offline.delivered import DeliveredLog
from tierlink.offline.inbox import Inbox, InboxLimits
from tierlink.wire.envelope import ack_token, create_envelope
from tierlink.wire.records import now_ms

ALICE = Identity.generate()
BOB = Identity.generate()  # the receiver
CAROL = Identity.generate()


def env(sender: Identity, payload: bytes = b"m", mid: bytes | None = None,
        created: int | None = None) -> bytes:
    value, _ = create_envelope(
        sender, BOB.fingerprint, BOB.kem_public_key, payload, 3600.0, mid,
        created_at_ms=created,
    )
    return value


def impersonator(claimed: Identity, signer: Identity) -> Identity:
    """An identity that names ``claimed`` as the sender but signs with ``signer``'s key."""
    fake = Identity(signer.signing_seed, signer.kem_seed)
    object.__setattr__(fake, "fingerprint", claimed.fingerprint)
    object.__setattr__(fake, "public_key", claimed.public_key)
    return fake


@pytest.fixture
def log(tmp_path: Path) -> Iterator[DeliveredLog]:
    d = DeliveredLog(tmp_path / "offline.sqlite", synchronous="NORMAL")
    yield d
    d.close()


def test_accepts_and_orders_oldest_first(log: DeliveredLog) -> None:
    t = now_ms()
    values = [env(ALICE, b"second", created=t - 1000), env(CAROL, b"first", created=t - 2000)]
    res = Inbox(BOB, log).process(values)
    assert [e.payload for e in res.accepted] == [b"first", b"second"]
    assert not res.rejected and not res.replayed


def test_rejections_counted_by_reason(log: DeliveredLog) -> None:
    to_carol, _ = create_envelope(ALICE, CAROL.fingerprint, CAROL.kem_public_key, b"x", 60)
    old = env(ALICE, created=now_ms() - 7200_000)
    good = env(ALICE)
    tampered = good[:-1] + bytes([good[-1] ^ 1])
    inbox = Inbox(BOB, log)
    res = inbox.process([b"garbage", to_carol, old, tampered, good, good, "text"])  # type: ignore[list-item]
    assert [e.payload for e in res.accepted] == [b"m"]
    assert res.rejected == {"malformed": 2, "decrypt": 2, "expired": 1, "duplicate": 1}
    inbox.process([b"garbage"])
    assert inbox.rejected["malformed"] == 3  # cumulative over fetches


def test_replay_is_acked_not_redelivered(log: DeliveredLog) -> None:
    value = env(ALICE, b"once")
    inbox = Inbox(BOB, log)
    first = inbox.process([value])
    assert len(first.accepted) == 1
    assert inbox.delivered(first.accepted[0])
    token = ack_token(ALICE, BOB.fingerprint)
    assert first.ack_ids(first.accepted) == {token: [first.accepted[0].message_id]}
    again = inbox.process([value])
    assert again.accepted == [] and again.rejected == {"replay": 1}
    assert again.ack_ids() == {token: [first.accepted[0].message_id]}


def test_replay_detected_after_restart(tmp_path: Path) -> None:
    value = env(ALICE)
    with DeliveredLog(tmp_path / "db") as log:
        inbox = Inbox(BOB, log)
        inbox.delivered(inbox.process([value]).accepted[0])
    with DeliveredLog(tmp_path / "db") as log:
        assert Inbox(BOB, log).process([value]).rejected == {"replay": 1}


def test_resent_with_new_envelope_same_id(log: DeliveredLog) -> None:
    # A sender that lost its stored envelope re-creates one with the same message id.
    mid = b"\x05" * 16
    res = Inbox(BOB, log).process([env(ALICE, b"a", mid), env(ALICE, b"a", mid)])
    assert len(res.accepted) == 1 and len(res.replayed) == 1
    assert res.rejected == {"replay": 1}


def test_same_id_from_two_senders_is_two_messages(log: DeliveredLog) -> None:
    mid = b"\x06" * 16
    res = Inbox(BOB, log).process([env(ALICE, b"a", mid), env(CAROL, b"c", mid)])
    assert len(res.accepted) == 2


def test_per_sender_count_cap(log: DeliveredLog) -> None:
    limits = InboxLimits(max_envelopes_per_sender=2)
    t = now_ms()
    values = [env(ALICE, b"%d" % i, created=t - 10_000 + i) for i in range(4)] + [env(CAROL)]
    res = Inbox(BOB, log, limits).process(values)
    assert [e.payload for e in res.accepted if e.sender_fingerprint == ALICE.fingerprint] == [
        b"0", b"1",  # the oldest ones go first
    ]
    assert sum(e.sender_fingerprint == CAROL.fingerprint for e in res.accepted) == 1
    assert res.rejected == {"sender_count": 2}
    assert res.ack_ids(res.accepted)[ack_token(ALICE, BOB.fingerprint)] == [
        e.message_id for e in res.accepted if e.sender_fingerprint == ALICE.fingerprint
    ]


def test_per_sender_byte_cap(log: DeliveredLog) -> None:
    limits = InboxLimits(max_bytes_per_sender=2500)
    t = now_ms()
    values = [env(ALICE, bytes(1000), created=t - 3000 + i) for i in range(3)]
    values.append(env(CAROL, bytes(2000)))
    res = Inbox(BOB, log, limits).process(values)
    assert len(res.accepted) == 3  # two of Alice's, Carol's one
    assert res.rejected == {"sender_bytes": 1}


def test_forgeries_do_not_use_up_a_senders_share(log: DeliveredLog) -> None:
    limits = InboxLimits(max_envelopes_per_sender=1)
    good = env(ALICE)
    forged = [env(impersonator(ALICE, CAROL), b"%d" % i) for i in range(3)]
    res = Inbox(BOB, log, limits).process([*forged, good])
    assert len(res.accepted) == 1 and res.rejected == {"signature": 3}


def test_fetch_cap_defers_the_rest(log: DeliveredLog) -> None:
    limits = InboxLimits(max_values_per_fetch=3)
    res = Inbox(BOB, log, limits).process([env(ALICE, b"%d" % i) for i in range(5)])
    assert len(res.accepted) == 3 and res.rejected == {"deferred": 2}


def test_blocked_sender(log: DeliveredLog) -> None:
    inbox = Inbox(BOB, log, allow=lambda fp: fp != CAROL.fingerprint)
    res = inbox.process([env(ALICE), env(CAROL)])
    assert [e.sender_fingerprint for e in res.accepted] == [ALICE.fingerprint]
    assert res.rejected == {"not-allowed": 1} and res.ack_ids() == {}


def test_receiver_payload_cap(log: DeliveredLog) -> None:
    res = Inbox(BOB, log, InboxLimits(max_payload=10)).process([env(ALICE, bytes(11))])
    assert res.rejected == {"oversize": 1}


@pytest.mark.parametrize(
    "kw", [{"max_values_per_fetch": 0}, {"max_envelopes_per_sender": 0},
           {"max_bytes_per_sender": -1}]
)
def test_limits_validated(kw: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        InboxLimits(**kw)
