"""tierlink: reach a peer by its public-key fingerprint alone, through any NAT.

The public API is importable from here: ``from tierlink import Node, NodeConfig, Identity``.
The identity, the node, the connection and the blocking facade load on first use, so
``import tierlink`` (and the CLI's start, where Ctrl-C must already be handled) stay cheap;
everything not listed in ``__all__`` is internal.
"""

from __future__ import annotations

import importlib

from tierlink.errors import (
    BadTimeout,
    ConnectionClosed,
    DhtError,
    DhtNodeMissing,
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

TYPE_CHECKING = False  # typing itself takes milliseconds to load: not at the CLI's start
if TYPE_CHECKING:
    from typing import Any

    from tierlink.blocking import BlockingConnection, BlockingNode
    from tierlink.identity import Identity, fingerprint_of
    from tierlink.node import Delivery, Message, Node, NodeConfig, TurnServer
    from tierlink.transport.connection import Connection
    from tierlink.wire.records import PeerRecord

__version__ = "0.1.0"

#: Public names that load their module on first access.
_LAZY = {
    "Identity": "tierlink.identity",
    "fingerprint_of": "tierlink.identity",
    "Node": "tierlink.node",
    "NodeConfig": "tierlink.node",
    "Delivery": "tierlink.node",
    "Message": "tierlink.node",
    "TurnServer": "tierlink.node",
    "Connection": "tierlink.transport.connection",
    "PeerRecord": "tierlink.wire.records",
    "BlockingNode": "tierlink.blocking",
    "BlockingConnection": "tierlink.blocking",
}

__all__ = [
    "BadTimeout",
    "BlockingConnection",
    "BlockingNode",
    "Connection",
    "ConnectionClosed",
    "Delivery",
    "DhtError",
    "DhtNodeMissing",
    "DhtUnavailable",
    "DialTimeout",
    "HandshakeFailed",
    "IceFailed",
    "Identity",
    "KeyFileError",
    "Message",
    "MessageTooLarge",
    "Node",
    "NodeConfig",
    "PeerNotFound",
    "PeerRecord",
    "RecordError",
    "TierlinkError",
    "TurnServer",
    "__version__",
    "fingerprint_of",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tierlink' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
