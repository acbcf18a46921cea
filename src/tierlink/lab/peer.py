"""A lab peer on the full :class:`tierlink.node.Node` (signaling through the lab's DHT proxy).

Run in a LAN namespace as ``python -m tierlink.lab.peer callee|dial ...``; every output line is
one JSON object:

* ``callee``: prints ``{"event": "ready", "fingerprint"}`` once its record is published, then
  answers each incoming connection's ``ping`` with ``pong`` (``{"event": "accepted", ...}``)
  and takes every tiered message from ``node.messages()`` (``{"event": "message", "payload",
  "sender", "tier", "message_id"}``; taking it is what acknowledges it). It runs until its
  stdin reaches EOF (``--stdin-control``: the runner closes it once the dialer is done, so the
  callee outlives the last acknowledgement) or ``--max-seconds`` pass.
* ``dial --to FP``: prints ``ready``, then for each of ``--attempts``: one dial + ping/pong
  (the connect attempt), then one tiered message ``node.send(FP, b"lab-msg <i> <nonce>")``
  awaited with ``wait_delivered`` for at most ``--message-timeout`` seconds; prints
  ``{"event": "attempt", "ok", "connect_ms", "path", "selected_pair", "error", "tier",
  "delivered", "deliver_ms", "message_id", "payload"}`` and finally ``{"event": "done"}``.
  ``tier`` is the delivering tier (``direct``/``relay``/``offline``) or ``none``.

Between attempts the dialer closes every connection (also the message link), so each attempt's
message dials afresh instead of reusing the previous attempt's link.

``connect_ms`` is the dialer's wall clock around ``node.connect`` (DHT lookup, signaling and
ICE); the Node's own figure is reported as ``ice_ms``. ``deliver_ms`` runs from ``send`` to the
acknowledgement (it includes the live dial and, without a path, the fallback to the DHT).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tierlink.hostport import parse_hostport


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def make_config(args: argparse.Namespace, data_dir: Path) -> Any:
    """A NodeConfig for the lab (imported late so ``--help`` works without Node).

    A short ICE timeout and a send budget a few seconds above it let a cell without a path
    fall back to the offline tier quickly; the short re-put interval retries a lost put.
    """
    from tierlink.identity import Identity
    from tierlink.node import NodeConfig, TurnServer

    turn = []
    for spec in args.turn:
        host, port = parse_hostport(spec)
        turn.append(TurnServer(host, port, args.turn_user, args.turn_password))
    if args.turn_tls:
        host, port = parse_hostport(args.turn_tls)
        turn.append(TurnServer(host, port, args.turn_user, args.turn_password,
                               transport="tls", ca_file=args.turn_ca))
    budget = args.send_budget if args.send_budget is not None else args.ice_timeout + 4.0
    return NodeConfig(
        identity=Identity.generate(),
        dht_proxy=args.dht,
        host_addresses=args.host_address,
        stun_servers=[parse_hostport(s) for s in args.stun],
        turn_servers=turn,
        ice_timeout=args.ice_timeout,
        data_dir=data_dir,
        send_budget=budget,
        offline_reput_interval=args.reput_interval,
    )


# -- callee ---------------------------------------------------------------------------------
async def callee(args: argparse.Namespace, data_dir: Path) -> None:
    from tierlink.node import Node

    async with Node(make_config(args, data_dir)) as node:
        tasks: set[asyncio.Task[None]] = set()

        async def serve() -> None:
            async for conn in node.incoming():
                task = asyncio.get_running_loop().create_task(_answer(conn))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

        async def consume() -> None:
            async for msg in node.messages():
                _emit({"event": "message", "payload": msg.payload.decode(errors="replace"),
                       "sender": msg.sender, "tier": msg.tier,
                       "message_id": msg.message_id.hex()})

        workers = [asyncio.ensure_future(serve()), asyncio.ensure_future(consume())]
        _emit({"event": "ready", "fingerprint": node.fingerprint})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(_until_stdin_eof() if args.stdin_control
                                   else asyncio.Event().wait(), timeout=args.max_seconds)
        await asyncio.sleep(1.0)  # let the last answer / acknowledgement go out
        for task in [*workers, *tasks]:
            task.cancel()
        await asyncio.gather(*workers, *tasks, return_exceptions=True)


async def _until_stdin_eof() -> None:
    """Return when stdin reaches EOF (the runner's signal that the dialer is done)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    try:
        while await reader.read(4096):
            pass
    finally:
        transport.close()


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
           "path": conn.path_type})


# -- dialer ---------------------------------------------------------------------------------
async def dial(args: argparse.Namespace, data_dir: Path) -> None:
    from tierlink.node import Node

    nonce = secrets.token_hex(4)
    async with Node(make_config(args, data_dir)) as node:
        _emit({"event": "ready", "fingerprint": node.fingerprint})
        for i in range(args.attempts):
            result = await _attempt(node, args.to, args.dial_timeout)
            result.update(await _message(node, args.to, f"lab-msg {i} {nonce}".encode(),
                                         args.message_timeout))
            for conn in list(node.connections):  # the next attempt dials afresh
                with contextlib.suppress(Exception):
                    await conn.close()
            _emit(result)
        _emit({"event": "done"})


async def _attempt(node: Any, fingerprint: str, timeout: float) -> dict[str, Any]:
    """One dial + ping/pong; never raises (the error goes into the result)."""
    result: dict[str, Any] = {"event": "attempt", "ok": False, "connect_ms": None,
                              "path": "none", "selected_pair": None, "error": None}
    start = time.monotonic()
    try:
        conn = await node.connect(fingerprint, timeout=timeout)
    except Exception as exc:
        result["error"] = f"connect: {type(exc).__name__}: {exc}"
        return result
    result["connect_ms"] = round((time.monotonic() - start) * 1000, 1)
    result["ice_ms"] = getattr(conn, "connect_ms", None)
    result["selected_pair"] = conn.selected_pair
    result["path"] = conn.path_type
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
        result["path"] = "none"
    return result


async def _message(node: Any, fingerprint: str, payload: bytes, timeout: float) -> dict[str, Any]:
    """Send one tiered message and wait (bounded) for its acknowledgement; never raises."""
    out: dict[str, Any] = {"tier": "none", "delivered": False, "deliver_ms": None,
                           "message_id": None, "payload": payload.decode(),
                           "message_error": None}
    start = time.monotonic()
    try:
        mid = await node.send(fingerprint, payload)
        out["message_id"] = mid.hex()
        delivery = await node.wait_delivered(mid, timeout)
    except Exception as exc:
        out["message_error"] = f"send: {type(exc).__name__}: {exc}"
        return out
    if delivery is None:
        out["message_error"] = f"not acknowledged within {timeout:.0f} s"
        return out
    out.update(tier=delivery.tier, delivered=True,
               deliver_ms=round((time.monotonic() - start) * 1000, 1))
    return out


# -- entry point ----------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tierlink.lab.peer")
    sub = parser.add_subparsers(dest="role", required=True)
    for name in ("callee", "dial"):
        p = sub.add_parser(name)
        p.add_argument("--dht", required=True, help="DHT REST proxy URL")
        p.add_argument("--host-address", action="append", required=True,
                       help="repeatable (IPv4, IPv6)")
        p.add_argument("--stun", action="append", default=[], help="ip:port (repeatable)")
        p.add_argument("--turn", action="append", default=[], help="ip:port (repeatable)")
        p.add_argument("--turn-tls", default=None, help="ip:port of TURN over TLS")
        p.add_argument("--turn-ca", default=None, help="CA file that signed the TLS server")
        p.add_argument("--turn-user", default="lab")
        p.add_argument("--turn-password", default="labpass")
        p.add_argument("--ice-timeout", type=float, default=8.0)
        p.add_argument("--send-budget", type=float, default=None,
                       help="seconds for a live path before the offline tier "
                            "(default: ice timeout + 4)")
        p.add_argument("--reput-interval", type=float, default=20.0)
        p.add_argument("--data-dir", type=Path, default=None,
                       help="outbox directory (default: a temporary one, removed at exit)")
        if name == "callee":
            p.add_argument("--max-seconds", type=float, default=300.0)
            p.add_argument("--stdin-control", action="store_true",
                           help="exit when stdin reaches EOF")
        else:
            p.add_argument("--to", required=True, help="callee fingerprint")
            p.add_argument("--attempts", type=int, default=1)
            p.add_argument("--dial-timeout", type=float, default=20.0)
            p.add_argument("--message-timeout", type=float, default=30.0)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    role = callee if args.role == "callee" else dial
    if args.data_dir is not None:
        asyncio.run(role(args, args.data_dir))
        return
    with tempfile.TemporaryDirectory(prefix="tierlink-lab-peer-") as tmp:
        asyncio.run(role(args, Path(tmp)))


if __name__ == "__main__":
    main(sys.argv[1:])
