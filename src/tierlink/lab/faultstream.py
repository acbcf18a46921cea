"""The message stream of a fault run's sender (:mod:`tierlink.lab.faultpeer`): ``--count``
messages at ``--rate`` per second through ``node.send`` or one ``Connection``, and what
became of them (sent, failed, acknowledged, the path before and after the fault).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from tierlink.lab.faultmsg import payload_of

#: Errors (dials, sends other than "not connected") a result keeps.
MAX_ERRORS = 8


def emit_line(obj: dict[str, Any]) -> None:
    """Print ``obj`` as one JSON line: every stdout line of a fault peer is one."""
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def _packet_size(conn: Any) -> int | None:
    """The QUIC packet size a connection's channel settled on (None: no channel)."""
    size = conn.stats().get("max_packet_size") if conn is not None else None
    return int(size) if size is not None else None


def _conn_to(node: Any, fingerprint: str) -> Any:
    """The newest open connection to ``fingerprint`` (None without one)."""
    conns = [c for c in node.connections if c.remote_fingerprint == fingerprint and not c.closed]
    return conns[-1] if conns else None


def _path_to(node: Any, fingerprint: str) -> str:
    conn = _conn_to(node, fingerprint)
    return str(conn.path_type) if conn is not None else "none"


async def _paced(count: int, rate: float, fault_at: int,
                 one: Callable[[int], Any]) -> None:
    """Call ``one(seq)`` for seq 0..count-1 at ``rate`` per second; a slow call delays the
    rest (no burst to catch up afterwards). Prints ``midway`` after ``fault_at``."""
    loop = asyncio.get_running_loop()
    due = loop.time()
    for seq in range(count):
        await asyncio.sleep(max(0.0, due - loop.time()))
        await one(seq)
        if seq == fault_at:
            emit_line({"event": "midway", "seq": seq, "t": time.monotonic()})
        due = max(due + 1 / rate, loop.time())


async def send_stream(node: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The stream through ``node.send``; then waits until every message is acknowledged,
    as long as acknowledgements keep coming (none for ``--settle-idle`` s: settled) and at
    most ``--settle`` s."""
    sent: list[int] = []
    failed: list[int] = []
    mids: dict[int, bytes] = {}
    path_before = ["none"]

    async def one(seq: int) -> None:
        try:
            payload = payload_of(seq, args.payload_size, time.monotonic())
            mids[seq] = await node.send(args.to, payload)
            sent.append(seq)
        except Exception:
            failed.append(seq)
        if seq == args.fault_at:
            path_before[0] = _path_to(node, args.to)

    await _paced(args.count, args.rate, args.fault_at, one)
    loop = asyncio.get_running_loop()
    hard = progress = loop.time()
    hard += args.settle
    tiers: dict[int, str] = {}
    for seq in sent:
        left = max(0.0, min(hard, progress + args.settle_idle) - loop.time())
        delivery = await node.wait_delivered(mids[seq], left)
        if delivery is not None:
            tiers[seq] = delivery.tier
            progress = loop.time()
    last = max(tiers) if tiers else None
    return {"sent": sent, "failed": failed, "acknowledged": sorted(tiers),
            "path_before": path_before[0], "path_after": _path_to(node, args.to),
            "tier_after": tiers[last] if last is not None else "none",
            "max_packet_size": _packet_size(_conn_to(node, args.to)),
            "migration": _migration(node, _conn_to(node, args.to)),
            "tiers": {t: list(tiers.values()).count(t) for t in set(tiers.values())}}


async def connection_stream(node: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The stream through one ``Connection``. A send that raises or outlasts
    ``--send-timeout`` is ``failed`` and that connection is closed; a new one is dialed in
    the background, and messages due while there is none fail at once (the application
    sees "not connected"), so the stream keeps its pace."""
    from tierlink.errors import ConnectionClosed

    sent: list[int] = []
    failed: list[int] = []
    loop = asyncio.get_running_loop()
    state: dict[str, Any] = {"conn": None, "dial": None, "redials": 0, "path_before": "none",
                             "errors": []}
    closing: set[asyncio.Task[None]] = set()

    async def dial() -> None:
        start = loop.time()
        try:
            state["conn"] = await node.connect(args.to, timeout=args.ice_timeout + 4)
            _note(state, f"dialed in {loop.time() - start:.2f} s: {state['conn'].path_type}")
        except Exception as exc:
            _note(state, f"dial: {type(exc).__name__}: {exc}")
            await asyncio.sleep(1.0)  # the next attempt starts with the next message

    def connection() -> Any:
        conn = state["conn"]
        if conn is not None and not conn.closed:
            return conn
        state["conn"] = None
        if state["dial"] is None or state["dial"].done():
            state["redials"] += 1
            state["dial"] = loop.create_task(dial())
        raise ConnectionClosed("not connected (dialing again)")

    async def one(seq: int) -> None:
        try:
            conn = connection()
            async with asyncio.timeout(args.send_timeout):
                await conn.send(payload_of(seq, args.payload_size, time.monotonic()))
            sent.append(seq)
        except Exception as exc:
            failed.append(seq)
            _note(state, f"{seq}: {type(exc).__name__}: {exc}",
                  keep=not isinstance(exc, ConnectionClosed))
            conn = state["conn"]
            # A send outlasting the timeout while the path is being restarted failed, but
            # the connection is kept: it continues on the new path.
            if conn is not None and not (isinstance(exc, TimeoutError) and _migrating(conn)):
                state["conn"] = None
                closing.add(loop.create_task(conn.close()))
        if seq == args.fault_at:
            conn = state["conn"]
            state["path_before"] = conn.path_type if conn is not None else "none"

    await dial()  # dialed before the stream starts
    await _paced(args.count, args.rate, args.fault_at, one)
    await asyncio.sleep(min(args.settle, 3.0))  # the last messages reach the application
    if state["dial"] is not None:
        state["dial"].cancel()
    after = state["conn"] if state["conn"] is not None and not state["conn"].closed else None
    result = {"sent": sent, "failed": failed, "path_before": state["path_before"],
              "path_after": after.path_type if after is not None else "none",
              "tier_after": after.tier if after is not None else "none",
              "redials": state["redials"], "errors": state["errors"],
              "max_packet_size": _packet_size(after), "migration": _migration(node, after)}
    if after is not None:
        with contextlib.suppress(Exception):
            await after.close()
    return result


def _migrating(conn: Any) -> bool:
    """True while ``conn`` is open and an ICE restart of its path runs."""
    from tierlink.protocol.path_restart import State

    return (conn is not None and not conn.closed
            and conn.migration.negotiation.state is not State.IDLE)


def _migration(node: Any, conn: Any) -> dict[str, Any]:
    """The path migration counters: the node's (every connection) and ``conn``'s."""
    out = {"node": node.stats().get("path_migration")}
    if conn is not None:
        out["connection"] = conn.migration.stats()
    return out


def _note(state: dict[str, Any], text: str, *, keep: bool = True) -> None:
    """Every note goes to stderr; ``keep``: also into the result's ``errors`` (the first)."""
    if keep and len(state["errors"]) < MAX_ERRORS:
        state["errors"].append(text)
    print(f"{time.monotonic():.3f} {text}", file=sys.stderr, flush=True)
