"""Every DHT key tierlink uses, derived in one place and documented exactly.

OpenDHT addresses values by a 160-bit InfoHash. ``InfoHash.get(s)`` is SHA-1 over the
UTF-8 bytes of ``s``. We first derive a SHA3-512 lowercase hex string from the fingerprint
and a purpose suffix (the seed's scheme), then reduce it with SHA-1 exactly as
``InfoHash.get`` does; the proxy API takes the resulting 40 hex characters as the key.

=================  =====================================================================
purpose            DHT key (40 hex)
=================  =====================================================================
ICE candidates     SHA1( hex(SHA3-512( fingerprint + ":ice_candidates" )) )
offers (inbox)     SHA1( hex(SHA3-512( fingerprint + ":offers" )) )
answers            SHA1( hex(SHA3-512( fingerprint + ":answers:" + session_id_hex )) )
offline queue      SHA1( hex(SHA3-512( fingerprint + ":offline_queue" )) )
offline acks       SHA1( hex(SHA3-512( fingerprint + ":offline_acks" )) )
=================  =====================================================================

``fingerprint`` is the 128-character lowercase hex fingerprint; all strings are UTF-8.
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
    """Where a peer publishes its signed peer record (the seed's key)."""
    return _derive(fingerprint, ":ice_candidates")


def offers_key(fingerprint: str) -> str:
    """Where dialers put encrypted offers for ``fingerprint``."""
    return _derive(fingerprint, ":offers")


def answer_key(dialer_fingerprint: str, session_id: bytes) -> str:
    """Where the callee puts its encrypted answer for one dial session (per-session key)."""
    return _derive(dialer_fingerprint, ":answers:" + session_id.hex())


def offline_queue_key(fingerprint: str) -> str:
    """Where senders put encrypted envelopes for ``fingerprint`` while it is offline."""
    return _derive(fingerprint, ":offline_queue")


def offline_acks_key(fingerprint: str) -> str:
    """Where recipients put signed acknowledgements for envelopes ``fingerprint`` sent."""
    return _derive(fingerprint, ":offline_acks")
