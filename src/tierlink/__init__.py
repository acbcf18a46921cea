"""tierlink: reach a peer by its public-key fingerprint alone, through any NAT."""

from tierlink.errors import (
    ConnectionClosed,
    DhtError,
    DhtUnavailable,
    DialTimeout,
    HandshakeFailed,
    IceFailed,
    KeyFileError,
    MessageTooLarge,
    PeerNotFound,
    RecordError,
    TierlinkError,
)
from tierlink.identity import Identity, fingerprint_of

__version__ = "0.1.0"

__all__ = [
    "ConnectionClosed",
    "DhtError",
    "DhtUnavailable",
    "DialTimeout",
    "HandshakeFailed",
    "IceFailed",
    "Identity",
    "KeyFileError",
    "MessageTooLarge",
    "PeerNotFound",
    "RecordError",
    "TierlinkError",
    "__version__",
    "fingerprint_of",
]
