"""``python -m tierlink.lab``: run the NAT lab matrix and write its reports.

The project CLI (``tierlink lab``) can delegate here with :func:`main`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tierlink.lab.nat import PRESETS
from tierlink.lab.netns import LabError, cleanup_stale, missing_requirements


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tierlink lab", description="NAT lab: ICE connectivity matrix over NAT presets"
    )
    parser.add_argument("--report", type=Path, default=Path("lab-report"),
                        help="directory for matrix.json, matrix.md, matrix.png")
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--attempts", type=int, default=3)
    parser.add_argument("--turn", choices=["off", "on", "both"], default="both")
    parser.add_argument("--driver", choices=["node", "ice"], default="node",
                        help="node: full tierlink Node over the DHT; ice: raw ICE only")
    parser.add_argument("--reduced", action="store_true",
                        help="only the reduced pair list (each preset at least once)")
    parser.add_argument("--ice-timeout", type=float, default=8.0)
    parser.add_argument("--cleanup-stale", action="store_true",
                        help="only remove leftovers of dead lab runs, then exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the matrix (or the stale cleanup); returns a process exit status."""
    args = build_parser().parse_args(argv)
    missing = missing_requirements()
    if missing:
        print("NAT lab needs " + ", ".join(missing), file=sys.stderr)
        return 2
    if args.cleanup_stale:
        removed = cleanup_stale()
        print(json.dumps({"removed": removed}))
        return 0
    from tierlink.lab.report import write_reports
    from tierlink.lab.runner import REDUCED_PAIRS, run_matrix

    modes = {"off": [False], "on": [True], "both": [False, True]}[args.turn]
    pairs = [p for p in REDUCED_PAIRS if set(p) <= set(args.presets)] if args.reduced else None

    def progress(cell: dict[str, Any]) -> None:
        print(f"{cell['a']:>15} <-> {cell['b']:<15} turn={'on ' if cell['turn'] else 'off'} "
              f"{cell['successes']}/{cell['attempts']} {cell['path']:<6} "
              f"{cell['connect_ms_median']} ms expected={cell['as_expected']}", flush=True)

    try:
        result = run_matrix(args.presets, args.attempts, modes, progress, pairs=pairs,
                            driver=args.driver, ice_timeout=args.ice_timeout)
    except LabError as exc:
        print(f"lab failed: {exc}", file=sys.stderr)
        return 1
    written = write_reports(result, args.report)
    for path in written.values():
        print(path)
    bad = [c for c in result["cells"] if not c["as_expected"]]
    bad_presets = [n for n, p in result["presets"].items() if not p.get("ok")]
    return 1 if bad or bad_presets else 0
