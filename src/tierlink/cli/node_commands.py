"""CLI commands that run a node: ``run``, ``send``, ``outbox``, ``lookup``, ``demo``.

``tierlink run`` serves the identity's control socket (:mod:`tierlink.control`);
``send``, ``outbox`` and ``lookup`` ask that running node when there is one, and otherwise
start an own node for the one command (``outbox`` then reads the database directly).
The node stack loads inside the commands that start a node, so a command the running node
serves starts in a fraction of the time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tierlink import control
from tierlink.cli.argtypes import (
    ca_file,
    dht_address,
    fingerprint,
    host_address,
    port_number,
    port_range,
    secret_file,
    stun_address,
    turn_server,
    wait_seconds,
)
from tierlink.errors import ConnectionClosed, TierlinkError
from tierlink.identity import Identity, default_identity_path

if TYPE_CHECKING:
    from tierlink.node import Node, NodeConfig, TurnServer
    from tierlink.node.control_server import ControlServer
    from tierlink.transport.connection import Connection


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
                   metavar="stun:HOST[:PORT]", help="STUN server (repeatable; all are asked)")
    p.add_argument("--turn", type=turn_server, action="append", default=[], metavar="URL",
                   help="TURN server: turn:HOST[:PORT] (UDP and TCP), "
                        "turn:HOST[:PORT]?transport=udp|tcp, turns:HOST[:PORT] (TLS, port "
                        "5349), or USER:PASS@HOST[:PORT] (repeatable; all are asked)")
    p.add_argument("--turn-user", metavar="NAME", help="TURN user name for turn: URLs")
    p.add_argument("--turn-password-file", type=secret_file, metavar="FILE",
                   dest="turn_password", help=f"TURN password (else ${TURN_PASSWORD_ENV})")
    p.add_argument("--turn-secret-file", type=secret_file, metavar="FILE", dest="turn_secret",
                   help="coturn static-auth-secret: time-limited TURN credentials")
    p.add_argument("--turn-ca", type=ca_file, metavar="FILE",
                   help="CA certificates (PEM) to verify turns: servers against "
                        "(default: the system's)")
    p.add_argument("--host-address", type=host_address, action="append", dest="host_addresses",
                   metavar="IP", help="gather host candidates only on these addresses, IPv4 "
                                      "or IPv6 (repeatable; default: every global address, "
                                      "temporary IPv6 ones rather than stable)")
    p.add_argument("--relay-only", action="store_true", help="connect only through TURN")
    p.add_argument("--port-range", type=port_range, metavar="LOW-HIGH",
                   help="bind ICE host sockets inside this UDP port range")
    p.add_argument("--mode", choices=["private", "public"], default="private",
                   help="list candidates in the public record (public) or not (private)")
    p.add_argument("--allow", type=fingerprint, action="append", metavar="FINGERPRINT",
                   help="answer only these dialers (repeatable)")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="seconds to try a live path before the offline tier")
    p.add_argument("--data-dir", help="outbox directory (default: per identity, XDG data dir)")
    p.add_argument("--json", action="store_true", help="JSON output")


#: Environment variable holding the TURN password (not shown in /proc like an argument).
TURN_PASSWORD_ENV = "TIERLINK_TURN_PASSWORD"


def turn_servers(args: argparse.Namespace) -> list[TurnServer]:
    """The ``--turn`` servers with their credentials: the URL's own (``USER:PASS@``), or
    ``--turn-user`` with ``--turn-secret-file``, ``--turn-password-file`` or
    $TIERLINK_TURN_PASSWORD. ValueError names a server that has none."""
    password = args.turn_password or os.environ.get(TURN_PASSWORD_ENV) or None
    return [
        server
        for url in args.turn
        for server in url.servers(args.turn_user, password, secret=args.turn_secret,
                                  ca_file=args.turn_ca)
    ]


def load_identity(args: argparse.Namespace) -> Identity:
    """The identity ``--identity`` names (default: the user's)."""
    return Identity.load(Path(args.identity) if args.identity else default_identity_path())


def node_config(args: argparse.Namespace, identity: Identity | None = None) -> NodeConfig:
    """Build the node configuration from parsed options."""
    from tierlink.node import NodeConfig

    return NodeConfig(
        identity=identity or load_identity(args),
        dht_proxy=args.dht_proxy,
        bootstrap=list(args.bootstrap),
        dht_port=args.dht_port,
        dht_no_rate_limit=args.no_rate_limit,
        host_addresses=args.host_addresses,
        stun_servers=list(args.stun),
        turn_servers=turn_servers(args),
        relay_only=args.relay_only,
        port_range=args.port_range,
        mode=args.mode,
        allow=set(args.allow) if args.allow else None,
        dial_timeout=args.timeout,
        send_budget=args.timeout,
        data_dir=Path(args.data_dir) if args.data_dir else None,
        mailboxes=list(getattr(args, "mailbox", None) or []),
    )


def _own_node(config: NodeConfig) -> Node:
    """A node for this command (the node stack loads here, not when the CLI starts)."""
    from tierlink.node import Node

    return Node(config)


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


def _sent_by_request(args: argparse.Namespace, to: str, result: dict[str, Any]) -> None:
    """What ``tierlink run`` prints about a message another command sent through it."""
    via = f" via the {result['tier']} tier" if result["tier"] else ""
    _emit(args, {"event": "sent", "to": to, **result, "via": "control"},
          f"sent {result['message_id'][:12]} to {to[:16]}…: {result['state']}{via}")


async def _run(args: argparse.Namespace) -> int:
    identity = load_identity(args)
    config = node_config(args, identity)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    from tierlink.node.control_server import ControlServer

    server = ControlServer(control.socket_path(identity.fingerprint))
    server.claim()  # a second node of the identity stops here, before it joins the DHT
    if server.stale_replaced:
        print(f"removed the control socket a stopped node left ({server.path})",
              file=sys.stderr)
    try:
        async with _own_node(config) as node:
            await server.serve(node, lambda to, result: _sent_by_request(args, to, result))
            await _online(args, node, server, stop)
    finally:
        await server.close()
    print("stopped", file=sys.stderr)
    return 0


async def _online(
    args: argparse.Namespace, node: Node, server: ControlServer, stop: asyncio.Event
) -> None:
    """Print what a running node hears until ``stop``; then close its control socket."""
    info: dict[str, Any] = {"event": "online", "fingerprint": node.fingerprint,
                            "mode": node.config.mode, "control_socket": str(server.path)}
    if node.dht_process is not None:
        info["dht_port"] = node.dht_process.port
    text = f"online as {node.fingerprint}"
    if "dht_port" in info:
        text += f"\n(embedded DHT on udp port {info['dht_port']}; others may "
        text += f"--bootstrap 127.0.0.1:{info['dht_port']})"
    text += f"\n(send, outbox and lookup of this identity use this node: {server.path})"
    _emit(args, info, text)
    if args.json:  # every connection's path (dialed or answered) and how ICE chose it
        node.watch_paths(lambda event: _emit(args, event, ""))
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
    await server.close()
    acceptor.cancel()
    messages.cancel()
    for task in list(readers):
        task.cancel()


# -- send / outbox / lookup: through the running node of the identity, else an own one ----
def _no_running_node(identity: Identity) -> None:
    print(f"no running node for {identity.fingerprint[:16]}…: starting one (joins the DHT)",
          file=sys.stderr, flush=True)


async def _ask_running_node(
    args: argparse.Namespace, identity: Identity, req: control.Request,
    timeout: float | None = 30.0,
) -> dict[str, Any] | None:
    """The reply of the running node of ``identity``; None when none runs (or
    ``--own-node``)."""
    if args.own_node:
        return None
    try:
        return await control.request(control.socket_path(identity.fingerprint), req, timeout)
    except control.NoRunningNode:
        return None


def _report_sent(args: argparse.Namespace, result: dict[str, Any], node: str) -> int:
    """Print one message's result (``node``: ``running`` or ``own``); 1 if it is stuck."""
    mid, state, tier = result["message_id"], result["state"], result["tier"]
    obj = {"event": "sent", "to": args.fingerprint, "message_id": mid,
           "bytes": result["bytes"], "state": state, "tier": tier, "node": node}
    if state == "delivered":
        line = f"delivered {mid[:12]} via the {tier} tier"
    elif state == "queued":
        line = (f"queued {mid[:12]} in the DHT offline queue; the recipient gets it when "
                "it comes online (the outbox keeps it until acked)")
    elif state == "in_mailbox":
        boxes = result.get("mailboxes") or ["?"]
        obj["mailboxes"] = boxes
        line = (f"queued {mid[:12]} in mailbox {boxes[0]}; the recipient collects it when "
                "it comes online, even if this node is offline by then")
    else:
        line = (f"{mid[:12]} is {state}: kept in the outbox, retried by the next "
                "'tierlink run' or 'tierlink send'")
    _emit(args, obj, line)
    return 0 if state in ("delivered", "queued", "in_mailbox") else 1


async def _send(args: argparse.Namespace) -> int:
    identity = load_identity(args)
    payloads = tuple(text.encode() for text in args.message)
    requests = control.send_requests(args.fingerprint, payloads, args.wait)
    reply = await _ask_running_node(args, identity, requests[0], timeout=None)
    if reply is not None:
        code = max(_report_sent(args, r, "running") for r in control.send_results(reply))
        for req in requests[1:]:
            reply = await control.request(control.socket_path(identity.fingerprint), req, None)
            code = max(code, *(_report_sent(args, r, "running")
                               for r in control.send_results(reply)))
        return code
    if not args.own_node:
        _no_running_node(identity)
    from tierlink.node.control_server import send_messages

    async with _own_node(node_config(args, identity)) as node:
        results = await send_messages(node, args.fingerprint, payloads, args.wait)
        return max(_report_sent(args, r, "own") for r in results)


async def _outbox(args: argparse.Namespace) -> int:
    entries: list[dict[str, Any]] | None = None
    identity = None if args.data_dir and not args.identity else load_identity(args)
    if identity is not None:
        reply = await _ask_running_node(args, identity, control.OutboxRequest(args.all))
        if reply is not None:
            entries = control.outbox_entries(reply)
    if entries is None:  # no node runs: read its database
        from tierlink.node import NodeConfig
        from tierlink.offline import Outbox
        from tierlink.offline.outbox import UNDELIVERED

        if args.data_dir:
            path = Path(args.data_dir) / "tierlink.db"
        else:
            assert identity is not None
            path = NodeConfig(identity=identity).state_dir() / "tierlink.db"
        entries = []
        if path.exists():
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
    identity = load_identity(args)
    reply = await _ask_running_node(args, identity, control.LookupRequest(args.fingerprint))
    if reply is not None:
        obj = control.lookup_record(reply)
    else:
        if not args.own_node:
            _no_running_node(identity)
        async with _own_node(node_config(args, identity)) as node:
            obj = control.record_json(await node.lookup(args.fingerprint))
    if args.json:
        print(json.dumps(obj, indent=2))
        return 0
    print(f"fingerprint: {obj['fingerprint']}\nsequence:    {obj['seq']}\n"
          f"mode:        {obj['mode']}")
    left_s = max(0.0, (obj["expires_at_ms"] - time.time() * 1000) / 1000)
    print(f"expires in:  {left_s:.0f} s")
    for c in obj["candidates"]:
        print(f"candidate:   {c['type']} {c['host']}:{c['port']}")
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
    run.add_argument("--mailbox", type=fingerprint, action="append", metavar="FINGERPRINT",
                     help="a mailbox that holds messages for us while we are away (repeatable)")
    run.set_defaults(func=lambda a: asyncio.run(_run(a)))

    own = {"action": "store_true",
           "help": "start an own node even when a 'tierlink run' of the identity is up"}
    send = sub.add_parser("send", help="send messages by the best tier (live, relay, offline)"
                                       " through the running node, else an own one")
    send.add_argument("fingerprint", type=fingerprint)
    send.add_argument("message", nargs="+")
    add_node_options(send)
    send.add_argument("--wait", type=wait_seconds, default=5.0,
                      help="extra seconds to wait for an acknowledgement of a queued message")
    send.add_argument("--own-node", **own)
    send.set_defaults(func=lambda a: asyncio.run(_send(a)))

    box = sub.add_parser("outbox", help="list messages not yet acknowledged")
    box.add_argument("--identity", help=f"key file (default {default_identity_path()})")
    box.add_argument("--data-dir", help="outbox directory (read directly)")
    box.add_argument("--all", action="store_true", help="include delivered and expired")
    box.add_argument("--json", action="store_true", help="JSON output")
    box.add_argument("--own-node", **own)
    box.set_defaults(func=lambda a: asyncio.run(_outbox(a)))

    look = sub.add_parser("lookup", help="print a fingerprint's verified record")
    look.add_argument("fingerprint", type=fingerprint)
    add_node_options(look)
    look.add_argument("--own-node", **own)
    look.set_defaults(func=lambda a: asyncio.run(_lookup(a)))

    demo = sub.add_parser("demo", help="self-contained loopback demo (no root)")
    demo.add_argument("--json", action="store_true", help="print one JSON object")
    demo.add_argument("--messages", type=int, default=10, help="messages each way")
    demo.set_defaults(func=lambda a: asyncio.run(_demo(a)))


__all__ = ["TierlinkError", "register"]
