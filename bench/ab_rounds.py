"""Interleaved A/B rounds for the ``ab_*`` scripts: each variant is a ``NAME=SRC`` argument
(``SRC``: a tree's ``src`` put on the child's PYTHONPATH); rounds alternate the order."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys


def run_child(src: str, code: str, *args: str) -> dict[str, float]:
    """Run ``python -c code args`` with ``src`` first on the path; the JSON it prints."""
    out = subprocess.run(
        [sys.executable, "-c", code, *args],
        env={**os.environ, "PYTHONPATH": src}, capture_output=True, text=True, check=True,
    ).stdout
    result: dict[str, float] = json.loads(out)
    return result


def compare(code: str, args: list[str], keys: tuple[str, ...]) -> None:
    """Run every variant named on the command line (``--rounds N``, default 9) and print
    each key's median (min-max) per variant."""
    variants = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
    rounds = int(sys.argv[sys.argv.index("--rounds") + 1]) if "--rounds" in sys.argv else 9
    rows: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    names = list(variants)
    for k in range(rounds):
        for name in names if k % 2 == 0 else names[::-1]:
            rows[name].append(run_child(variants[name], code, *args))
    for name, results in rows.items():
        for key in keys:
            vals = [r[key] for r in results]
            print(f"{name} {key}: {statistics.median(vals):.2f} "
                  f"({min(vals):.2f}-{max(vals):.2f})")
