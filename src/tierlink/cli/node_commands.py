"""CLI commands that run a node: ``run``, ``send``, ``outbox``, ``lookup``, ``demo``.

``tierlink run`` (:mod:`tierlink.cli.run_command`) serves the identity's control socket
(:mod:`tierlink.control`); ``send``, ``outbox`` (and ``outbox remove``) and ``lookup`` ask
that running node when there is one (waiting for one that is still starting), and otherwise
``send`` and ``lookup`` start an own node for the one command under the identity's claim, and
``outbox`` uses the database directly. Their options: :mod:`tierlink.cli.node_options`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tierlink import control
from tierlink.cli import run_command
from tierlink.cli.argtypes import fingerprint, key_file, message, positive_int, seconds
from tierlink.cli.node_options import (
    add_node_options,
    load_identity,
    node_config,
    own_node,
    warn_if_alone,
)
from tierlink.cli.output import emit, sent_line
from tierlink.errors import TierlinkError
from tierlink.identity import Identity, default_identity_path
from tierlink.wire.envelope import MAX_PAYLOAD

if TYPE_CHECKING:
    from tierlink.node.control_server import ControlServer

#: What ``send`` adds to "interrupted": whether a message went out is in the outbox.
_KEPT = ("stays in the outbox and goes out with the next 'tierlink run' or 'tierlink send' of "
         "this identity ('tierlink outbox' lists it)")
SEND_INTERRUPTED = f"; a message stored before that {_KEPT}"
#: How long ``send`` and ``lookup`` wait for a node of their identity that is starting (it
#: holds the control socket's claim while it joins the DHT) to answer (seconds).
STARTING_WAIT_S = 120.0
_STARTING_POLL_S = 0.2


# -- send / outbox / lookup: through the running node of the identity, else an own one ----
def _no_running_node(identity: Identity) -> None:
    print(f"no running node for {identity.fingerprint[:16]}…: starting one (joins the DHT)",
          file=sys.stderr, flush=True)


async def _ask_or_claim(
    args: argparse.Namespace, identity: Identity, req: control.Request,
    timeout: float | None = 30.0,
) -> tuple[dict[str, Any] | None, ControlServer | None]:
    """The running node's reply to ``req``, or else the identity's control socket claimed
    for an own node of the command: no other node of the identity starts while that one runs.
    A node that is starting (the socket claimed, its DHT join under way) is waited for up to
    :data:`STARTING_WAIT_S` and then asked, never doubled. ``--own-node``: neither."""
    if args.own_node:
        return None, None
    from tierlink.node.control_server import ControlServer

    path = control.socket_path(identity.fingerprint)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STARTING_WAIT_S
    waiting = False
    while True:
        try:
            return await control.request(path, req, timeout), None
        except control.NoRunningNode:
            pass
        server = ControlServer(path)
        try:
            server.claim()
        except control.ControlError as exc:
            if exc.reason != "already_running":
                raise
        else:
            _no_running_node(identity)
            return None, server
        if loop.time() >= deadline:
            raise control.ControlError(
                "starting", f"the node of {identity.fingerprint[:16]}… that is starting did not "
                            f"answer within {STARTING_WAIT_S:g} s (control socket {path})")
        if not waiting:
            print(f"a node of {identity.fingerprint[:16]}… is starting (joining the DHT): "
                  f"waiting up to {STARTING_WAIT_S:g} s to hand it the request",
                  file=sys.stderr, flush=True)
            waiting = True
        await asyncio.sleep(_STARTING_POLL_S)


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
    state = result["state"]
    obj = {"event": "sent", "to": args.fingerprint, "message_id": result["message_id"],
           "bytes": result["bytes"], "state": state, "tier": result["tier"], "node": node}
    if state == "in_mailbox":
        obj["mailboxes"] = result.get("mailboxes") or ["?"]
    emit(args, obj, sent_line(result))
    return 0 if state in ("delivered", "queued", "in_mailbox") else 1


async def _send(args: argparse.Namespace) -> int:
    identity = load_identity(args)
    payloads: tuple[bytes, ...] = tuple(args.message)
    requests = control.send_requests(args.fingerprint, payloads, args.wait)
    try:
        reply, claim = await _ask_or_claim(args, identity, requests[0], timeout=None)
        if reply is not None:
            code = max(_report_sent(args, r, "running") for r in control.send_results(reply))
            for req in requests[1:]:
                reply = await control.request(control.socket_path(identity.fingerprint), req,
                                              None)
                code = max(code, *(_report_sent(args, r, "running")
                                   for r in control.send_results(reply)))
            return code
    except ConnectionError as exc:  # the running node went away with the request
        raise control.ControlError("bad_reply", f"the running node stopped ({exc.strerror}); "
                                                f"a message it stored {_KEPT}") from None
    except control.ControlError as exc:
        if exc.reason != "bad_reply":
            raise
        raise control.ControlError(exc.reason, f"{exc}; a message it stored {_KEPT}") from None
    from tierlink.node.control_server import send_messages

    try:
        warn_if_alone(args)
        async with own_node(node_config(args, identity)) as node:
            results = await send_messages(node, args.fingerprint, payloads, args.wait)
            return max(_report_sent(args, r, "own") for r in results)
    finally:
        if claim is not None:
            await claim.close()


def _outbox_identity(args: argparse.Namespace) -> Identity | None:
    """The identity whose outbox ``outbox`` uses: None for ``--data-dir`` alone (read
    directly)."""
    return None if args.data_dir and not args.identity else load_identity(args)


def _outbox_file(args: argparse.Namespace, identity: Identity | None) -> Path:
    """The outbox database of ``--data-dir``, else of ``identity``'s node (the file may not
    exist yet: nothing was sent)."""
    from tierlink.node import NodeConfig
    from tierlink.offline.store import STORE_FILE

    if args.data_dir:
        path = Path(args.data_dir) / STORE_FILE
        if not path.is_file():  # a mistyped directory is not an empty outbox
            raise TierlinkError(f"no outbox database at {path} (no node has used "
                                f"--data-dir {args.data_dir})")
        return path
    assert identity is not None
    return NodeConfig(identity=identity).state_file()


async def _outbox(args: argparse.Namespace) -> int:
    entries: list[dict[str, Any]] | None = None
    identity = _outbox_identity(args)
    if identity is not None:
        reply = await _ask_running_node(args, identity, control.OutboxRequest(args.all))
        if reply is not None:
            entries = control.outbox_entries(reply)
    if entries is None:  # no node runs: read its database
        from tierlink.offline import Outbox
        from tierlink.offline.outbox import UNDELIVERED

        path = _outbox_file(args, identity)
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


async def _outbox_remove(args: argparse.Namespace) -> int:
    """Remove an undelivered message: through the running node (its worker then sends it no
    more), else directly in the database."""
    entry: dict[str, Any] | None = None
    node = "running"
    identity = _outbox_identity(args)
    if identity is not None:
        reply = await _ask_running_node(args, identity, control.RemoveRequest(args.message_id))
        if reply is not None:
            entry = control.removed_entry(reply)
    if entry is None:
        from tierlink.offline import Outbox
        from tierlink.offline.outbox import OutboxError

        node, path = "none", _outbox_file(args, identity)
        if not path.exists():
            raise OutboxError("unknown", f"no message {args.message_id} in the outbox (it is "
                                         "empty)")
        with Outbox(path) as box:
            entry = box.remove(args.message_id).to_json()
    text = (f"removed {entry['message_id'][:12]} ({entry['state']}, to "
            f"{entry['recipient'][:16]}…, {entry['payload_size']} B): it is sent no more")
    if entry["state"] != "pending":  # its envelope is out there already
        text += ("; the copy already put in the DHT or a mailbox may still reach the "
                 "recipient until it expires there")
    emit(args, {"event": "removed", **entry, "node": node}, text)
    return 0


async def _lookup(args: argparse.Namespace) -> int:
    identity = load_identity(args)
    reply, claim = await _ask_or_claim(args, identity, control.LookupRequest(args.fingerprint))
    if reply is not None:
        obj = control.lookup_record(reply)
    else:
        try:
            warn_if_alone(args)
            async with own_node(node_config(args, identity)) as node:
                obj = control.record_json(await node.lookup(args.fingerprint))
        finally:
            if claim is not None:
                await claim.close()
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


def _outbox_options(p: argparse.ArgumentParser, *, in_sub_command: bool) -> None:
    """The options of ``outbox``, and again of ``outbox remove`` (where an option not given
    leaves the one given before ``remove`` alone)."""
    unset = argparse.SUPPRESS if in_sub_command else None
    off = argparse.SUPPRESS if in_sub_command else False
    p.add_argument("--identity", type=key_file, default=unset,
                   help=f"key file (default {default_identity_path()})")
    p.add_argument("--data-dir", default=unset, help="outbox directory (used directly)")
    p.add_argument("--json", action="store_true", default=off, help="JSON output")
    p.add_argument("--own-node", action="store_true", default=off,
                   help="use the database even when a 'tierlink run' of the identity is up")


def register(sub: Any) -> None:
    """Add the node commands to the top-level subparsers."""
    run = sub.add_parser("run", help="run an online node and print incoming messages")
    add_node_options(run)
    run.add_argument("--mailbox", type=fingerprint, action="append", metavar="FINGERPRINT",
                     help="a mailbox that holds messages for us while we are away (repeatable)")
    run.set_defaults(func=lambda a: asyncio.run(run_command.run(a)))

    own = {"action": "store_true",
           "help": "start an own node even when a 'tierlink run' of the identity is up"}
    send = sub.add_parser("send", help="send messages by the best tier (live, relay, offline)"
                                       " through the running node, else an own one")
    send.add_argument("fingerprint", type=fingerprint)
    send.add_argument("message", nargs="+", type=message,
                      help=f"text to send, 1 to {MAX_PAYLOAD} bytes each")
    add_node_options(send)
    send.add_argument("--wait", type=seconds, default=5.0,
                      help="extra seconds to wait for an acknowledgement of a queued message")
    send.add_argument("--own-node", **own)
    send.set_defaults(func=lambda a: asyncio.run(_send(a)), interrupted=SEND_INTERRUPTED)

    box = sub.add_parser("outbox", help="list messages not yet acknowledged (or remove one)")
    _outbox_options(box, in_sub_command=False)
    box.add_argument("--all", action="store_true", help="include delivered and expired")
    box.set_defaults(func=lambda a: asyncio.run(_outbox(a)))
    boxsub = box.add_subparsers(dest="outbox_command", metavar="OUTBOX_COMMAND")
    remove = boxsub.add_parser("remove", help="remove a message not yet delivered, so that "
                                              "no tier sends it (again)")
    remove.add_argument("message_id", metavar="ID",
                        help="its id, or the first 8 or more hex digits ('tierlink outbox' "
                             "shows 12)")
    _outbox_options(remove, in_sub_command=True)
    remove.set_defaults(func=lambda a: asyncio.run(_outbox_remove(a)))

    look = sub.add_parser("lookup", help="print a fingerprint's verified record")
    look.add_argument("fingerprint", type=fingerprint)
    add_node_options(look)
    look.add_argument("--own-node", **own)
    look.set_defaults(func=lambda a: asyncio.run(_lookup(a)))

    demo = sub.add_parser("demo", help="self-contained loopback demo (no root)")
    demo.add_argument("--json", action="store_true", help="print one JSON object")
    demo.add_argument("--messages", type=positive_int, default=10, help="messages each way")
    demo.set_defaults(func=lambda a: asyncio.run(_demo(a)))


__all__ = ["TierlinkError", "register"]
