"""The node: presence in the DHT, dialing, answering, and tiered delivery, composed.

:class:`Node` (the composition root, :mod:`tierlink.node.node`) is loaded on first use, so
importing one part (say :mod:`tierlink.node.delivery`) does not pull in the whole node.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tierlink.node.config import NodeConfig
from tierlink.node.delivery_events import Delivery
from tierlink.node.incoming_messages import Message
from tierlink.transport.ice import TurnServer

if TYPE_CHECKING:  # the static type of the attribute __getattr__ loads
    from tierlink.node.node import Node

__all__ = ["Delivery", "Message", "Node", "NodeConfig", "TurnServer"]


def __getattr__(name: str) -> Any:
    if name == "Node":
        from tierlink.node.node import Node

        return Node
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
