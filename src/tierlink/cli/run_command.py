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
from tierlink.cli.output import Output, message_line
from tierlink.errors import ConnectionClosed, TierlinkError

if TYPE_CHECKING:
    from tierlink.identity import Identity
    from tierlink.node import Node
    from tierlink.node.control_server import ControlServer
    from tierlink.transport.connection import Connection


async def _print_messages(out: Output, conn: Connection) -> None:
    with contextlib.suppress(ConnectionClosed):
        while True:
            msg = await conn.recv()
            if msg is None:
                continue
            text = msg.decode("utf-8", errors="replace")
            out.show({"event": "message", "from": conn.remote_fingerprint,
                      "bytes": len(msg), "text": text},
                     message_line(conn.remote_fingerprint, text))


def _sent_by_request(out: Output, to: str, result: dict[str, Any]) -> None:
    """What a running node prints about a message another command sent through it."""
    via = f" via the {result['tier']} tier" if result["tier"] else ""
    out.show({"event": "sent", "to": to, **result, "via": "control"},
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


async def serve_control(out: Output, server: ControlServer, node: Node) -> None:
    """Answer ``send``, ``outbox`` and ``lookup`` of the identity on ``server`` for ``node``,
    printing each message sent that way."""
    await server.serve(node, lambda to, result: _sent_by_request(out, to, result))


def stop_on_signals() -> asyncio.Event:
    """An event SIGINT and SIGTERM set (a running node's clean stop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def node_output(args: argparse.Namespace, stop: asyncio.Event) -> Output:
    """The output of a running node, which stops it once standard output fails (TierlinkError
    when there is none at all: what it takes would be shown nowhere)."""
    if sys.stdout is None:
        raise TierlinkError("standard output is closed: a running node prints what it "
                            "receives there")
    return Output(args, stop.set)


def stopped(out: Output) -> int:
    """Say that the node stopped; exit status 1 when its output had failed."""
    if out.broken is not None:
        print(f"tierlink: stopped: standard output failed ({out.broken}); messages not yet "
              "taken stay with their senders", file=sys.stderr)
        return 1
    print("stopped", file=sys.stderr)
    return 0


async def run(args: argparse.Namespace) -> int:
    """Run an online node of the identity until SIGINT or SIGTERM."""
    identity = load_identity(args)
    if identity.fingerprint in (args.mailbox or ()):
        raise UsageError("--mailbox names this node's own identity: a mailbox is another, "
                         "always-on node ('tierlink mailbox serve')")
    config = node_config(args, identity)
    stop = stop_on_signals()
    out = node_output(args, stop)
    server = claim_control(identity)
    try:
        async with own_node(config) as node:
            await serve_control(out, server, node)
            await _online(out, node, server, stop)
    finally:
        await server.close()
    return stopped(out)


async def _online(out: Output, node: Node, server: ControlServer, stop: asyncio.Event) -> None:
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
    out.show(info, text)
    if out.args.json:  # every connection's path (dialed or answered) and how ICE chose it
        node.watch_paths(lambda event: out.show(event, ""))
    readers: set[asyncio.Task[None]] = set()

    async def accept() -> None:
        async for conn in node.incoming():
            out.show({"event": "connected", "from": conn.remote_fingerprint,
                      "selected_pair": conn.selected_pair},
                     f"connection from {conn.remote_fingerprint[:16]}… ({conn.path_type})")
            task = asyncio.create_task(_print_messages(out, conn))
            readers.add(task)
            task.add_done_callback(readers.discard)

    async def queued_messages() -> None:
        async for m in node.messages():
            text = m.payload.decode("utf-8", errors="replace")
            out.show({"event": "message", "from": m.sender, "bytes": len(m.payload),
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
