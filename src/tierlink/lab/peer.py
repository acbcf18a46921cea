"""A lab peer on the full :class:`tierlink.node.Node` (signaling through the lab's DHT proxy).

Run in a LAN namespace as ``python -m tierlink.lab.peer callee|dial ...``; every output line is
one JSON object:

* ``callee``: prints ``{"event": "ready", "fingerprint"}`` once its record is published, then
  answers each incoming connection's ``ping`` with ``pong`` and prints ``{"event": "accepted",
  ...}``; exits after ``--count`` connections or ``--max-seconds``.
* ``dial --to FP``: prints ``ready``, then for each of ``--attempts`` dials one
  ``{"event": "attempt", "ok", "connect_ms", "path", "tier", "selected_pair", "error"}`` and
  finally ``{"event": "done"}``.

``connect_ms`` here is the dialer's wall clock around ``node.connect`` (DHT lookup, signaling
and ICE); the Node's own ICE-only figure is reported as ``ice_ms`` when it has one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from typing import Any

PATH_ORDER = ("host", "srflx", "prflx", "relay")


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def pair_path(selected_pair: Any) -> str:
    """The most indirect candidate type of a ``{"local": {...}, "remote": {...}}`` pair."""
    if not isinstance(selected_pair, dict):
        return "none"
    types = [(selected_pair.get(end) or {}).get("type") for end in ("local", "remote")]
    known = [t for t in types if t in PATH_ORDER]
    return max(known, key=PATH_ORDER.index) if known else "none"


def make_config(args: argparse.Namespace) -> Any:
    """A NodeConfig for the lab (imported late so ``--help`` works without Node)."""
    from tierlink.identity import Identity
    from tierlink.node import NodeConfig, TurnServer

    turn = []
    if args.turn:
        host, port = _hostport(args.turn)
        turn = [TurnServer(host, port, args.turn_user, args.turn_password)]
    return NodeConfig(
        identity=Identity.generate(),
        dht_proxy=args.dht,
        host_addresses=[args.host_address],
        stun_servers=[_hostport(args.stun)] if args.stun else [],
        turn_servers=turn,
        ice_timeout=args.ice_timeout,
    )


async def callee(args: argparse.Namespace) -> None:
    from tierlink.node import Node

    async with Node(make_config(args)) as node:
        _emit({"event": "ready", "fingerprint": node.fingerprint})
        handled = 0

        async def serve() -> None:
            nonlocal handled
            async for conn in node.incoming():
                handled += 1
                asyncio.get_running_loop().create_task(_answer(conn))
                if handled >= args.count:
                    return

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(serve(), timeout=args.max_seconds)
        await asyncio.sleep(2.0)  # let the last answer go out before the node closes


async def _answer(conn: Any) -> None:
    """Answer ``ping`` with ``pong``, wait briefly for the dialer to hang up, close."""
    echoed = False
    with contextlib.suppress(Exception):
        for _ in range(3):
            msg = await conn.recv(timeout=5)
            if msg == b"ping":
                await conn.send(b"pong")
                echoed = True
            elif msg is None:
                break
    with contextlib.suppress(Exception):
        await conn.close()
    _emit({"event": "accepted", "echo": echoed, "selected_pair": conn.selected_pair,
           "path": pair_path(conn.selected_pair)})


async def dial(args: argparse.Namespace) -> None:
    from tierlink.node import Node

    async with Node(make_config(args)) as node:
        _emit({"event": "ready", "fingerprint": node.fingerprint})
        for _ in range(args.attempts):
            _emit(await _attempt(node, args.to, args.dial_timeout))
        _emit({"event": "done"})


async def _attempt(node: Any, fingerprint: str, timeout: float) -> dict[str, Any]:
    """One dial + ping/pong; never raises (the error goes into the result)."""
    result: dict[str, Any] = {"event": "attempt", "ok": False, "connect_ms": None,
                              "path": "none", "tier": "none", "selected_pair": None,
                              "error": None}
    start = time.monotonic()
    try:
        conn = await node.connect(fingerprint, timeout=timeout)
    except Exception as exc:
        result["error"] = f"connect: {type(exc).__name__}: {exc}"
        return result
    result["connect_ms"] = round((time.monotonic() - start) * 1000, 1)
    result["ice_ms"] = getattr(conn, "connect_ms", None)
    result["selected_pair"] = conn.selected_pair
    result["path"] = pair_path(conn.selected_pair)
    result["tier"] = getattr(conn, "tier", None) or (
        "relay" if result["path"] == "relay" else "direct")
    try:
        for _ in range(3):
            await conn.send(b"ping")
            if await conn.recv(timeout=2) == b"pong":
                result["ok"] = True
                break
        else:
            result["error"] = "no pong"
    except Exception as exc:
        result["error"] = f"echo: {type(exc).__name__}: {exc}"
    finally:
        with contextlib.suppress(Exception):
            await conn.close()
    if not result["ok"]:
        result["path"], result["tier"] = "none", "none"
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tierlink.lab.peer")
    sub = parser.add_subparsers(dest="role", required=True)
    for name in ("callee", "dial"):
        p = sub.add_parser(name)
        p.add_argument("--dht", required=True, help="DHT REST proxy URL")
        p.add_argument("--host-address", required=True)
        p.add_argument("--stun", default=None, help="ip:port")
        p.add_argument("--turn", default=None, help="ip:port")
        p.add_argument("--turn-user", default="lab")
        p.add_argument("--turn-password", default="labpass")
        p.add_argument("--ice-timeout", type=float, default=10.0)
        if name == "callee":
            p.add_argument("--count", type=int, default=1)
            p.add_argument("--max-seconds", type=float, default=300.0)
        else:
            p.add_argument("--to", required=True, help="callee fingerprint")
            p.add_argument("--attempts", type=int, default=1)
            p.add_argument("--dial-timeout", type=float, default=20.0)
    args = parser.parse_args(argv)
    asyncio.run(callee(args) if args.role == "callee" else dial(args))


if __name__ == "__main__":
    main(sys.argv[1:])
