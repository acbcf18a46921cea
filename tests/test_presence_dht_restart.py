"""A restarted DHT node (empty storage) gets the record back at once, not a republish period
later: the republish loop notices the proxy's new node id and publishes again."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest

from tests.waiting import eventually
from tierlink.errors import DhtUnavailable
from tierlink.identity import Identity
from tierlink.node import presence as presence_mod
from tierlink.node.config import NodeConfig
from tierlink.node.presence import Presence

ALICE = Identity.generate()


class RestartingDht:
    """A DHT proxy whose node id the test changes (a restart) or makes unanswerable."""

    def __init__(self) -> None:
        self.node_id: str | None = "a" * 40
        self.puts = 0
        self.asked = 0

    async def info(self) -> dict[str, Any]:
        self.asked += 1
        if self.node_id is None:
            raise DhtUnavailable("proxy down")
        return {"node_id": self.node_id}

    async def put(self, key: str, value: bytes, **kw: Any) -> None:
        self.puts += 1


async def test_a_new_dht_node_id_republishes_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(presence_mod, "DHT_CHECK_S", 0.01)
    dht = RestartingDht()
    config = NodeConfig(identity=ALICE, data_dir=tmp_path, dht_proxy="http://127.0.0.1:9")
    presence = Presence(dht, ALICE, config, None, None)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop().create_task(presence.republish_loop())
    try:
        await eventually(lambda: dht.asked >= 5, 5, "the loop asks for the node id")
        assert dht.puts == 0  # same node: nothing to do before the period
        dht.node_id = None  # the proxy cannot be asked for a while: not a restart
        asked = dht.asked
        await eventually(lambda: dht.asked >= asked + 5, 5, "asked while it is down")
        assert dht.puts == 0 and presence.dht_restarts_seen == 0
        dht.node_id = "b" * 40  # back with a new id: storage is gone
        await eventually(lambda: dht.puts == 1, 5, "the record put again")
        assert presence.dht_restarts_seen == 1
        asked = dht.asked
        await eventually(lambda: dht.asked >= asked + 5, 5, "more checks")
        assert dht.puts == 1
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
