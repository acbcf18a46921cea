"""The ``tierlink`` command line. Every failure is one clear line on stderr, never a traceback."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from tierlink.cli import mailbox_commands as cli_mailbox
from tierlink.cli import node_commands as cli_node
from tierlink.cli import tool_commands as cli_tools
from tierlink.cli.argtypes import (
    DHT_DEFAULT_PORT,
    UsageError,
    dht_address,
    ipv4_address,
    key_file,
    port_number,
    port_or_zero,
)
from tierlink.cli.exit_codes import EXIT_FAIL, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from tierlink.cli.node_options import check_resolvable
from tierlink.errors import TierlinkError
from tierlink.identity import ALGORITHM, KEM_ALGORITHM, Identity, default_identity_path

Handler = Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (exit 2), pointing at ``--help``."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=False))


# -- id ------------------------------------------------------------------------------------
def cmd_id_new(args: argparse.Namespace) -> int:
    path = Path(args.out) if args.out else default_identity_path()
    ident = Identity.generate()
    ident.save(path, force=args.force)
    print(ident.fingerprint)
    print(f"identity written to {path}", file=sys.stderr)
    return EXIT_OK


def cmd_id_show(args: argparse.Namespace) -> int:
    path = Path(args.path) if args.path else default_identity_path()
    ident = Identity.load(path)
    if args.json:
        _print_json(
            {
                "fingerprint": ident.fingerprint,
                "algorithm": ALGORITHM,
                "public_key": ident.public_key.hex(),
                "kem_algorithm": KEM_ALGORITHM,
                "kem_public_key": ident.kem_public_key.hex(),
                "path": str(path),
            }
        )
    else:
        print(f"fingerprint: {ident.fingerprint}")
        print(f"algorithm:   {ALGORITHM} (KEM {KEM_ALGORITHM})")
        print(f"path:        {path}")
    return EXIT_OK


# -- dht -----------------------------------------------------------------------------------
async def _serve(args: argparse.Namespace) -> int:
    from tierlink.dht.launcher import DhtNodeProcess  # loads only for the commands that use it

    check_resolvable(args.bootstrap or [])
    node = DhtNodeProcess(
        port=args.port or None,
        proxy_port=args.proxy_port,
        proxy_host=args.proxy_host,
        bootstrap=args.bootstrap or [],
        no_rate_limit=args.no_rate_limit,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await node.start()
    try:  # node.port is the port dhtnode bound (the kernel's pick for --port 0)
        print(f"dht: udp 0.0.0.0:{node.port}", flush=True)
        print(f"proxy: {node.proxy_url}", flush=True)
        print(f"pid: {node.pid}", flush=True)
        await stop.wait()
    finally:
        await node.stop()
    print("stopped", file=sys.stderr)
    return EXIT_OK


def cmd_dht_serve(args: argparse.Namespace) -> int:
    return asyncio.run(_serve(args))


# -- parser --------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="tierlink",
        description="Reach a peer by its public-key fingerprint alone.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log debug output to stderr")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    idp = sub.add_parser("id", help="create or show an identity")
    idsub = idp.add_subparsers(dest="id_command", metavar="ID_COMMAND")
    idsub.required = True
    new = idsub.add_parser("new", help="create a new ML-DSA-87 identity")
    new.add_argument("--out", type=key_file,
                     help=f"key file (default {default_identity_path()})")
    new.add_argument("--force", action="store_true", help="overwrite an existing key file")
    new.set_defaults(func=cmd_id_new)
    show = idsub.add_parser("show", help="print an identity's fingerprint and public key")
    show.add_argument("path", nargs="?", type=key_file,
                      help="key file (default: the user's identity)")
    show.add_argument("--json", action="store_true", help="print a JSON object")
    show.set_defaults(func=cmd_id_show)

    dht = sub.add_parser("dht", help="run an OpenDHT node")
    dsub = dht.add_subparsers(dest="dht_command", metavar="DHT_COMMAND")
    dsub.required = True
    serve = dsub.add_parser("serve", help="run a dhtnode in the foreground (a bootstrap)")
    serve.add_argument("--port", type=port_or_zero, default=DHT_DEFAULT_PORT,
                       help=f"DHT UDP port (default {DHT_DEFAULT_PORT}; 0: any free port, printed)")
    serve.add_argument("--proxy-port", type=port_number, default=None,
                       help="REST proxy TCP port (default: a free one, printed)")
    serve.add_argument("--proxy-host", type=ipv4_address, default="127.0.0.1",
                       help="REST proxy address (an IPv4 address of this host)")
    serve.add_argument("--bootstrap", type=dht_address, action="append",
                       metavar="HOST[:PORT]", help="an OpenDHT node to join")
    serve.add_argument("--no-rate-limit", action="store_true", help="dhtnode -U (tests)")
    serve.set_defaults(func=cmd_dht_serve)

    cli_node.register(sub)
    cli_mailbox.register(sub)
    cli_tools.register(sub)
    return p


def os_error(exc: OSError) -> str:
    """An OS error as a user reads it: ``PATH: reason`` (no ``[Errno N]``)."""
    if not exc.strerror:
        return str(exc)
    paths = [p for p in (exc.filename, exc.filename2) if p is not None]
    return ": ".join([*(os.fsdecode(p) for p in paths), exc.strerror])


def execute(argv: Sequence[str] | None = None,
            started: Callable[[], bool] | None = None) -> int:
    """Run one command (the console script's entry point, :func:`tierlink.cli.main`, wraps
    this). ``started``, called once the command line is read: True if a Ctrl-C arrived
    during the start (deferred by the caller), which then ends the command."""
    try:  # building the parser loads the lab and bench option lists: Ctrl-C may land here
        args = build_parser().parse_args(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    if started is not None and started():
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        print(f"interrupted{getattr(args, 'interrupted', '')}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except UsageError as exc:
        print(f"tierlink {args.command}: error: {exc} (see 'tierlink {args.command} --help')",
              file=sys.stderr)
        return EXIT_USAGE
    except TierlinkError as exc:
        print(f"tierlink: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except OSError as exc:
        print(f"tierlink: {os_error(exc)}", file=sys.stderr)
        return EXIT_FAIL
    except ValueError as exc:
        print(f"tierlink: {exc}", file=sys.stderr)
        return EXIT_FAIL
    return code

