"""Offers and answers: how two peers exchange ICE credentials through the DHT, privately.

The dialer puts an offer (kind 0x02, a sealed-sender value, :mod:`tierlink.wire.sealed`)
under the callee's offers key: its identity, signature, session id and session description
all travel encrypted to the callee's ML-KEM-1024 key. The callee puts a sealed answer (kind
0x03, no signature) under an answer key only the two can compute, and the same value under
its own offers key (where a dialer's listen is already synced), encrypted under a key
derived from the offer's KEM secret. Only the callee can derive that key, so an answer whose
tag verifies is the callee's and bound to this one offer (implicit authentication, as in
KEMTLS). A DHT observer sees that someone dials the callee and that the callee answered some dial at
that time, and an answer under an unrelated key; not who dials, no session id, no address,
nothing that links an answer to its offer.
Byte layouts, key derivations and limits: docs/PROTOCOL.md, sections "Offer", "Answer" and
"Session description".
"""

from __future__ import annotations

import functools
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
from tierlink.identity import Identity
from tierlink.wire import dhtkeys
from tierlink.wire.decoding import Fields, check_bytes, check_uint, decode, malformed
from tierlink.wire.records import (
    KIND_ANSWER,
    KIND_OFFER,
    MAX_CLOCK_SKEW_MS,
    WIRE_VERSION,
    CandidateInfo,
    check_head,
    decode_candidate,
    encode_candidate,
    now_ms,
)
from tierlink.wire.sealed import (
    SealedKind,
    SealedValue,
    Unsealed,
    check_clear,
    open_sealed,
    seal_to,
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
PURPOSES = ("app", "messages", "mailbox")
_ANSWER_PREFIX = bytes([WIRE_VERSION, KIND_ANSWER])
_TAG_SIZE = 16

OFFER = SealedKind(
    KIND_OFFER, "offer", int(MAX_OFFER_LIFETIME_S * 1000), (1, 2), late_ms=MAX_CLOCK_SKEW_MS
)
"""Offers as sealed-sender values, with inner fields K_SESSION_ID and K_PARAMS. An offer
lives a minute, so a dialer whose clock is minutes behind the callee's would always look
expired: offers count until :data:`MAX_CLOCK_SKEW_MS` after their expiry, and the callee
remembers answered sessions that much longer (replays stay refused)."""
K_SESSION_ID, K_PARAMS = 1, 2
ANSWER_SECRET_LABEL = b"answer-secret"
"""Label of the answer's AEAD key (sealed-sender derivation of the offer)."""
ANSWER_LOCATOR_LABEL = b"tierlink/answer-locator"
"""HKDF info deriving the answer's DHT locator from the answer key."""


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

    @functools.cached_property
    def restart_cipher(self) -> AESGCM:
        """The AEAD of this session's restart values (§10.1), derived once: a receiver tries
        the key of every open session on each restart value, so a try costs one tag check."""
        return AESGCM(_hkdf(self.key, RESTART_KEY_LABEL))

    @functools.cached_property
    def restart_aads(self) -> tuple[bytes, bytes]:
        """The associated data of this session's restart values, per direction
        (``TO_CALLEE``, ``TO_DIALER``)."""
        return (_restart_aad(self, TO_CALLEE), _restart_aad(self, TO_DIALER))

    def answer_key(self) -> str:
        """The DHT key of this offer's answer: its locator (HKDF of :attr:`key`, one-way)
        hashed like every key (:func:`tierlink.wire.dhtkeys.answer_key`). Only the dialer
        and the callee can compute it, and it shows nothing of the offer it answers."""
        locator = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=ANSWER_LOCATOR_LABEL
        ).derive(self.key)
        return dhtkeys.answer_key(locator)


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


def _secret(made_or_opened: SealedValue | Unsealed, session_id: bytes, dialer: str,
            callee: str) -> OfferSecret:
    """The answer secret of an offer: derived from its KEM secret and its clear part."""
    return OfferSecret(
        made_or_opened.derive(OFFER, ANSWER_SECRET_LABEL), session_id, dialer, callee
    )


def _params_map(params: SessionDescription) -> dict[int, Any]:
    return {
        1: params.ufrag,
        2: params.pwd,
        3: [encode_candidate(c) for c in params.candidates],
        4: params.cert_sha256,
        6: params.purpose,
        **({7: list(params.channel_limits)} if params.channel_limits is not None else {}),
        **({8: list(params.quic_flight)} if params.quic_flight else {}),
    }


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


def _decode_params(value: Any) -> SessionDescription:
    """A session description from its decoded map (an answer's plaintext, an offer's key 2)."""
    inner = Fields(value, "session description", (1, 2, 3, 4, 6, 7, 8))
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
    *,
    created_at_ms: int | None = None,
) -> tuple[bytes, OfferSecret]:
    """Seal the session id and ``params`` from ``signer`` to the recipient.

    Returns the value and the secret the recipient's answer will be sealed with. The
    lifetime is capped at :data:`MAX_OFFER_LIFETIME_S` (receivers refuse longer) and must be
    positive (ValueError); ``created_at_ms`` defaults to now (tests build old offers).
    """
    if len(session_id) != SESSION_ID_SIZE:
        raise ValueError(f"a session id is {SESSION_ID_SIZE} bytes")
    t = now_ms() if created_at_ms is None else created_at_ms
    made = seal_to(
        signer, OFFER, recipient, recipient_kem_public_key,
        {K_SESSION_ID: bytes(session_id), K_PARAMS: _params_map(params)},
        created_at_ms=t,
        expires_at_ms=t + int(min(lifetime_s, MAX_OFFER_LIFETIME_S) * 1000),
    )
    return made.value, _secret(made, bytes(session_id), signer.fingerprint, recipient)


def check_offer_clear(value: bytes, *, now: int | None = None) -> None:
    """The free checks of an offer (size, head, times; no key, no cryptography), as
    :func:`decode_offer` runs them first; RecordError with their reasons."""
    check_clear(value, OFFER, now=now)


def decode_offer(
    value: bytes, me: Identity, *, now: int | None = None, allow: Container[str] | None = None
) -> Offer:
    """Check and open an offer to ``me`` in the sealed-sender order (size, head, times,
    decapsulation, AEAD, inner fields, the dialer's fingerprint binding, ``allow`` on the
    claimed dialer (``not-allowed``), signature), then the session description."""
    opened = open_sealed(value, OFFER, me, now=now, allow=allow)
    session_id = opened.fields.bstr(K_SESSION_ID, "session_id", size=SESSION_ID_SIZE)
    params = _decode_params(opened.fields.map.get(K_PARAMS))
    return Offer(
        opened.sender, opened.sender_public_key, opened.recipient, session_id,
        opened.created_at_ms, opened.expires_at_ms, params,
        _secret(opened, session_id, opened.sender, opened.recipient),
    )


# -- answers ---------------------------------------------------------------------------------
def encode_answer(secret: OfferSecret, params: SessionDescription) -> bytes:
    """Seal ``params`` as the answer to the offer that established ``secret``."""
    nonce = os.urandom(NONCE_SIZE)
    plain = cbor2.dumps(_params_map(params), canonical=True)
    ct = AESGCM(secret.key).encrypt(nonce, plain, secret.aad())
    return _ANSWER_PREFIX + nonce + ct


def is_answer(value: bytes) -> bool:
    """True if ``value`` claims to be an answer (its head; nothing is checked): answers also
    travel under the callee's offers key, where offers and restarts are."""
    return value[:2] == _ANSWER_PREFIX


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
    return _decode_params(decode(plain))


# -- ICE restarts ----------------------------------------------------------------------------
KIND_RESTART = 0x07
"""A path restart offer or answer, sealed under the session's restart key and put under
the peer's offers key (docs/PROTOCOL.md §10.1)."""
_RESTART_PREFIX = bytes([WIRE_VERSION, KIND_RESTART])
RESTART_KEY_LABEL = b"tierlink/restart-key"
"""HKDF info deriving a session's restart AEAD key from its answer secret."""
RESTART_OFFER, RESTART_ANSWER = 0, 1
TO_CALLEE, TO_DIALER = 0, 1
MAX_RESTART_SEQ = 2**32 - 1
MAX_RESTART_SIZE = 4096
"""Largest restart value: a receiver tries each of its connections' keys on it."""


@dataclass(frozen=True)
class Restart:
    """One restart message: an offer (``RESTART_OFFER``, new ICE credentials and candidates
    for a new path) or the answer to offer ``seq`` (``RESTART_ANSWER``)."""

    kind: int
    seq: int
    params: SessionDescription


def _hkdf(key: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(key)


def _restart_aad(secret: OfferSecret, direction: int) -> bytes:
    return (
        _RESTART_PREFIX + secret.session_id + bytes.fromhex(secret.dialer)
        + bytes.fromhex(secret.callee) + bytes([direction])
    )


def encode_restart(secret: OfferSecret, direction: int, restart: Restart) -> bytes:
    """Seal ``restart`` for the session of ``secret``, travelling in ``direction``."""
    if restart.kind not in (RESTART_OFFER, RESTART_ANSWER):
        raise ValueError("a restart is an offer or an answer")
    if direction not in (TO_CALLEE, TO_DIALER):
        raise ValueError("a restart travels to the callee or to the dialer")
    if not 1 <= restart.seq <= MAX_RESTART_SEQ:
        raise ValueError(f"a restart sequence number is 1-{MAX_RESTART_SEQ}")
    params = restart.params
    description = {1: params.ufrag, 2: params.pwd,
                   3: [encode_candidate(c) for c in params.candidates]}
    plain = cbor2.dumps({1: restart.kind, 2: restart.seq, 3: description}, canonical=True)
    nonce = os.urandom(NONCE_SIZE)
    value = _RESTART_PREFIX + nonce + secret.restart_cipher.encrypt(
        nonce, plain, secret.restart_aads[direction]
    )
    if len(value) > MAX_RESTART_SIZE:
        raise ValueError(f"restart of {len(value)} bytes exceeds {MAX_RESTART_SIZE}")
    return value


def is_restart(value: bytes) -> bool:
    """True if ``value`` claims to be a restart (its head; nothing is checked)."""
    return value[:2] == _RESTART_PREFIX


def decode_restart(value: bytes, secret: OfferSecret, direction: int) -> Restart:
    """Open a restart value sent in ``direction`` in the session of ``secret``; RecordError
    (``decrypt``) for a value of another session, pair or direction, or tampered with."""
    value = check_head(value, KIND_RESTART, len(_RESTART_PREFIX) + NONCE_SIZE + _TAG_SIZE)
    if len(value) > MAX_RESTART_SIZE:
        raise RecordError("oversize", f"restart of {len(value)} bytes exceeds {MAX_RESTART_SIZE}")
    start = len(_RESTART_PREFIX)
    nonce, ct = value[start:start + NONCE_SIZE], value[start + NONCE_SIZE:]
    try:
        plain = secret.restart_cipher.decrypt(nonce, ct, secret.restart_aads[direction])
    except InvalidTag:
        raise RecordError("decrypt", "restart does not decrypt with this session's key") from None
    fields = Fields(decode(plain), "restart", (1, 2, 3))
    kind = fields.uint(1, "kind", maximum=RESTART_ANSWER)
    seq = fields.uint(2, "seq", minimum=1, maximum=MAX_RESTART_SEQ)
    described = fields.map.get(3)
    if not isinstance(described, dict) or set(described) - {1, 2, 3}:
        raise malformed("restart session description has unknown keys")
    return Restart(kind, seq, _decode_params(described))
