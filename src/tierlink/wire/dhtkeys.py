"""Every DHT key tierlink uses, derived in one place.

A key is OpenDHT's InfoHash (SHA-1, 40 hex) of the lowercase hex SHA3-512 of the
fingerprint and a purpose suffix, so each peer has one record, offers and offline-queue
key that anyone who knows its fingerprint can compute; answer and ack keys hash secrets
only the two ends hold (a per-offer locator, a per-pair ack token) instead of a
fingerprint. The exact derivation and the table of suffixes: docs/PROTOCOL.md, section
"DHT keys".
"""

from __future__ import annotations

import hashlib


def sha3_512_hex(text: str) -> str:
    """Lowercase hex SHA3-512 of UTF-8 ``text``."""
    return hashlib.sha3_512(text.encode()).hexdigest()


def infohash(text: str) -> str:
    """OpenDHT ``InfoHash.get(text)``: lowercase hex SHA-1 of the UTF-8 bytes (40 chars)."""
    return hashlib.sha1(text.encode()).hexdigest()


def _derive(fingerprint: str, suffix: str) -> str:
    return infohash(sha3_512_hex(fingerprint + suffix))


def ice_candidates_key(fingerprint: str) -> str:
    """Where a peer publishes its signed peer record."""
    return _derive(fingerprint, ":ice_candidates")


def offers_key(fingerprint: str) -> str:
    """Where dialers put encrypted offers for ``fingerprint``."""
    return _derive(fingerprint, ":offers")


def answer_key(locator: bytes) -> str:
    """Where the callee puts its encrypted answer to one offer: ``locator`` is the secret
    the offer's KEM exchange gives both sides (:meth:`tierlink.wire.signaling.OfferSecret.
    answer_key`), in place of a fingerprint, so no one else can compute or link the key."""
    return _derive(locator.hex(), ":answers")


def offline_queue_key(fingerprint: str) -> str:
    """Where senders put encrypted envelopes for ``fingerprint`` while it is offline."""
    return _derive(fingerprint, ":offline_queue")


def offline_acks_key(ack_token: bytes) -> str:
    """Where a recipient puts sealed acks for the sender that gave it ``ack_token`` (a secret of
    the two ends, :func:`tierlink.wire.ack.ack_token`): nobody else can compute the key."""
    return _derive(ack_token.hex(), ":offline_acks")


def mailboxes_key(fingerprint: str) -> str:
    """Where a recipient's signed mailbox descriptor is put (by it and by its mailboxes), so a
    sender who knows only the fingerprint finds its mailboxes while it is away."""
    return _derive(fingerprint, ":mailboxes")
