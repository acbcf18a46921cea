"""``python -m tierlink.bench [--quick] [--json] [--system NAME ...] [--out DIR]``.

The same as ``tierlink bench``; handy before or without the CLI.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tierlink.bench.report import SYSTEMS, render_markdown
from tierlink.bench.runner import run_bench


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run the benchmark, print the table (or JSON)."""
    parser = argparse.ArgumentParser(prog="python -m tierlink.bench", description=__doc__)
    parser.add_argument("--system", action="append", choices=SYSTEMS, help="repeatable")
    parser.add_argument("--quick", action="store_true", help="small counts (smoke run)")
    parser.add_argument("--json", action="store_true", help="print results.json to stdout")
    parser.add_argument("--out", type=Path, default=Path("bench"), help="results directory")
    args = parser.parse_args(argv)
    results = run_bench(args.system, args.quick, args.out)
    print(json.dumps(results, indent=2) if args.json else render_markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
