"""A throwaway ``dhtnode`` for the tierlink benchmark: lone node, REST proxy on 127.0.0.1,
rate limiting off (``-U``: all of loopback is one source IP). Fresh per run, always stopped.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from tierlink.dht import DhtNodeProcess
from tierlink.errors import TierlinkError


class DhtNodeError(RuntimeError):
    """dhtnode is missing or did not start."""


@contextlib.asynccontextmanager
async def dhtnode_proxy() -> AsyncIterator[str]:
    """Run a supervised dhtnode for the duration of the block; yields its proxy URL."""
    node = DhtNodeProcess(no_rate_limit=True)
    try:
        await node.start()
    except TierlinkError as exc:
        await node.stop()
        raise DhtNodeError(str(exc)) from None
    try:
        yield node.proxy_url
    finally:
        await node.stop()
