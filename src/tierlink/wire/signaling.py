"""Offers and answers: how two peers exchange ICE credentials through the DHT, privately.

The dialer puts a signed offer (kind 0x02) under the callee's offers key, its session
description encrypted to the callee's ML-KEM-1024 key; the callee puts a sealed answer
(kind 0x03, no signature) under the per-session answer key, encrypted under a key derived
from the offer's KEM secret. Only the callee can derive that key, so an answer whose tag
verifies is the callee's and bound to this one offer (implicit authentication, as in
KEMTLS); a DHT observer sees who dials whom, but no address and nothing about who answered.
Byte layouts, key derivations and limits: docs/PROTOCOL.md, sections "Offer", "Answer" and
"Session description".
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from collections.abc import Container
from dataclasses import dataclass, field
from typing import Any

import cbor2
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tierlink.errors import RecordError
from tierlink.identity import (
    FINGERPRINT_HEX_LEN,
    KEM_CIPHERTEXT_SIZE,
    SIGNATURE_SIZE,
    Identity,
    kem_encapsulate,
)
from tierlink.wire.decoding import Fields, check_bytes, check_uint, decode, malformed
from tierlink.wire.records import (
    KIND_ANSWER,
    KIND_OFFER,
    WIRE_VERSION,
    CandidateInfo,
    check_head,
    check_times,
    claimed_signer,
    decode_candidate,
    encode_candidate,
    now_ms,
    open_value,
    seal,
)

SESSION_ID_SIZE = 16
NONCE_SIZE = 12
DEFAULT_OFFER_LIFETIME_S = 60.0
MAX_OFFER_LIFETIME_S = 600.0
"""Longest lifetime an offer may claim (created to expires)."""
MAX_CANDIDATES = 16
"""Most ICE candidates in one session description."""
#: RFC 8445 section 5.3: ufrag 4-256 and pwd 22-256 ice-chars (ALPHA / DIGIT / "+" / "/").
UFRAG_LENGTH = (4, 256)
PWD_LENGTH = (22, 256)
_ICE_CHARS = re.compile(r"[A-Za-z0-9+/]*")
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


def _ice_text(inner: Fields, key: int, name: str, bounds: tuple[int, int]) -> str:
    """An ICE credential: ``bounds`` characters long, ice-chars only (RFC 8445 §5.3)."""
    val = inner.text(key, name, max_len=bounds[1])
    if len(val) < bounds[0] or not _ICE_CHARS.fullmatch(val):
        raise malformed(f"ICE {name} is not {bounds[0]}-{bounds[1]} ice-chars")
    return val


def _ice_candidate(item: Any) -> CandidateInfo:
    """A candidate ICE may check: IP literal addresses (no names to resolve), port 1-65535."""
    c = decode_candidate(item)
    for addr in (c.host, c.related_address):
        if addr is None:  # a host candidate has no related address
            continue
        try:
            ipaddress.ip_address(addr)
        except ValueError:
            raise malformed(f"candidate address {addr!r:.40} is not an IP literal") from None
    if not 1 <= c.port <= 65535:
        raise malformed(f"candidate port {c.port} is not 1-65535")
    return c


def _decode_params(plain: bytes) -> SessionDescription:
    inner = Fields(decode(plain), "session description", (1, 2, 3, 4, 6, 7, 8))
    ufrag = _ice_text(inner, 1, "ufrag", UFRAG_LENGTH)
    pwd = _ice_text(inner, 2, "pwd", PWD_LENGTH)
    cands = tuple(
        _ice_candidate(c) for c in inner.array(3, "candidates", max_items=MAX_CANDIDATES)
    )
    cert = inner.opt_bstr(4, "cert_sha256", size=32)
    purpose = inner.opt_text(6, "purpose", "app")
    if purpose not in PURPOSES:
        raise malformed(f"unknown purpose {purpose!r}")
    limits = inner.opt_array(7, "channel_limits", max_items=2)
    channel_limits = None
    if limits is not None:
        if len(limits) != 2:
            raise malformed("channel limits must be [max_message_size, window]")
        channel_limits = (
            check_uint(limits[0], "max_message_size", maximum=2**62 - 1),
            check_uint(limits[1], "window", minimum=1, maximum=2**62 - 1),
        )
    early = inner.opt_array(8, "quic_flight", max_items=MAX_EARLY_DATAGRAMS) or []
    flight = tuple(
        check_bytes(d, "early QUIC datagram", min_size=1, max_size=MAX_EARLY_DATAGRAM_SIZE)
        for d in early
    )
    return SessionDescription(ufrag, pwd, cands, cert, purpose, channel_limits, flight)


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

    Returns the value and the secret the recipient's answer will be sealed with. The
    lifetime is capped at :data:`MAX_OFFER_LIFETIME_S` (receivers refuse longer).
    """
    t = now_ms()
    header: dict[int, Any] = {
        1: bytes.fromhex(signer.fingerprint),
        2: signer.public_key,
        3: bytes.fromhex(recipient),
        4: session_id,
        5: t,
        6: t + int(min(lifetime_s, MAX_OFFER_LIFETIME_S) * 1000),
    }
    shared, kem_ct = kem_encapsulate(recipient_kem_public_key)
    nonce = os.urandom(NONCE_SIZE)
    ct = AESGCM(_offer_key(shared, kem_ct)).encrypt(
        nonce, _encode_params(params), cbor2.dumps(header, canonical=True)
    )
    value = seal(signer, KIND_OFFER, {**header, 7: kem_ct, 8: nonce, 9: ct})
    return value, _secret(shared, value, session_id, signer.fingerprint, recipient)


def decode_offer(
    value: bytes, me: Identity, *, now: int | None = None, allow: Container[str] | None = None
) -> Offer:
    """Check and open an offer to ``me``, cheapest checks first: structure and times,
    fingerprint binding, recipient, ``allow`` on the claimed dialer (``not-allowed``), then
    the signature, then decryption."""
    opened = open_value(value, KIND_OFFER)
    body = Fields(opened.body, "offer", range(1, 10))
    created = body.uint(5, "created_at_ms")
    expires = body.uint(6, "expires_at_ms")
    t = now_ms() if now is None else now
    check_times("offer", created, expires, t, int(MAX_OFFER_LIFETIME_S * 1000))
    signer, public_key = claimed_signer(body)
    recipient = body.bstr(3, "recipient", size=FINGERPRINT_HEX_LEN // 2).hex()
    if recipient != me.fingerprint:
        raise RecordError("recipient", "value is addressed to another fingerprint")
    if allow is not None and signer not in allow:
        raise RecordError("not-allowed", f"dialer {signer[:16]}… is not allowed")
    opened.verify(public_key)
    session_id = body.bstr(4, "session_id", size=SESSION_ID_SIZE)
    kem_ct = body.bstr(7, "kem_ciphertext", size=KEM_CIPHERTEXT_SIZE)
    nonce = body.bstr(8, "nonce", size=NONCE_SIZE)
    ct = body.bstr(9, "ciphertext", min_size=_TAG_SIZE)
    header = {k: body.map[k] for k in range(1, 7)}
    try:
        shared = me.kem_decapsulate(kem_ct)
        plain = AESGCM(_offer_key(shared, kem_ct)).decrypt(
            nonce, ct, cbor2.dumps(header, canonical=True)
        )
    except (InvalidTag, ValueError):
        raise RecordError("decrypt", "ciphertext does not decrypt with our key") from None
    return Offer(
        signer, body.map[2], recipient, session_id, created,
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
    value = check_head(value, KIND_ANSWER, len(_ANSWER_PREFIX) + NONCE_SIZE + _TAG_SIZE)
    start = len(_ANSWER_PREFIX)
    nonce, ct = value[start:start + NONCE_SIZE], value[start + NONCE_SIZE:]
    try:
        plain = AESGCM(secret.key).decrypt(nonce, ct, secret.aad())
    except InvalidTag:
        raise RecordError("decrypt", "answer does not decrypt with this dial's key") from None
    return _decode_params(plain)
