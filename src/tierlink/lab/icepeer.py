"""A raw ICE peer for the lab: proves the NAT lab independently of :class:`tierlink.node.Node`.

Run in a LAN namespace as ``python -m tierlink.lab.icepeer --controlling|--controlled ...``.
Protocol on stdin/stdout, one JSON object per line:

1. the peer prints ``{"event": "offer", "ufrag", "pwd", "candidates": [sdp, ...]}``;
2. the runner writes the other peer's offer line to its stdin;
3. the peer runs ICE (capped at ``--timeout`` seconds: aioice alone gives up only after ~60 s),
   the controlling side sends ``ping`` and the controlled side answers ``pong``;
4. the peer prints ``{"event": "result", "ok", "connect_ms", "local", "remote", "echo",
   "error"}`` and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from typing import Any

from aioice import Candidate

from tierlink.hostport import parse_hostport
from tierlink.transport.aioice_adapter import IceConnection


def candidate_info(candidate: Candidate) -> dict[str, Any]:
    """The JSON form of a candidate used in results: type and ``ip:port``."""
    return {"type": candidate.type, "address": f"{candidate.host}:{candidate.port}"}


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def _read_line() -> str:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, sys.stdin.readline)


async def run_peer(args: argparse.Namespace) -> dict[str, Any]:
    """Gather, swap offers through the runner, connect, echo one message; returns the result."""
    turn: dict[str, Any] = {}
    if args.turn:
        turn = {"turn_server": parse_hostport(args.turn), "turn_username": args.turn_user,
                "turn_password": args.turn_password}
    conn = IceConnection(
        controlling=args.controlling,
        host_addresses=args.host_address,
        stun_server=parse_hostport(args.stun) if args.stun else None,
        **turn,
    )
    result: dict[str, Any] = {"event": "result", "ok": False, "connect_ms": None,
                              "local": None, "remote": None, "echo": False, "error": None}
    try:
        await conn.gather_candidates()
        _emit({"event": "offer", "ufrag": conn.local_username, "pwd": conn.local_password,
               "candidates": [c.to_sdp() for c in conn.local_candidates]})
        line = await asyncio.wait_for(_read_line(), timeout=args.timeout + 30)
        if not line:
            result["error"] = "no remote offer (stdin closed)"
            return result
        offer = json.loads(line)
        conn.remote_username = offer["ufrag"]
        conn.remote_password = offer["pwd"]
        for sdp in offer["candidates"]:
            await conn.add_remote_candidate(Candidate.from_sdp(sdp))
        await conn.add_remote_candidate(None)
        start = time.monotonic()
        try:
            await asyncio.wait_for(conn.connect(), timeout=args.timeout)
        except (TimeoutError, ConnectionError) as exc:
            result["error"] = f"ice: {type(exc).__name__}: {exc}"
            return result
        result["connect_ms"] = round((time.monotonic() - start) * 1000, 1)
        selected = conn.selected_pair()
        if selected is not None:
            result["local"] = candidate_info(selected[0])
            result["remote"] = candidate_info(selected[1])
        result["ok"] = True
        result["echo"] = await _echo(conn, controlling=args.controlling)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.close(), timeout=3)
    return result


async def _echo(conn: IceConnection, *, controlling: bool) -> bool:
    """Controlling sends ``ping`` until ``pong`` comes back; controlled answers each ``ping``."""
    got: asyncio.Queue[bytes] = asyncio.Queue()
    conn.set_datagram_handler(got.put_nowait)
    end = time.monotonic() + 5.0
    while (left := end - time.monotonic()) > 0:
        if controlling:
            conn.send_nowait(b"ping")
        try:
            data = await asyncio.wait_for(got.get(), timeout=min(left, 0.5))
        except TimeoutError:
            continue
        if controlling and data == b"pong":
            return True
        if not controlling and data == b"ping":
            for _ in range(3):  # the dialer may still be waiting; a few pongs are harmless
                conn.send_nowait(b"pong")
            return True
    return False


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tierlink.lab.icepeer")
    role = parser.add_mutually_exclusive_group(required=True)
    role.add_argument("--controlling", action="store_true")
    role.add_argument("--controlled", action="store_true")
    parser.add_argument("--host-address", action="append", required=True,
                        help="repeatable (IPv4, IPv6)")
    parser.add_argument("--stun", default=None, help="ip:port")
    parser.add_argument("--turn", default=None, help="ip:port")
    parser.add_argument("--turn-user", default="lab")
    parser.add_argument("--turn-password", default="labpass")
    parser.add_argument("--timeout", type=float, default=8.0)
    args = parser.parse_args(argv)
    result = asyncio.run(run_peer(args))
    _emit(result)


if __name__ == "__main__":
    main(sys.argv[1:])
