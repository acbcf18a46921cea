"""Encrypt to a peer's ML-KEM-1024 public key: the confidentiality part of offers and answers.

``encrypt_to(kem_pk, plaintext, aad, label)``:

1. ``shared, kem_ct = ML-KEM-1024.Encaps(kem_pk)``;
2. ``key = HKDF-SHA256(shared, salt=kem_ct[:32], info=b"tierlink/" + label, 32 bytes)``;
3. ``ct = AES-256-GCM(key, nonce = 12 random bytes, plaintext, aad)``.

The label separates uses (offer, answer, envelope), so a ciphertext cannot be moved between
them; ``aad`` is the value's cleartext header, so the header cannot be swapped either.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tierlink.errors import RecordError
from tierlink.identity import KEM_CIPHERTEXT_SIZE, Identity, kem_encapsulate

NONCE_SIZE = 12


def _key(shared: bytes, kem_ct: bytes, label: bytes) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=kem_ct[:32], info=b"tierlink/" + label
    ).derive(shared)


def encrypt_to(
    kem_public_key: bytes, plaintext: bytes, aad: bytes, label: bytes
) -> tuple[bytes, bytes, bytes]:
    """Returns (kem_ciphertext, nonce, ciphertext)."""
    shared, kem_ct = kem_encapsulate(kem_public_key)
    nonce = os.urandom(NONCE_SIZE)
    return kem_ct, nonce, AESGCM(_key(shared, kem_ct, label)).encrypt(nonce, plaintext, aad)


def decrypt_with(
    identity: Identity, kem_ct: bytes, nonce: bytes, ciphertext: bytes, aad: bytes, label: bytes
) -> bytes:
    """Inverse of :func:`encrypt_to`; RecordError('decrypt') if anything does not match."""
    if len(kem_ct) != KEM_CIPHERTEXT_SIZE or len(nonce) != NONCE_SIZE:
        raise RecordError("malformed", "KEM ciphertext or nonce has the wrong length")
    try:
        shared = identity.kem_decapsulate(kem_ct)
        return AESGCM(_key(shared, kem_ct, label)).decrypt(nonce, ciphertext, aad)
    except (InvalidTag, ValueError):
        raise RecordError("decrypt", "ciphertext does not decrypt with our key") from None
