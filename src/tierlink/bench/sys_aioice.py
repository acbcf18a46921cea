"""``aioice_raw``: raw aioice datagrams between two processes, the floor under every system.

Gathering is restricted to 127.0.0.1 through
``tierlink.transport.aioice_adapter.IceConnection`` (plain
aioice skips 127.0.0.1). Raw aioice has no reliable mode, so its "reliable" figures are the
paced-datagram ceiling (highest rate with < 1 % loss), which is an upper bound for any
reliable protocol built on it. The baseline is aioice as shipped: one datagram per event-loop
pass (``batch_receive=False``) and aioice's own ``connect`` with its 20 ms check pacing, not
tierlink's faster adapter paths.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import aioice
from aioice import Candidate

from tierlink.bench.base import BenchConn, BenchSide, recv_from_queue
from tierlink.transport.aioice_adapter import IceConnection

SIGNAL_TIMEOUT = 20.0
CONNECT_TIMEOUT = 20.0
ACCEPT_TIMEOUT = 120.0


class IceBenchConn(BenchConn):
    """An aioice connection whose datagrams land in one queue."""

    def __init__(self, ice: IceConnection) -> None:
        self.ice = ice
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        ice.set_datagram_handler(self.queue.put_nowait)

    async def send(self, data: bytes) -> None:
        self.ice.send_nowait(data)

    async def recv(self, timeout: float) -> bytes:
        return await recv_from_queue(self.queue, timeout)

    def send_datagram(self, data: bytes) -> None:
        self.ice.send_nowait(data)

    async def recv_datagram(self, timeout: float) -> bytes:
        return await recv_from_queue(self.queue, timeout)

    def start_native_datagram_sink(
        self, handler: Callable[[bytes], None]
    ) -> Callable[[], None] | None:
        """aioice's own receive callback (through the adapter): no queue, no task."""
        self.ice.set_datagram_handler(handler)
        return lambda: self.ice.set_datagram_handler(self.queue.put_nowait)

    async def close(self) -> None:
        await self.ice.close()


def _description(ice: IceConnection) -> dict[str, object]:
    return {
        "ufrag": ice.local_username,
        "pwd": ice.local_password,
        "candidates": [c.to_sdp() for c in ice.local_candidates],
    }


async def _apply_remote(ice: IceConnection, desc: dict[str, object]) -> None:
    ice.remote_username = str(desc["ufrag"])
    ice.remote_password = str(desc["pwd"])
    candidates = desc["candidates"]
    assert isinstance(candidates, list)
    for sdp in candidates:
        await ice.add_remote_candidate(Candidate.from_sdp(str(sdp)))
    await ice.add_remote_candidate(None)


class IceSide(BenchSide):
    """Offer/answer of ufrag, password and candidates over the parent's pipes."""

    reliable_is_datagram = True

    async def dial(self) -> BenchConn:
        ice = IceConnection(controlling=True, host_addresses=["127.0.0.1"], batch_receive=False)
        await ice.gather_candidates()
        self.signal.send("ice-offer", _description(ice))
        answer = await self.signal.recv("ice-answer", SIGNAL_TIMEOUT)
        await _apply_remote(ice, answer)
        await asyncio.wait_for(_stock_connect(ice), CONNECT_TIMEOUT)
        return IceBenchConn(ice)

    async def accept(self) -> BenchConn:
        offer = await self.signal.recv("ice-offer", ACCEPT_TIMEOUT)
        ice = IceConnection(controlling=False, host_addresses=["127.0.0.1"], batch_receive=False)
        await ice.gather_candidates()
        self.signal.send("ice-answer", _description(ice))
        await _apply_remote(ice, offer)
        await asyncio.wait_for(_stock_connect(ice), CONNECT_TIMEOUT)
        return IceBenchConn(ice)


def _stock_connect(ice: IceConnection) -> Coroutine[Any, Any, None]:
    """aioice's own connect (with its 20 ms pacing): the baseline is aioice as shipped."""
    return aioice.Connection.connect(ice)
