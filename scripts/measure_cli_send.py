#!/usr/bin/env python3
"""Wall time of ``tierlink send`` on a loopback DHT, with and without a running node.

Starts ``tierlink dht serve`` (bootstrap), ``tierlink run`` of the recipient B, then times
``tierlink send`` from A: first with no node of A up (each send starts its own dhtnode and
joins), then with a ``tierlink run`` of A up (each send goes through its control socket).
Prints one line per send and a summary. A measurement, not a test: numbers vary with load.

    PYTHONPATH=src python scripts/measure_cli_send.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TIERLINK = [sys.executable, "-m", "tierlink.cli"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="sends of each kind")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tlm", dir="/tmp"))
    env = dict(os.environ, XDG_RUNTIME_DIR=str(tmp))
    procs: list[subprocess.Popen[str]] = []

    def spawn(*argv: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen([*TIERLINK, *argv], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True, env=env)
        procs.append(proc)
        return proc

    def first_line(proc: subprocess.Popen[str]) -> str:
        assert proc.stdout is not None
        return proc.stdout.readline()

    try:
        dht = spawn("dht", "serve", "--port", "0", "--no-rate-limit")
        port = first_line(dht).split(":")[-1].strip()
        common = ["--bootstrap", f"127.0.0.1:{port}", "--no-rate-limit",
                  "--host-address", "127.0.0.1"]
        keys: dict[str, Path] = {}
        fps: dict[str, str] = {}
        for name in ("a", "b"):
            keys[name] = tmp / f"{name}.json"
            out = subprocess.run([*TIERLINK, "id", "new", "--out", str(keys[name])],
                                 capture_output=True, text=True, check=True, env=env)
            fps[name] = out.stdout.strip()
        b_fp = fps["b"]
        b = spawn("run", "--identity", str(keys["b"]), "--data-dir", str(tmp / "b"),
                  "--json", *common)
        first_line(b)

        def timed_send(i: int) -> tuple[float, dict[str, object]]:
            start = time.perf_counter()
            out = subprocess.run(
                [*TIERLINK, "send", b_fp, f"message {i}", "--identity", str(keys["a"]),
                 "--data-dir", str(tmp / "a"), "--json", *common],
                capture_output=True, text=True, timeout=120, env=env)
            elapsed = time.perf_counter() - start
            if out.returncode != 0:
                raise SystemExit(f"send failed: {out.stderr.strip()}")
            return elapsed, json.loads(out.stdout)

        results: dict[str, list[float]] = {"own node": [], "running node": []}
        for i in range(args.runs):
            elapsed, obj = timed_send(i)
            results["own node"].append(elapsed)
            print(f"own node      send {i}: {elapsed:.3f} s ({obj['state']}, {obj['tier']})")
        a = spawn("run", "--identity", str(keys["a"]), "--data-dir", str(tmp / "a"),
                  "--json", *common)
        first_line(a)
        for i in range(args.runs):
            elapsed, obj = timed_send(args.runs + i)
            results["running node"].append(elapsed)
            print(f"running node  send {i}: {elapsed:.3f} s ({obj['state']}, {obj['tier']}, "
                  f"node {obj['node']})")
        start = time.perf_counter()
        subprocess.run([*TIERLINK, "--help"], capture_output=True, check=True, env=env)
        startup = time.perf_counter() - start
        for kind, times in results.items():
            print(f"{kind:<13} n={len(times)} min {min(times):.3f} s  median "
                  f"{statistics.median(times):.3f} s  max {max(times):.3f} s")
        print(f"(interpreter start + CLI import, 'tierlink --help': {startup:.3f} s; "
              f"loadavg {os.getloadavg()[0]:.2f})")
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
