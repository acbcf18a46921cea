"""OpenDHT, spoken to out of process: a REST proxy client and a supervised ``dhtnode`` child."""

from tierlink.dht.client import DhtClient, DhtListener
from tierlink.dht.launcher import DhtNodeProcess

__all__ = ["DhtClient", "DhtListener", "DhtNodeProcess"]
