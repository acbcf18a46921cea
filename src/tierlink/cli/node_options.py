"""The options of the CLI commands that run a node, and the node they configure.

Shared by ``run``, ``send``, ``lookup`` and the mailbox commands. The node stack loads only
when a command starts a node, so a command the running node serves starts quickly.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tierlink.cli.argtypes import (
    ca_file,
    dht_address,
    fingerprint,
    host_address,
    key_file,
    port_number,
    port_range,
    proxy_url,
    seconds,
    secret_file,
    stun_address,
    turn_server,
)
from tierlink.errors import DhtUnavailable, TierlinkError
from tierlink.identity import Identity, default_identity_path

if TYPE_CHECKING:
    from tierlink.node import Node, NodeConfig, TurnServer


def add_node_options(p: argparse.ArgumentParser) -> None:
    """Options every node-running command shares."""
    p.add_argument("--identity", type=key_file,
                   help=f"key file (default {default_identity_path()})")
    p.add_argument("--bootstrap", type=dht_address, action="append", default=[],
                   metavar="HOST[:PORT]", help="OpenDHT node to join (embedded dhtnode)")
    p.add_argument("--dht-proxy", type=proxy_url, metavar="URL",
                   help="use an existing OpenDHT REST proxy")
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
    p.add_argument("--timeout", type=seconds, default=10.0,
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


def check_resolvable(endpoints: Sequence[tuple[str, int]]) -> None:
    """DhtUnavailable naming a ``--bootstrap`` host that does not resolve: the embedded
    ``dhtnode`` would otherwise wait out its join timeout and blame a firewall."""
    for host, port in endpoints:
        try:
            socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        except (socket.gaierror, UnicodeError) as exc:
            reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
            raise DhtUnavailable(f"cannot resolve the bootstrap host {host!r}: {reason}") from None


def warn_if_alone(args: argparse.Namespace) -> None:
    """Say on stderr that a node started with neither ``--bootstrap`` nor ``--dht-proxy``
    is a DHT of its own, where a ``send`` or ``lookup`` finds no peer."""
    if not args.bootstrap and args.dht_proxy is None:
        print("tierlink: warning: no --bootstrap or --dht-proxy: this node's DHT is its own "
              "and finds no peer; give the DHT your peers use", file=sys.stderr, flush=True)


def load_identity(args: argparse.Namespace) -> Identity:
    """The identity ``--identity`` names (default: the user's)."""
    return Identity.load(Path(args.identity) if args.identity else default_identity_path())


def node_config(args: argparse.Namespace, identity: Identity | None = None) -> NodeConfig:
    """Build the node configuration from parsed options."""
    from tierlink.node import NodeConfig

    if args.dht_proxy is None:
        check_resolvable(args.bootstrap)
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


def check_local_addresses(addresses: Sequence[str] | None) -> None:
    """TierlinkError naming a ``--host-address`` that is not an address of this host: no
    ICE socket can bind it, so every dial would fail."""
    for address in addresses or ():
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind((address, 0))
            except OSError as exc:
                raise TierlinkError(f"--host-address {address}: {exc.strerror} (it must be "
                                    "an address of this host)") from None


def own_node(config: NodeConfig) -> Node:
    """A node for this command, its host addresses checked (the node stack loads here, not
    when the CLI starts)."""
    from tierlink.node import Node

    check_local_addresses(config.host_addresses)
    return Node(config)
