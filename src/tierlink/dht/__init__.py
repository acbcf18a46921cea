"""OpenDHT, spoken to out of process: a REST proxy client and supervised ``dhtnode`` children."""

from tierlink.dht.client import DhtClient, DhtListener
from tierlink.dht.launcher import DhtNodeProcess, NodePlace, start_nodes, stop_nodes

__all__ = ["DhtClient", "DhtListener", "DhtNodeProcess", "NodePlace", "start_nodes", "stop_nodes"]
