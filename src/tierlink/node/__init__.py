"""The node: presence in the DHT, dialing, answering, and tiered delivery, composed."""

from tierlink.node.config import NodeConfig
from tierlink.node.delivery import Delivery, Message
from tierlink.node.node import Node
from tierlink.transport.ice import TurnServer

__all__ = ["Delivery", "Message", "Node", "NodeConfig", "TurnServer"]
