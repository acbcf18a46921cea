"""CLI commands that run a node: ``run``, ``send``, ``lookup``, ``demo``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import signal
import sys
from pathlib import Path
from typing import Any

from tierlink.cli.argtypes import dht_address, port_number, stun_address, turn_server
from tierlink.errors import ConnectionClosed, TierlinkError
from tierlink.identity import Identity, default_identity_path, is_fingerprint
from tierlink.node import Node, NodeConfig
from tierlink.transport.connection import Connection


def _port_range(text: str) -> tuple[int, int]:
    low, dash, high = text.partition("-")
    try:
        lo, hi = int(low), int(high)
    except ValueError:
        lo = hi = -1
    if not dash or not 1024 <= lo <= hi <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port range {text!r}: expected LOW-HIGH "
                                         "within 1024-65535")
    return lo, hi


def _address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IP address") from None


def _fingerprint(text: str) -> str:
    text = text.strip().lower()
    if not is_fingerprint(text):
        raise argparse.ArgumentTypeError(
            f"{text[:20]!r}… is not a fingerprint (128 hex characters)"
            if len(text) > 20 else f"{text!r} is not a fingerprint (128 hex characters)"
        )
    return text


def add_node_options(p: argparse.ArgumentParser) -> None:
    """Options every node-running command shares."""
    p.add_argument("--identity", help=f"key file (default {default_identity_path()})")
    p.add_argument("--bootstrap", type=dht_address, action="append", default=[],
                   metavar="HOST[:PORT]", help="OpenDHT node to join (embedded dhtnode)")
    p.add_argument("--dht-proxy", metavar="URL", help="use an existing OpenDHT REST proxy")
    p.add_argument("--dht-port", type=port_number, help="UDP port of the embedded dhtnode")
    p.add_argument("--no-rate-limit", action="store_true",
                   help="embedded dhtnode without rate limits (loopback tests)")
    p.add_argument("--stun", type=stun_address, action="append", default=[],
                   metavar="HOST[:PORT]")
    p.add_argument("--turn", type=turn_server, action="append", default=[],
                   metavar="USER:PASS@HOST:PORT")
    p.add_argument("--host-address", type=_address, action="append", dest="host_addresses",
                   metavar="IP", help="gather host candidates only on these addresses")
    p.add_argument("--relay-only", action="store_true", help="connect only through TURN")
    p.add_argument("--port-range", type=_port_range, metavar="LOW-HIGH",
                   help="bind ICE host sockets inside this UDP port range")
    p.add_argument("--mode", choices=["private", "public"], default="private",
                   help="list candidates in the public record (public) or not (private)")
    p.add_argument("--allow", type=_fingerprint, action="append", metavar="FINGERPRINT",
                   help="answer only these dialers (repeatable)")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="seconds to try a live path before the offline tier")
    p.add_argument("--data-dir", help="outbox directory (default: per identity, XDG data dir)")
    p.add_argument("--json", action="store_true", help="JSON output")


def node_config(args: argparse.Namespace) -> NodeConfig:
    """Build the node configuration from parsed options."""
    path = Path(args.identity) if args.identity else default_identity_path()
    return NodeConfig(
        identity=Identity.load(path),
        dht_proxy=args.dht_proxy,
        bootstrap=list(args.bootstrap),
        dht_port=args.dht_port,
        dht_no_rate_limit=args.no_rate_limit,
        host_addresses=args.host_addresses,
        stun_servers=list(args.stun),
        turn_servers=list(args.turn),
        relay_only=args.relay_only,
        port_range=args.port_range,
        mode=args.mode,
        allow=set(args.allow) if args.allow else None,
        dial_timeout=args.timeout,
        send_budget=args.timeout,
        data_dir=Path(args.data_dir) if args.data_dir else None,
    )


def _emit(args: argparse.Namespace, obj: dict[str, Any], text: str) -> None:
    print(json.dumps(obj) if args.json else text, flush=True)


# -- run -----------------------------------------------------------------------------------
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}
#: Line/paragraph separators and bidirectional overrides: they break or reorder a line.
_UNICODE_CONTROLS = frozenset({0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A)})


def printable(text: str) -> str:
    """``text`` safe for a terminal: C0 and C1 control characters and DEL (so every ANSI
    escape sequence), line separators and bidi overrides shown as backslash escapes,
    backslashes doubled so that the line reads unambiguously. A peer's message cannot move
    the cursor, clear the screen or forge another output line."""
    out = []
    for ch in text:
        code = ord(ch)
        if ch in _NAMED_ESCAPES:
            out.append(_NAMED_ESCAPES[ch])
        elif code < 0x20 or 0x7F <= code <= 0x9F:
            out.append(f"\\x{code:02x}")
        elif code in _UNICODE_CONTROLS:
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def message_line(sender: str, text: str, tier: str | None = None) -> str:
    """The human output line of a received message (sender shortened, text escaped)."""
    via = f" [{tier}]" if tier is not None else ""
    return f"{sender[:16]}…{via}: {printable(text)}"


async def _print_messages(args: argparse.Namespace, conn: Connection) -> None:
    with contextlib.suppress(ConnectionClosed):
        while True:
            msg = await conn.recv()
            if msg is None:
                continue
            text = msg.decode("utf-8", errors="replace")
            _emit(args, {"event": "message", "from": conn.remote_fingerprint,
                         "bytes": len(msg), "text": text},
                  message_line(conn.remote_fingerprint, text))


async def _run(args: argparse.Namespace) -> int:
    config = node_config(args)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Node(config) as node:
        info: dict[str, Any] = {"event": "online", "fingerprint": node.fingerprint,
                                "mode": config.mode}
        if node.dht_process is not None:
            info["dht_port"] = node.dht_process.port
        text = f"online as {node.fingerprint}"
        if "dht_port" in info:
            text += f"\n(embedded DHT on udp port {info['dht_port']}; others may "
            text += f"--bootstrap 127.0.0.1:{info['dht_port']})"
        _emit(args, info, text)
        readers: set[asyncio.Task[None]] = set()

        async def accept() -> None:
            async for conn in node.incoming():
                _emit(args, {"event": "connected", "from": conn.remote_fingerprint,
                             "selected_pair": conn.selected_pair},
                      f"connection from {conn.remote_fingerprint[:16]}… "
                      f"({conn.path_type})")
                task = asyncio.create_task(_print_messages(args, conn))
                readers.add(task)
                task.add_done_callback(readers.discard)

        async def queued_messages() -> None:
            async for m in node.messages():
                text = m.payload.decode("utf-8", errors="replace")
                _emit(args, {"event": "message", "from": m.sender, "bytes": len(m.payload),
                             "text": text, "tier": m.tier, "message_id": m.message_id.hex()},
                      message_line(m.sender, text, m.tier))

        acceptor = asyncio.create_task(accept())
        messages = asyncio.create_task(queued_messages())
        await stop.wait()
        acceptor.cancel()
        messages.cancel()
        for task in list(readers):
            task.cancel()
    print("stopped", file=sys.stderr)
    return 0


# -- send / lookup -------------------------------------------------------------------------
async def _send(args: argparse.Namespace) -> int:
    config = node_config(args)
    code = 0
    async with Node(config) as node:
        assert node.messenger is not None
        mids = [await node.send(args.fingerprint, text.encode()) for text in args.message]
        for text, mid in zip(args.message, mids, strict=True):
            state = await node.messenger.wait_settled(mid, args.timeout + args.wait + 10)
            obj: dict[str, Any] = {"event": "sent", "to": args.fingerprint,
                                   "message_id": mid.hex(), "bytes": len(text.encode())}
            if state == "delivered":
                d = await node.wait_delivered(mid, 0.01)
                obj.update(state="delivered", tier=d.tier if d else "?")
                line = f"delivered {mid.hex()[:12]} via the {obj['tier']} tier"
            elif state == "queued":
                d = await node.wait_delivered(mid, args.wait)
                if d is not None:
                    obj.update(state="delivered", tier=d.tier)
                    line = f"delivered {mid.hex()[:12]} via the {d.tier} tier"
                else:
                    obj.update(state="queued", tier=None)
                    line = (f"queued {mid.hex()[:12]} in the DHT offline queue; the recipient "
                            "gets it when it comes online (the outbox keeps it until acked)")
            else:
                obj.update(state=state, tier=None)
                line = (f"{mid.hex()[:12]} is {state}: kept in the outbox, retried by the next "
                        "'tierlink run' or 'tierlink send'")
                code = 1
            _emit(args, obj, line)
    return code


def _outbox(args: argparse.Namespace) -> int:
    from tierlink.offline import Outbox
    from tierlink.offline.outbox import UNDELIVERED

    if args.data_dir:
        path = Path(args.data_dir) / "tierlink.db"
    else:
        ident = Identity.load(Path(args.identity) if args.identity else default_identity_path())
        path = NodeConfig(identity=ident).state_dir() / "tierlink.db"
    if not path.exists():
        entries: list[dict[str, Any]] = []
    else:
        with Outbox(path) as box:
            entries = box.to_json(None if args.all else UNDELIVERED)
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    if not entries:
        print("outbox is empty" if args.all else "no undelivered messages")
    for e in entries:
        print(f"{e['message_id'][:12]}  {e['state']:<10} {e['tier'] or '-':<8} "
              f"to {e['recipient'][:16]}…  {e['payload_size']} B  attempts {e['attempts']}")
    return 0


async def _lookup(args: argparse.Namespace) -> int:
    async with Node(node_config(args)) as node:
        rec = await node.lookup(args.fingerprint)
    obj = {
        "fingerprint": rec.fingerprint, "seq": rec.seq, "issued_at_ms": rec.issued_at_ms,
        "expires_at_ms": rec.expires_at_ms, "mode": rec.mode,
        "candidates": [c.__dict__ for c in rec.candidates],
        "kem_public_key": rec.kem_public_key.hex(), "public_key": rec.public_key.hex(),
    }
    if args.json:
        print(json.dumps(obj, indent=2))
    else:
        print(f"fingerprint: {rec.fingerprint}\nsequence:    {rec.seq}\nmode:        {rec.mode}")
        print(f"expires in:  {(rec.expires_at_ms - rec.issued_at_ms) / 1000:.0f} s")
        for c in rec.candidates:
            print(f"candidate:   {c.type} {c.host}:{c.port}")
    return 0


async def _demo(args: argparse.Namespace) -> int:
    from tierlink.cli.demo import run_demo

    def say(text: str) -> None:
        if not args.json:
            print(text, flush=True)

    result = await run_demo(messages=args.messages, say=say)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print("demo OK: every message arrived" if result["ok"] else "demo FAILED")
    return 0 if result["ok"] else 1


def register(sub: Any) -> None:
    """Add the node commands to the top-level subparsers."""
    run = sub.add_parser("run", help="run an online node and print incoming messages")
    add_node_options(run)
    run.set_defaults(func=lambda a: asyncio.run(_run(a)))

    send = sub.add_parser("send", help="send messages by the best tier (live, relay, offline)")
    send.add_argument("fingerprint", type=_fingerprint)
    send.add_argument("message", nargs="+")
    add_node_options(send)
    send.add_argument("--wait", type=float, default=5.0,
                      help="extra seconds to wait for an acknowledgement of a queued message")

    box = sub.add_parser("outbox", help="list messages not yet acknowledged")
    box.add_argument("--identity", help=f"key file (default {default_identity_path()})")
    box.add_argument("--data-dir", help="outbox directory")
    box.add_argument("--all", action="store_true", help="include delivered and expired")
    box.add_argument("--json", action="store_true", help="JSON output")
    box.set_defaults(func=_outbox)
    send.set_defaults(func=lambda a: asyncio.run(_send(a)))

    look = sub.add_parser("lookup", help="print a fingerprint's verified record")
    look.add_argument("fingerprint", type=_fingerprint)
    add_node_options(look)
    look.set_defaults(func=lambda a: asyncio.run(_lookup(a)))

    demo = sub.add_parser("demo", help="self-contained loopback demo (no root)")
    demo.add_argument("--json", action="store_true", help="print one JSON object")
    demo.add_argument("--messages", type=int, default=10, help="messages each way")
    demo.set_defaults(func=lambda a: asyncio.run(_demo(a)))


__all__ = ["TierlinkError", "register"]
