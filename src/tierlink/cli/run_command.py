"""``tierlink run``: an online node that prints what it hears and serves its identity's
control socket (:mod:`tierlink.control`), through which ``send``, ``outbox`` and ``lookup``
of the same identity use it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from typing import TYPE_CHECKING, Any

from tierlink import control
from tierlink.cli.argtypes import UsageError
from tierlink.cli.node_options import load_identity, node_config, own_node
from tierlink.cli.output import emit, message_line
from tierlink.errors import ConnectionClosed

if TYPE_CHECKING:
    from tierlink.identity import Identity
    from tierlink.node import Node
    from tierlink.node.control_server import ControlServer
    from tierlink.transport.connection import Connection


async def _print_messages(args: argparse.Namespace, conn: Connection) -> None:
    with contextlib.suppress(ConnectionClosed):
        while True:
            msg = await conn.recv()
            if msg is None:
                continue
            text = msg.decode("utf-8", errors="replace")
            emit(args, {"event": "message", "from": conn.remote_fingerprint,
                        "bytes": len(msg), "text": text},
                 message_line(conn.remote_fingerprint, text))


def _sent_by_request(args: argparse.Namespace, to: str, result: dict[str, Any]) -> None:
    """What a running node prints about a message another command sent through it."""
    via = f" via the {result['tier']} tier" if result["tier"] else ""
    emit(args, {"event": "sent", "to": to, **result, "via": "control"},
         f"sent {result['message_id'][:12]} to {to[:16]}…: {result['state']}{via}")


def claim_control(identity: Identity) -> ControlServer:
    """The identity's control socket, claimed: a second node of the identity (``run``,
    ``mailbox serve``) stops here, before it joins the DHT."""
    from tierlink.node.control_server import ControlServer

    server = ControlServer(control.socket_path(identity.fingerprint))
    server.claim()
    if server.stale_replaced:
        print(f"removed the control socket a stopped node left ({server.path})",
              file=sys.stderr)
    return server


async def serve_control(args: argparse.Namespace, server: ControlServer, node: Node) -> None:
    """Answer ``send``, ``outbox`` and ``lookup`` of the identity on ``server`` for ``node``,
    printing each message sent that way."""
    await server.serve(node, lambda to, result: _sent_by_request(args, to, result))


def stop_on_signals() -> asyncio.Event:
    """An event SIGINT and SIGTERM set (a running node's clean stop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def run(args: argparse.Namespace) -> int:
    """Run an online node of the identity until SIGINT or SIGTERM."""
    identity = load_identity(args)
    if identity.fingerprint in (args.mailbox or ()):
        raise UsageError("--mailbox names this node's own identity: a mailbox is another, "
                         "always-on node ('tierlink mailbox serve')")
    config = node_config(args, identity)
    stop = stop_on_signals()
    server = claim_control(identity)
    try:
        async with own_node(config) as node:
            await serve_control(args, server, node)
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
    emit(args, info, text)
    if args.json:  # every connection's path (dialed or answered) and how ICE chose it
        node.watch_paths(lambda event: emit(args, event, ""))
    readers: set[asyncio.Task[None]] = set()

    async def accept() -> None:
        async for conn in node.incoming():
            emit(args, {"event": "connected", "from": conn.remote_fingerprint,
                        "selected_pair": conn.selected_pair},
                 f"connection from {conn.remote_fingerprint[:16]}… "
                 f"({conn.path_type})")
            task = asyncio.create_task(_print_messages(args, conn))
            readers.add(task)
            task.add_done_callback(readers.discard)

    async def queued_messages() -> None:
        async for m in node.messages():
            text = m.payload.decode("utf-8", errors="replace")
            emit(args, {"event": "message", "from": m.sender, "bytes": len(m.payload),
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
