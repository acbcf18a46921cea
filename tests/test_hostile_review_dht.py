"""Attacks found by reviewing the DHT-facing readers: each puts attacker values ahead of a
genuine one under the key a reader gets, and the genuine one must still be used.

A DHT hands a key's values back in the order they were stored, so whoever writes first
writes ahead of the owner's later (re-)puts: a reader that reads only the first few values
of a key lets anyone who knows the key hide the rest.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.memory_dht import MemoryDht
from tierlink.identity import Identity
from tierlink.offline.delivered import DeliveredLog
from tierlink.offline.outbox import DELIVERED, Outbox
from tierlink.offline.worker import OfflineTier
from tierlink.wire.ack import create_ack
from tierlink.wire.dhtkeys import offline_acks_key
from tierlink.wire.envelope import ack_token

SENDER = Identity.generate()
RECIPIENT = Identity.generate()
ATTACKER = Identity.generate()


@pytest.fixture
def sender(tmp_path: Path) -> Iterator[tuple[MemoryDht, OfflineTier]]:
    dht = MemoryDht()
    db = tmp_path / "sender.db"
    with Outbox(db) as outbox, DeliveredLog(db) as log:
        yield dht, OfflineTier(dht, SENDER, outbox, log)  # type: ignore[arg-type]


# -- acks ----------------------------------------------------------------------------------
async def test_acks_flooded_ahead_of_the_genuine_ack_do_not_hide_it(
    sender: tuple[MemoryDht, OfflineTier],
) -> None:
    """An ack key is seen by the DHT nodes that store it. An attacker puts 300 ack-shaped
    values there (they pass every clear check; their tags fail) before the recipient's ack:
    the sender's read of the key still finds the ack and marks the message delivered."""
    dht, tier = sender
    mid = await tier.send(RECIPIENT.fingerprint, b"m", recipient_kem_pk=RECIPIENT.kem_public_key)
    token = ack_token(SENDER, RECIPIENT.fingerprint)
    key = offline_acks_key(token)
    flood = [create_ack(ack_token(ATTACKER, RECIPIENT.fingerprint), [mid]) for _ in range(300)]
    for value in [*flood, create_ack(token, [mid])]:
        await dht.put(key, value)
    assert await tier.check_acks() == 1
    entry = tier.outbox.get(mid)
    assert entry is not None and entry.state == DELIVERED
    assert tier.acks.rejected == {"decrypt": len(flood)}
    assert tier.acks.skipped == 0
