"""Every error tierlink raises: one hierarchy, each with a message a person can act on."""

from __future__ import annotations


class TierlinkError(Exception):
    """Base class of every error tierlink raises on purpose."""


class KeyFileError(TierlinkError):
    """An identity key file is missing, corrupt, of a wrong version, or unsafely readable."""


class RecordError(TierlinkError):
    """A signed DHT value was rejected.

    ``reason`` is a short stable word (``signature``, ``fingerprint``, ``expired``,
    ``stale``, ``oversize``, ``malformed``, ``version``, ``kind``, ``recipient``,
    ``replay``) so callers can count rejections by reason.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{message} [{reason}]")
        self.reason = reason


class DhtError(TierlinkError):
    """The DHT node answered with an error or something we could not read."""


class DhtUnavailable(DhtError):
    """The DHT proxy could not be reached (refused, timed out, or the node is gone)."""


class DhtNodeMissing(DhtError):
    """The ``dhtnode`` program is not installed."""


class PeerNotFound(TierlinkError):
    """No valid record for a fingerprint was found in the DHT."""


class DialTimeout(TierlinkError):
    """The peer did not answer our offer in time."""


class IceFailed(TierlinkError):
    """ICE connectivity checks failed: no candidate pair worked."""


class HandshakeFailed(TierlinkError):
    """The secure channel handshake failed (wrong certificate, impostor, protocol error)."""


class ConnectionClosed(TierlinkError):
    """The connection is closed; raised to every waiter when it closes."""


class MessageTooLarge(TierlinkError, ValueError):
    """A message exceeds the limit of the path or mode it was sent on."""


class BadTimeout(TierlinkError, ValueError):
    """A timeout value a call cannot wait for: NaN, or out of the range the call takes."""


def require_bytes(data: object, call: str) -> None:
    """TypeError naming what ``call`` takes when ``data`` is not bytes-like (a ``str`` above
    all), raised where the caller handed it over rather than deep inside a send."""
    if isinstance(data, bytes | bytearray | memoryview):
        return
    if isinstance(data, str):
        raise TypeError(f"{call}() takes bytes, not str: encode it, e.g. text.encode()")
    raise TypeError(f"{call}() takes bytes, not {type(data).__name__}")
