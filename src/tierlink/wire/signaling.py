"""Offers and answers: how two peers exchange ICE credentials through the DHT, privately.

**Offer** (kind 0x02, under the callee's offers key): a signed value (see
:mod:`tierlink.wire.records`) by the dialer, whose body is::

    {1: dialer fingerprint (64 B), 2: dialer ML-DSA-87 public key,
     3: callee fingerprint (64 B), 4: session id (16 B), 5: created_at_ms, 6: expires_at_ms,
     7: ML-KEM-1024 ciphertext, 8: AES-GCM nonce (12 B), 9: AES-GCM ciphertext}

The dialer encapsulates to the callee's ML-KEM-1024 key (from the callee's signed record):
``shared, kem_ct = Encaps(kem_pk)``. The offer key is ``HKDF-SHA256(shared, salt=kem_ct[:32],
info=b"tierlink/offer")``; field 9 is AES-256-GCM of the ICE parameters under it, associated
data = canonical CBOR of fields 1-6.

**Answer** (kind 0x03, under the per-session answer key): not signed, only sealed::

    value = 0x01 (version) || 0x03 (kind) || nonce (12 B) || AES-256-GCM(answer key, params, aad)
    aad   = 0x01 || 0x03 || session id (16 B) || dialer fingerprint (64 B)
            || callee fingerprint (64 B)

with ``answer key = HKDF-SHA256(shared, salt=SHA-256(offer's signed bytes),
info=b"tierlink/answer-key")``, the signed bytes being the offer value without its signature.

Why the unsigned answer is authenticated (implicit authentication, as in KEMTLS): the callee's
record is signed by its ML-DSA identity, so its KEM public key is the callee's; only the holder
of the matching private key (and the dialer, who made ``shared``) can derive the answer key.
An answer whose GCM tag verifies therefore comes from the callee, and the salt and the
associated data bind it to this one offer, session and pair of fingerprints: it cannot be
replayed into another dial or moved between peers. The dialer keeps the key in an
:class:`OfferSecret` only while it waits for that answer. A DHT observer sees who dials whom
(the offer is signed) but no address; the answer names no one and carries no signature, so
nothing in it shows or proves who answered (only that some value appeared under the key).

Parameters (canonical CBOR, inside both ciphertexts): ``{1: ICE ufrag, 2: ICE pwd,
3: [candidates], 4: certificate SHA-256 or null, 6: purpose, 7: [max_message_size, window],
8: [QUIC datagrams]}``;
the purpose is ``app`` (the connection goes to the application) or ``messages`` (the node's
own tiered message link); key 7, optional, gives the limits of the sender's secure channel (its
HELLO must repeat them), so the peer can send as soon as the QUIC handshake completes.
Key 8, optional, is the sender's first QUIC flight, carried ahead of the path (at most 4
datagrams of at most 1,500 bytes): in an offer the dialer's Initial with its ClientHello,
in the answer the callee's reply to it (ServerHello to Finished). The dialer processes that
reply while its ICE checks run and sends its Finished, with its first message, as soon as
the pair works: the QUIC handshake costs no round trip on the path. A side that cannot use
a flight ignores it and the handshake runs on the path as usual.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

import cbor2
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tierlink.errors import RecordError
from tierlink.identity import KEM_CIPHERTEXT_SIZE, SIGNATURE_SIZE, Identity, kem_encapsulate
from tierlink.wire.records import (
    KIND_ANSWER,
    KIND_OFFER,
    MAX_VALUE_SIZE,
    WIRE_VERSION,
    CandidateInfo,
    check_signer,
    decode_candidate,
    encode_candidate,
    field_of,
    now_ms,
    open_value,
    seal,
)

SESSION_ID_SIZE = 16
NONCE_SIZE = 12
DEFAULT_OFFER_LIFETIME_S = 60.0
PURPOSES = ("app", "messages")
_ANSWER_PREFIX = bytes([WIRE_VERSION, KIND_ANSWER])
_TAG_SIZE = 16


def new_session_id() -> bytes:
    """16 random bytes naming one dial attempt."""
    return os.urandom(SESSION_ID_SIZE)


@dataclass(frozen=True)
class SessionDescription:
    """What one side tells the other: ICE credentials, candidates, certificate, purpose."""

    ufrag: str
    pwd: str
    candidates: tuple[CandidateInfo, ...]
    cert_sha256: bytes | None = None
    purpose: str = "app"
    #: (max_message_size, receive window) of the sender's secure channel, so the peer can
    #: send as soon as the QUIC handshake completes instead of waiting for the HELLO.
    channel_limits: tuple[int, int] | None = None
    #: The sender's first QUIC flight (offer: ClientHello; answer: the reply to it).
    quic_flight: tuple[bytes, ...] = ()


#: Limits on an offer's early QUIC flight (key 8).
MAX_EARLY_DATAGRAMS = 4
MAX_EARLY_DATAGRAM_SIZE = 1500


@dataclass(frozen=True)
class OfferSecret:
    """What seals and opens the answer to one offer; only the dialer and the callee know it."""

    key: bytes = field(repr=False)
    session_id: bytes
    dialer: str
    callee: str

    def aad(self) -> bytes:
        """The answer's associated data: prefix, session, dialer and callee fingerprints."""
        return (
            _ANSWER_PREFIX + self.session_id
            + bytes.fromhex(self.dialer) + bytes.fromhex(self.callee)
        )


@dataclass(frozen=True)
class Offer:
    """A verified, decrypted offer, with the secret that seals its answer."""

    signer: str
    signer_public_key: bytes
    recipient: str
    session_id: bytes
    created_at_ms: int
    expires_at_ms: int
    params: SessionDescription
    secret: OfferSecret


def _hkdf(shared: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(shared)


def _offer_key(shared: bytes, kem_ct: bytes) -> bytes:
    return _hkdf(shared, kem_ct[:32], b"tierlink/offer")


def _secret(
    shared: bytes, offer: bytes, session_id: bytes, dialer: str, callee: str
) -> OfferSecret:
    """The answer secret of an offer value (``offer`` includes the signature, not hashed)."""
    transcript = hashlib.sha256(offer[:-SIGNATURE_SIZE]).digest()
    return OfferSecret(
        _hkdf(shared, transcript, b"tierlink/answer-key"), session_id, dialer, callee
    )


def _encode_params(params: SessionDescription) -> bytes:
    return cbor2.dumps(
        {
            1: params.ufrag,
            2: params.pwd,
            3: [encode_candidate(c) for c in params.candidates],
            4: params.cert_sha256,
            6: params.purpose,
            **({7: list(params.channel_limits)} if params.channel_limits is not None else {}),
            **({8: list(params.quic_flight)} if params.quic_flight else {}),
        },
        canonical=True,
    )


def _decode_params(plain: bytes) -> SessionDescription:
    try:
        inner = cbor2.loads(plain)
    except Exception:  # cbor2 raises many types on garbage
        raise RecordError("malformed", "decrypted payload is not CBOR") from None
    if not isinstance(inner, dict):
        raise RecordError("malformed", "decrypted payload is not a map")
    ufrag = field_of(inner, 1, str, "ufrag")
    pwd = field_of(inner, 2, str, "pwd")
    cands = tuple(decode_candidate(c) for c in field_of(inner, 3, list, "candidates"))
    cert = inner.get(4)
    if cert is not None and (not isinstance(cert, bytes) or len(cert) != 32):
        raise RecordError("malformed", "certificate fingerprint must be 32 bytes")
    purpose = inner.get(6, "app")
    if purpose not in PURPOSES:
        raise RecordError("malformed", f"unknown purpose {purpose!r}")
    limits = inner.get(7)
    if limits is not None:
        if (
            not isinstance(limits, list)
            or len(limits) != 2
            or not all(type(x) is int and 0 <= x < 2**62 for x in limits)
            or limits[1] < 1
        ):
            raise RecordError("malformed", "channel limits must be [max_message_size, window]")
        limits = (limits[0], limits[1])
    early = inner.get(8, [])
    if (
        not isinstance(early, list)
        or len(early) > MAX_EARLY_DATAGRAMS
        or not all(
            isinstance(d, bytes) and 0 < len(d) <= MAX_EARLY_DATAGRAM_SIZE for d in early
        )
    ):
        raise RecordError(
            "malformed",
            f"early QUIC flight must be at most {MAX_EARLY_DATAGRAMS} datagrams of "
            f"1 to {MAX_EARLY_DATAGRAM_SIZE} bytes",
        )
    return SessionDescription(ufrag, pwd, cands, cert, purpose, limits, tuple(early))


# -- offers ----------------------------------------------------------------------------------
def encode_offer(
    signer: Identity,
    recipient: str,
    recipient_kem_public_key: bytes,
    session_id: bytes,
    params: SessionDescription,
    lifetime_s: float = DEFAULT_OFFER_LIFETIME_S,
) -> tuple[bytes, OfferSecret]:
    """Encrypt ``params`` to the recipient and sign the offer.

    Returns the value and the secret the recipient's answer will be sealed with.
    """
    t = now_ms()
    header: dict[int, Any] = {
        1: bytes.fromhex(signer.fingerprint),
        2: signer.public_key,
        3: bytes.fromhex(recipient),
        4: session_id,
        5: t,
        6: t + int(lifetime_s * 1000),
    }
    shared, kem_ct = kem_encapsulate(recipient_kem_public_key)
    nonce = os.urandom(NONCE_SIZE)
    ct = AESGCM(_offer_key(shared, kem_ct)).encrypt(
        nonce, _encode_params(params), cbor2.dumps(header, canonical=True)
    )
    value = seal(signer, KIND_OFFER, {**header, 7: kem_ct, 8: nonce, 9: ct})
    return value, _secret(shared, value, session_id, signer.fingerprint, recipient)


def decode_offer(value: bytes, me: Identity, *, now: int | None = None) -> Offer:
    """Verify (structure, signature, fingerprint binding, recipient, expiry) then decrypt."""
    opened = open_value(value, KIND_OFFER)
    body = opened.body
    signer = check_signer(body, opened)
    recipient = field_of(body, 3, bytes, "recipient").hex()
    if recipient != me.fingerprint:
        raise RecordError("recipient", "value is addressed to another fingerprint")
    session_id = field_of(body, 4, bytes, "session_id")
    created = field_of(body, 5, int, "created_at_ms")
    expires = field_of(body, 6, int, "expires_at_ms")
    if len(session_id) != SESSION_ID_SIZE:
        raise RecordError("malformed", "session id has the wrong length")
    t = now_ms() if now is None else now
    if expires <= t:
        raise RecordError("expired", "offer expired")
    kem_ct = field_of(body, 7, bytes, "kem_ciphertext")
    nonce = field_of(body, 8, bytes, "nonce")
    if len(kem_ct) != KEM_CIPHERTEXT_SIZE or len(nonce) != NONCE_SIZE:
        raise RecordError("malformed", "KEM ciphertext or nonce has the wrong length")
    header = {k: body[k] for k in range(1, 7)}
    try:
        shared = me.kem_decapsulate(kem_ct)
        plain = AESGCM(_offer_key(shared, kem_ct)).decrypt(
            nonce, field_of(body, 9, bytes, "ciphertext"), cbor2.dumps(header, canonical=True)
        )
    except (InvalidTag, ValueError):
        raise RecordError("decrypt", "ciphertext does not decrypt with our key") from None
    return Offer(
        signer, field_of(body, 2, bytes, "public_key"), recipient, session_id, created,
        expires, _decode_params(plain), _secret(shared, value, session_id, signer, recipient),
    )


# -- answers ---------------------------------------------------------------------------------
def encode_answer(secret: OfferSecret, params: SessionDescription) -> bytes:
    """Seal ``params`` as the answer to the offer that established ``secret``."""
    nonce = os.urandom(NONCE_SIZE)
    ct = AESGCM(secret.key).encrypt(nonce, _encode_params(params), secret.aad())
    return _ANSWER_PREFIX + nonce + ct


def decode_answer(value: bytes, secret: OfferSecret) -> SessionDescription:
    """Open an answer to our offer; RecordError unless it decrypts under ``secret``.

    A tag that verifies proves the callee (the holder of the KEM private key) sealed it for
    this session; anything else (another session, another key, tampering) is ``decrypt``.
    """
    if not isinstance(value, bytes | bytearray):
        raise RecordError("malformed", "value is not bytes")
    if len(value) > MAX_VALUE_SIZE:
        raise RecordError("oversize", f"value of {len(value)} bytes exceeds {MAX_VALUE_SIZE}")
    if len(value) < len(_ANSWER_PREFIX) + NONCE_SIZE + _TAG_SIZE:
        raise RecordError("malformed", f"answer of {len(value)} bytes is too short")
    if value[0] != WIRE_VERSION:
        raise RecordError("version", f"wire version {value[0]} is not {WIRE_VERSION}")
    if value[1] != KIND_ANSWER:
        raise RecordError("kind", f"value kind {value[1]:#04x} is not {KIND_ANSWER:#04x}")
    start = len(_ANSWER_PREFIX)
    nonce, ct = bytes(value[start:start + NONCE_SIZE]), bytes(value[start + NONCE_SIZE:])
    try:
        plain = AESGCM(secret.key).decrypt(nonce, ct, secret.aad())
    except InvalidTag:
        raise RecordError("decrypt", "answer does not decrypt with this dial's key") from None
    return _decode_params(plain)
