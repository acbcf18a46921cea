"""Two aioice connections on loopback, connected to each other: the one way tests make them."""

from __future__ import annotations

import asyncio
from typing import Any

from tierlink.transport.aioice_adapter import IceConnection

IcePair = tuple[IceConnection, IceConnection]


async def connect(a: IceConnection, b: IceConnection, timeout: float = 10.0) -> IcePair:
    """Gather on both, hand each the other's candidates and credentials, run the checks."""
    await asyncio.gather(a.gather_candidates(), b.gather_candidates())
    for x, y in ((a, b), (b, a)):
        for candidate in y.local_candidates:
            await x.add_remote_candidate(candidate)
        await x.add_remote_candidate(None)
        x.remote_username, x.remote_password = y.local_username, y.local_password
    await asyncio.wait_for(asyncio.gather(a.connect(), b.connect()), timeout)
    return a, b


async def connect_ice(
    addresses: tuple[str, ...] = ("127.0.0.1",), **kw: Any
) -> IcePair:
    """A connected pair on ``addresses`` (``a`` controls); ``kw`` go to both connections,
    ``b_``-prefixed ones to ``b`` only."""
    ka = {k: v for k, v in kw.items() if not k.startswith("b_")}
    kb = {**ka, **{k[2:]: v for k, v in kw.items() if k.startswith("b_")}}
    a = IceConnection(controlling=True, host_addresses=list(addresses), **ka)
    b = IceConnection(controlling=False, host_addresses=list(addresses), **kb)
    return await connect(a, b)
