"""CLI commands of mailboxes: ``tierlink mailbox serve|status|revoke|unregister``.

``serve`` runs an always-on node that stores sealed envelopes for the recipients that
register with it (``tierlink run --mailbox FINGERPRINT`` on their side); ``status`` and
``revoke`` (the operator's) read and change its database directly (SQLite in WAL mode: a
running mailbox keeps serving meanwhile). ``unregister`` is the recipient's: its node dials
the mailbox and withdraws its registration over the authenticated connection. Refusals are
logged on stderr by the serving node, one line each.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from tierlink.cli import run_command
from tierlink.cli.argtypes import fingerprint, key_file, number_in, positive_int
from tierlink.cli.node_options import (
    add_node_options,
    load_identity,
    node_config,
    own_node,
    warn_if_alone,
)
from tierlink.errors import ConnectionClosed, TierlinkError
from tierlink.identity import default_identity_path

MB = 1 << 20
#: ``--retention-days``: more than 0 days, at most ten years.
_days = number_in(0, 3650, "days", above=True)
#: The ``--*quota-mb`` options: MiB, 0 to 1 TiB.
_mib = number_in(0, 1 << 20, "MiB")
#: ``--record-lifetime`` (a record lives at most 24 h) and ``--descriptor-interval``.
_period = number_in(1, 24 * 3600, "seconds")


def _db_path(args: argparse.Namespace) -> Path:
    if args.data_dir:
        return Path(args.data_dir) / "mailbox.db"
    from tierlink.node import NodeConfig

    return NodeConfig(identity=load_identity(args)).state_dir() / "mailbox.db"


async def _serve(args: argparse.Namespace) -> int:
    from tierlink.mailbox import MailboxSettings

    settings = MailboxSettings(retention_s=args.retention_days * 24 * 3600.0,
                               total_quota=int(args.quota_mb * MB),
                               recipient_quota=int(args.per_recipient_quota_mb * MB),
                               per_sender_quota=int(args.per_sender_quota_mb * MB),
                               descriptor_interval=args.descriptor_interval,
                               max_registrations=args.max_registrations,
                               recipients=frozenset(args.serve_for) if args.serve_for else None)
    identity = load_identity(args)
    config = dataclasses.replace(node_config(args, identity), mailbox_serve=settings,
                                 record_lifetime=args.record_lifetime)
    logging.getLogger("tierlink.mailbox").setLevel(logging.INFO)
    stop = run_command.stop_on_signals()
    out = run_command.node_output(args, stop)
    server = run_command.claim_control(identity)
    try:
        async with own_node(config) as node:
            await run_command.serve_control(out, server, node)
            info = {"event": "mailbox", "fingerprint": node.fingerprint,
                    "retention_days": args.retention_days, "quota_mb": args.quota_mb,
                    "per_recipient_quota_mb": args.per_recipient_quota_mb,
                    "per_sender_quota_mb": args.per_sender_quota_mb,
                    "control_socket": str(server.path)}
            out.show(info, f"mailbox online as {node.fingerprint}\n(recipients: tierlink run "
                           f"--mailbox {node.fingerprint})\n(send, outbox and lookup of this "
                           f"identity use this node: {server.path})")
            await stop.wait()
    finally:
        await server.close()
    return run_command.stopped(out)


class MailboxDbError(TierlinkError):
    """The mailbox database named on the command line cannot be used."""


def _open_store(args: argparse.Namespace) -> Any:
    """The mailbox's store (MailboxDbError if there is none: never create one here)."""
    from tierlink.mailbox import MailboxStore

    path = _db_path(args)
    if not path.is_file():
        raise MailboxDbError(f"no mailbox database at {path} (is --data-dir the mailbox's?)")
    return MailboxStore(path)


def _status(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        rows: list[dict[str, Any]] = store.status()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no registered recipients")
    for r in rows:
        allow = "allow-list" if r["allow_list"] else "anyone"
        n = r["messages"]
        print(f"{r['recipient'][:16]}…  {n} message{'' if n == 1 else 's'}  {r['bytes']} B  "
              f"({allow})")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    from tierlink.wire.records import now_ms

    with _open_store(args) as store:
        now = now_ms()
        if not store.registration(args.fingerprint, now)[0] and not store.held_bytes(
                args.fingerprint):
            raise MailboxDbError(f"{args.fingerprint[:16]}… is not registered with this mailbox"
                                 " and holds nothing here ('tierlink mailbox status' lists "
                                 "who is)")
        dropped = store.revoke(args.fingerprint, now)
    _report_revoked(args, args.fingerprint, dropped)
    return 0


def _report_revoked(args: argparse.Namespace, who: str, dropped: int) -> None:
    obj = {"event": "revoked", "recipient": who, "dropped": dropped}
    print(json.dumps(obj) if args.json else
          f"registration of {who[:16]}… revoked; {dropped} held message"
          f"{'' if dropped == 1 else 's'} dropped (their senders are told: not delivered)")


async def _unregister(args: argparse.Namespace) -> int:
    identity = load_identity(args)
    claim = run_command.claim_control(identity)  # a running node would register again
    try:
        warn_if_alone(args)
        async with own_node(node_config(args, identity)) as node:
            assert node.messenger is not None and node.messenger.mailbox is not None
            try:
                dropped = await node.messenger.mailbox.client.revoke(args.mailbox_fp)
            except ConnectionClosed as exc:  # a peer that is not a mailbox hangs up
                raise ConnectionClosed(f"{args.mailbox_fp[:16]}… did not take the "
                                       f"unregistration ({exc}): is it a mailbox?") from exc
    finally:
        await claim.close()
    obj = {"event": "unregistered", "mailbox": args.mailbox_fp, "dropped": dropped}
    print(json.dumps(obj) if args.json else
          f"unregistered from mailbox {args.mailbox_fp[:16]}…; it dropped {dropped} held "
          f"message{'' if dropped == 1 else 's'} (their senders are told: not delivered). "
          "Start 'tierlink run' without this --mailbox, or it registers again.")
    return 0


def register(sub: Any) -> None:
    """Add ``tierlink mailbox serve|status|revoke|unregister`` to the top-level subparsers."""
    box = sub.add_parser("mailbox", help="serve or administer a mailbox for absent recipients")
    msub = box.add_subparsers(dest="mailbox_command", metavar="MAILBOX_COMMAND")
    msub.required = True
    serve = msub.add_parser("serve", help="run an always-on node that stores sealed "
                                          "envelopes for registered recipients")
    add_node_options(serve)
    serve.add_argument("--retention-days", type=_days, default=7.0,
                       help="keep an envelope at most this long (default 7)")
    serve.add_argument("--quota-mb", type=_mib, default=1024.0,
                       help="envelope MiB held for all recipients together (default 1024)")
    serve.add_argument("--per-recipient-quota-mb", type=_mib, default=64.0,
                       help="envelope MiB held per recipient (default 64)")
    serve.add_argument("--per-sender-quota-mb", type=_mib, default=8.0,
                       help="envelope MiB one sender may leave per recipient (default 8)")
    serve.add_argument("--serve-for", type=fingerprint, action="append", metavar="FINGERPRINT",
                       help="accept registrations only from these recipients (repeatable; "
                            "default: anyone)")
    serve.add_argument("--max-registrations", type=positive_int, default=1000, metavar="N",
                       help="recipients registered at once (default 1000; each costs a DHT "
                            "put every --descriptor-interval)")
    serve.add_argument("--record-lifetime", type=_period, default=600.0, metavar="SECONDS",
                       help="lifetime of our peer record, republished every third of it "
                            "(default 600; shorter: found again sooner after DHT churn)")
    serve.add_argument("--descriptor-interval", type=_period, default=240.0, metavar="SECONDS",
                       help="re-put registered recipients' descriptors this often (default 240)")
    serve.set_defaults(func=lambda a: asyncio.run(_serve(a)))
    unreg = msub.add_parser("unregister", help="withdraw our registration from a mailbox "
                                               "(run as the recipient, its node stopped)")
    unreg.add_argument("mailbox_fp", type=fingerprint, metavar="MAILBOX_FINGERPRINT")
    add_node_options(unreg)
    unreg.set_defaults(func=lambda a: asyncio.run(_unregister(a)))
    for name, func, text in (("status", _status, "recipients, messages and bytes held"),
                             ("revoke", _revoke, "drop a recipient's registration")):
        p = msub.add_parser(name, help=text)
        if name == "revoke":
            p.add_argument("fingerprint", type=fingerprint)
        p.add_argument("--identity", type=key_file,
                       help=f"key file (default {default_identity_path()})")
        p.add_argument("--data-dir", help="the mailbox's data directory")
        p.add_argument("--json", action="store_true", help="JSON output")
        p.set_defaults(func=func)
