"""One tierlink peer of the DHT lab, in its own namespace: ``python -m tierlink.bench.dht_peer
PARAMS_JSON``.

The peer runs its own ``dhtnode`` (as a Node's embedded one would: on loopback, joined through
the lab node named in ``bootstrap``) and a :class:`~tierlink.node.Node` on it. Protocol with
the parent, JSON lines: stdout first carries ``{"ready": FINGERPRINT, ...}``; a ``callee``
then prints one ``{"ev", "key", "h", "t"}`` line per DHT put and per listened value (``t``:
``time.monotonic()``, one clock for every namespace; ``h``: a digest of the value) and answers
every dial; a ``dialer`` reads ``{"dial": FINGERPRINT}`` lines from stdin and answers each
with ``{"ok", "dial_ms", "lookup_ms", "events", "error"}``: a cold dial (the callee's record
forgotten first, so it is looked up). Closing stdin stops the peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tierlink.dht import DhtClient, DhtNodeProcess
from tierlink.errors import DhtUnavailable, TierlinkError
from tierlink.identity import Identity
from tierlink.node import Node, NodeConfig
from tierlink.wire.records import now_ms

JsonDict = dict[str, Any]
#: Starts of the peer's dhtnode before giving up on joining the lab.
JOIN_TRIES = 3


def emit(obj: JsonDict) -> None:
    """One protocol line to the parent."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def event(ev: str, key: str, value: bytes) -> JsonDict:
    """A traced DHT event, stamped with the machine-wide monotonic clock."""
    return {"ev": ev, "key": key, "h": hashlib.sha256(value).hexdigest()[:16] if value else "",
            "t": time.monotonic()}


async def _lines() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def _serve(node: Node) -> None:
    """Accept (and close) every connection a dial opens."""
    async for conn in node.incoming():
        await conn.close()


async def _dial(node: Node, fingerprint: str, timeout: float, events: list[JsonDict]) -> JsonDict:
    node.records.forget(fingerprint)
    events.clear()
    started, wall = time.monotonic(), now_ms()
    out: JsonDict = {"t0": started}
    try:
        conn = await node.connect(fingerprint, timeout=timeout)
    except (TierlinkError, OSError) as exc:
        out.update(ok=False, error=f"{type(exc).__name__}: {exc}")
    else:
        out.update(ok=True, dial_ms=(time.monotonic() - started) * 1000)
        await conn.close()
    accepted = node.records.accepted_at(fingerprint)
    out["lookup_ms"] = None if accepted is None else max(accepted - wall, 0)
    out["events"] = list(events)
    return out


async def _join(host: str, port: int, log_file: str | None) -> DhtNodeProcess:
    """A dhtnode joined through ``host:port``. dhtnode 2.4's proxy refreshes the node info
    it serves only twice (at start and 3 s later), so a bootstrap answer later than that is
    never seen by the join check: such a start is tried again."""
    for attempt in range(JOIN_TRIES):
        dht = DhtNodeProcess(bootstrap=[(host, port)], log_file=log_file, join_timeout=10.0)
        try:
            await dht.start()
            return dht
        except DhtUnavailable:
            if attempt == JOIN_TRIES - 1:
                raise
    raise AssertionError("unreachable")


async def run(params: JsonDict) -> None:
    """Start the dhtnode and the Node, then act as ``params["role"]``."""
    host, port = params["bootstrap"]
    dht = await _join(host, int(port), params.get("log_file"))
    state = tempfile.mkdtemp(prefix="tldm-peer-")
    config = NodeConfig(Identity.generate(), dht_proxy=dht.proxy_url,
                        host_addresses=[params["address"]], data_dir=Path(state))
    node = Node(config)
    stdin = await _lines()
    try:
        await node.start()
        client: DhtClient | None = node.dht
        assert client is not None
        info = await client.info()
        emit({"ready": node.fingerprint, "dht_port": dht.port, "node_id": info.get("node_id")})
        if params["role"] == "callee":
            client.trace = lambda ev, key, value: emit(event(ev, key, value))
            serve = asyncio.create_task(_serve(node))
            await stdin.read()
            serve.cancel()
            return
        events: list[JsonDict] = []
        client.trace = lambda ev, key, value: events.append(event(ev, key, value))
        while line := await stdin.readline():
            cmd = json.loads(line)
            if "dial" in cmd:
                emit(await _dial(node, cmd["dial"], float(cmd.get("timeout", 10.0)), events))
            elif "info" in cmd:
                emit({"info": await client.info()})
    finally:
        await node.close()
        await dht.stop()


def main() -> int:
    """The peer process."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(json.loads(sys.argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
