"""A payload that is not bytes (a ``str`` above all) is refused where the caller hands it
over, by the blocking facade and the asyncio API alike, with a TypeError that says what to
pass; the connection stays usable."""

from __future__ import annotations

import pytest

from tests.nodes import config_for, dial
from tierlink.blocking import BlockingNode
from tierlink.dht import DhtNodeProcess
from tierlink.node import Node

STR_HINT = r"takes bytes, not str: encode it, e\.g\. text\.encode\(\)"


def test_blocking_send_and_send_datagram_refuse_str(dht_cluster_sync: list[DhtNodeProcess]) -> None:
    a_dht, b_dht = dht_cluster_sync
    with BlockingNode(config_for(b_dht)) as b, BlockingNode(config_for(a_dht)) as a:
        ca = a.connect(b.fingerprint)
        cb = b.accept(timeout=10)
        assert cb is not None
        with pytest.raises(TypeError, match=r"^send\(\) " + STR_HINT):
            ca.send("text")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"^send_datagram\(\) " + STR_HINT):
            ca.send_datagram("text")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"^send\(\) takes bytes, not int$"):
            ca.send(5)  # type: ignore[arg-type]
        ca.send(b"bytes")  # the refused calls left the connection as it was
        assert cb.recv(10) == b"bytes"


async def test_async_connection_and_node_send_refuse_str(dht_cluster: list[DhtNodeProcess]) -> None:
    a = Node(config_for(dht_cluster[0]))
    b = Node(config_for(dht_cluster[1]))
    await b.start()
    await a.start()
    try:
        ca, cb = await dial(a, b)
        with pytest.raises(TypeError, match=r"^send\(\) " + STR_HINT):
            await ca.send("text")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"^submit\(\) " + STR_HINT):
            ca.submit("text")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"^send_datagram\(\) " + STR_HINT):
            ca.send_datagram("text")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"^send\(\) " + STR_HINT):
            await a.send(b.fingerprint, "text")  # type: ignore[arg-type]
        assert a.messenger is not None
        assert a.messenger.outbox.entries() == []  # nothing stored for the refused send
        await ca.send(b"bytes")
        assert await cb.recv(10) == b"bytes"
    finally:
        await a.close()
        await b.close()
