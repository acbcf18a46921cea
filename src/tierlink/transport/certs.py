"""The node's ephemeral TLS certificate for the QUIC channel.

Each node generates one self-signed EC P-256 certificate at start and reuses it for every
connection. Peers authenticate each other by pinning the SHA-256 of the DER certificate
(exchanged through signed signaling records, like WebRTC's ``a=fingerprint``), not by any CA.
"""

from __future__ import annotations

import datetime
import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

#: Validity of a generated certificate. Peers do not check it (the pin is what counts);
#: it only has to look sane to generic TLS tooling.
VALIDITY = datetime.timedelta(days=365)


def certificate_sha256(der: bytes) -> bytes:
    """SHA-256 of a DER certificate: the 32-byte fingerprint peers pin."""
    return hashlib.sha256(der).digest()


@dataclass(frozen=True)
class LocalCertificate:
    """A self-signed certificate and its private key, with the pinned SHA-256."""

    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey
    der: bytes
    sha256: bytes

    @classmethod
    def generate(cls, common_name: str = "tierlink") -> LocalCertificate:
        """Create a fresh EC P-256 key and a self-signed certificate for it."""
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + VALIDITY)
            .sign(key, hashes.SHA256())
        )
        der = cert.public_bytes(serialization.Encoding.DER)
        return cls(certificate=cert, private_key=key, der=der, sha256=certificate_sha256(der))

    def __repr__(self) -> str:
        return f"LocalCertificate(sha256={self.sha256.hex()})"
