"""CLI commands for the NAT lab and the benchmarks (their modules load only when used)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

LAB_PRESETS = ("open", "full-cone", "restricted", "port-restricted", "symmetric", "hairpin",
               "double")


def _lab(args: argparse.Namespace) -> int:
    from tierlink.lab.command import run_lab_cli

    return run_lab_cli(args.nat, args.attempts, args.turn, args.json, args.report)


def _bench(args: argparse.Namespace) -> int:
    from tierlink.bench.report import render_markdown
    from tierlink.bench.runner import run_bench

    results = run_bench(args.system, args.quick, args.out)
    print(json.dumps(results, indent=2) if args.json else render_markdown(results))
    return 0


def register(sub: Any) -> None:
    """Add ``lab`` and ``bench`` to the top-level subparsers."""
    lab = sub.add_parser("lab", help="NAT lab: the NAT-pair matrix in network namespaces (root)")
    lab.add_argument("--nat", action="append", choices=LAB_PRESETS, metavar="TYPE",
                     help=f"preset to include, repeatable ({', '.join(LAB_PRESETS)}); "
                     "default all")
    lab.add_argument("--attempts", type=int, default=1, help="dials per cell")
    turn = lab.add_mutually_exclusive_group()
    turn.add_argument("--turn", dest="turn", action="store_const", const=True,
                      help="only with TURN")
    turn.add_argument("--no-turn", dest="turn", action="store_const", const=False,
                      help="only without TURN")
    lab.set_defaults(turn=None)
    lab.add_argument("--json", action="store_true", help="print the matrix as JSON")
    lab.add_argument("--report", type=Path, metavar="DIR",
                     help="write matrix.json, matrix.md and matrix.png there")
    lab.set_defaults(func=_lab)

    bench = sub.add_parser("bench", help="loopback benchmarks against raw aioice and aiortc")
    bench.add_argument("--system", action="append",
                       choices=("tierlink", "aioice_raw", "aiortc_datachannel"),
                       help="system to measure, repeatable (default all)")
    bench.add_argument("--quick", action="store_true", help="small counts (a smoke run)")
    bench.add_argument("--json", action="store_true", help="print results.json")
    bench.add_argument("--out", type=Path, default=Path("bench"), help="results directory")
    bench.set_defaults(func=_bench)
