"""``python -m fuzz``: fuzz every parser (or the named ones) and print one line per parser.

``--engine atheris`` runs each target coverage-guided in its own process (libFuzzer exits
the process when it is done); ``--engine random`` runs seeded random inputs in this
process; ``auto`` (the default) takes atheris when it is installed. The exit status is 1
when any parser has a finding; the findings, with their inputs, go to ``--report`` (and
libFuzzer's output to the ``-logs`` directory beside it).
Columns: inputs parsed; accepted; rejected with a TierlinkError; findings; CPU time of the
slowest input (re-measured without instrumentation); inputs whose mutation could not be
encoded and that reached the parser as raw bytes instead (``fallback``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

DEFAULT_REPORT = Path(tempfile.gettempdir()) / "tierlink-fuzz-report.json"


def _atheris_run(name: str, runs: int, workdir: Path) -> dict[str, Any]:
    out = workdir / f"{name}.json"
    log = workdir / f"{name}.log"
    with log.open("wb") as err:
        proc = subprocess.run(
            [sys.executable, "-m", "fuzz.libfuzzer", name, str(runs), str(out)],
            stdout=err, stderr=err, check=False, cwd=Path(__file__).resolve().parent.parent,
        )
    stats: dict[str, Any] = json.loads(out.read_text())
    _retime_slow(name, stats)
    if proc.returncode != 0 or stats["inputs"] < runs:
        stats["findings"].append({
            "kind": "harness", "detail": f"libFuzzer exited {proc.returncode}; see {log}",
            "where": "fuzz.libfuzzer", "fuzz_input": "", "parser_input": "",
        })
    return stats


def _retime_slow(name: str, stats: dict[str, Any]) -> None:
    """Replace instrumented timings by uninstrumented ones: the slowest inputs' costs, and
    the slow findings (dropped when their real cost is within the bound)."""
    from fuzz.harness import CPU_BOUND_S, retime
    from fuzz.targets import TARGETS

    target = TARGETS[name]
    stats["slowest_s"] = max(
        (retime(target, bytes.fromhex(data)) for data in stats["slowest_inputs"]), default=0.0
    )
    kept = []
    for finding in stats["findings"]:
        if finding["kind"] == "slow":
            cost = retime(target, bytes.fromhex(finding["fuzz_input"]))
            if cost <= CPU_BOUND_S:
                stats["instrumented_slow"] = stats.get("instrumented_slow", 0) + 1
                continue
            finding["detail"] = f"{cost * 1000:.0f} ms CPU without instrumentation"
            stats["slowest_s"] = max(stats["slowest_s"], cost)
        kept.append(finding)
    stats["findings"] = kept


def _random_run(name: str, runs: int, seed: int) -> dict[str, Any]:
    from fuzz.harness import run_random
    from fuzz.targets import TARGETS

    return run_random(TARGETS[name], runs, seed).to_json()


def _row(stats: dict[str, Any], seconds: float) -> str:
    outcomes = stats["outcomes"]
    rejected = sum(n for k, n in outcomes.items() if k not in ("ok", "FINDING"))
    return (
        f"{stats['target']:<17} {stats['inputs']:>8} {outcomes.get('ok', 0):>8} {rejected:>8} "
        f"{len(stats['findings']):>8} {stats['slowest_s'] * 1000:>10.1f} "
        f"{stats['build_failures']:>8} {seconds:>7.0f}"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the fuzzer; 0 when no parser has a finding."""
    from fuzz.targets import TARGETS

    parser = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__)
    parser.add_argument("targets", nargs="*", metavar="TARGET",
                        help=f"parsers to fuzz (default: all of {', '.join(TARGETS)})")
    parser.add_argument("--runs", type=int, default=100_000, help="inputs per parser")
    parser.add_argument("--engine", choices=("auto", "atheris", "random"), default="auto")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random engine")
    parser.add_argument("--report", type=Path, default=DEFAULT_REPORT)
    args = parser.parse_args(argv)
    unknown = set(args.targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    engine = args.engine
    if engine == "auto":
        engine = "atheris" if importlib.util.find_spec("atheris") else "random"
    names = args.targets or list(TARGETS)
    print(f"fuzzing {len(names)} parsers, {args.runs} inputs each, engine {engine}", flush=True)
    print(f"{'parser':<17} {'inputs':>8} {'ok':>8} {'rejected':>8} {'findings':>8} "
          f"{'slowest ms':>10} {'fallback':>8} {'wall s':>7}", flush=True)
    results = []
    logs = args.report.with_name(args.report.stem + "-logs")  # libFuzzer's output per parser
    logs.mkdir(parents=True, exist_ok=True)
    for name in names:
        start = time.monotonic()
        if engine == "atheris":
            stats = _atheris_run(name, args.runs, logs)
        else:
            stats = _random_run(name, args.runs, args.seed)
        print(_row(stats, time.monotonic() - start), flush=True)
        results.append(stats)
        args.report.write_text(json.dumps(results, indent=1))
    findings = [(s["target"], f) for s in results for f in s["findings"]]
    for target, f in findings:
        print(f"FINDING {target}: {f['kind']} at {f['where']}: {f['detail']}")
    total = sum(s["inputs"] for s in results)
    print(f"{total} inputs, {len(findings)} findings; report: {args.report}")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
