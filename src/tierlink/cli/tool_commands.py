"""CLI commands for the NAT lab and the benchmarks (their runners load only when used)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tierlink.cli.argtypes import UsageError, positive_int, positive_seconds

if TYPE_CHECKING:
    from tierlink.bench.dht_lab import AccessLink


def _lab(args: argparse.Namespace) -> int:
    from tierlink.lab.command import run_cleanup_stale, run_emulator_check, run_lab_cli

    if args.cleanup_stale:
        return run_cleanup_stale()
    if args.emulator_check:
        return run_emulator_check(args.profile, args.json, args.report)
    return run_lab_cli(args.nat, args.attempts, args.turn, args.json, args.report,
                       driver=args.driver, reduced=args.reduced, ice_timeout=args.ice_timeout,
                       profiles=args.profile, ipv6=args.ipv6, faults=args.faults)


def _bench(args: argparse.Namespace) -> int:
    from tierlink.bench.report import render_markdown
    from tierlink.bench.runner import run_bench

    if args.dht_many is not None:
        from tierlink.bench.runner import run_dht_many_bench

        results = run_dht_many_bench(args.dht_many, args.quick, args.out,
                                     _access_link(args.profile))
    elif args.profile is not None:
        raise UsageError("--profile goes with --dht-many")
    else:
        results = run_bench(args.system, args.quick, args.out, rounds=args.rounds, mtu=args.mtu)
    print(json.dumps(results, indent=2) if args.json else render_markdown([results]))
    return 0


def _access_link(name: str | None) -> AccessLink | None:
    """The per-link share of link profile ``name`` as the DHT bench's access link (None:
    plain links)."""
    if name is None or name == "none":
        return None
    from tierlink.bench.dht_lab import AccessLink
    from tierlink.lab.profiles import PROFILES

    p = PROFILES[name]
    return AccessLink(p.name, p.link_delay_ms, p.link_jitter_ms, p.link_loss, p.rate_mbit,
                      p.reorder)


def register(sub: Any) -> None:
    """Add ``lab`` and ``bench`` to the top-level subparsers."""
    from tierlink.bench.report import SYSTEMS
    from tierlink.lab.command import DEFAULT_ICE_TIMEOUT
    from tierlink.lab.nat import PRESETS
    from tierlink.lab.profiles import PROFILES

    lab = sub.add_parser("lab", help="NAT lab: the NAT-pair matrix in network namespaces (root)")
    lab.add_argument("--nat", action="append", choices=list(PRESETS), metavar="TYPE",
                     help=f"preset to include, repeatable ({', '.join(PRESETS)}); "
                     "default: every pair of the classic presets plus the real-world pairs")
    lab.add_argument("--attempts", type=positive_int, default=1, help="dials per cell")
    turn = lab.add_mutually_exclusive_group()
    turn.add_argument("--turn", dest="turn", action="store_const", const=True,
                      help="only with TURN")
    turn.add_argument("--no-turn", dest="turn", action="store_const", const=False,
                      help="only without TURN")
    lab.set_defaults(turn=None)
    lab.add_argument("--driver", choices=("node", "ice"), default="node",
                     help="node: the full Node over the lab DHT, plus one tiered message per "
                     "attempt (default); ice: raw ICE only")
    lab.add_argument("--reduced", action="store_true",
                     help="only the reduced pair list (each preset at least once)")
    lab.add_argument("--ice-timeout", type=positive_seconds, default=DEFAULT_ICE_TIMEOUT,
                     metavar="SECONDS", help=f"peers' ICE timeout (default {DEFAULT_ICE_TIMEOUT})")
    lab.add_argument("--json", action="store_true", help="print the matrix as JSON")
    lab.add_argument("--report", type=Path, metavar="DIR",
                     help="write matrix.json, matrix.md and matrix.png there")
    lab.add_argument("--profile", action="append", choices=[*PROFILES, "none"],
                     metavar="NAME", help="link profile of the WAN links, repeatable (one "
                     f"matrix each): {', '.join(PROFILES)}, none; default plain links")
    lab.add_argument("--ipv6", action="store_true",
                     help="global IPv6 (behind stateful firewalls) on every site that can "
                     "have it, used by the peers")
    lab.add_argument("--faults", nargs="?", const="all", default=None, metavar="NAME,...",
                     help="run the fault matrix instead (all faults, or the named ones) on "
                     "each --profile, through node.send and a Connection")
    lab.add_argument("--emulator-check", action="store_true",
                     help="only measure the link emulator: requested vs measured RTT, jitter "
                     "and loss per profile (--profile to choose), and its packet rate")
    lab.add_argument("--cleanup-stale", action="store_true",
                     help="only remove leftovers of dead lab runs, then exit")
    lab.set_defaults(func=_lab)

    bench = sub.add_parser("bench", help="loopback benchmarks against raw aioice and aiortc")
    bench.add_argument("--system", action="append", choices=SYSTEMS,
                       help="system to measure, repeatable (default all)")
    bench.add_argument("--quick", action="store_true", help="small counts (a smoke run)")
    bench.add_argument("--rounds", type=positive_int, default=None, metavar="N",
                       help="interleaved rounds, each figure their median (default 3, min 3)")
    bench.add_argument("--mtu", type=positive_int, default=None, metavar="BYTES",
                       help="run inside a network namespace whose loopback has this MTU "
                       "(root), e.g. 1500")
    bench.add_argument("--dht-many", type=positive_int, nargs="?", const=100, default=None,
                       metavar="NODES",
                       help="instead: dial by fingerprint on a lab DHT of NODES dhtnodes "
                       "(default 100), without and with churn (root: network namespaces)")
    bench.add_argument("--profile", choices=[*PROFILES, "none"], default=None, metavar="NAME",
                       help="with --dht-many: the peers' access links on this link profile "
                       f"({', '.join(PROFILES)}; the DHT nodes stay on plain links)")
    bench.add_argument("--json", action="store_true", help="print results.json")
    bench.add_argument("--out", type=Path, default=Path("bench"), help="results directory")
    bench.set_defaults(func=_bench)
