"""A/B of tierlink's reliable throughput and CPU per message, two code trees interleaved.

    python bench/ab_reliable.py --mtu 1500 --rounds 5 \
        A=/path/to/old/src B=/path/to/new/src [--pyspy /path/to/py-spy --pyspy-out DIR]

Each variant is a pair of ``tierlink.bench.worker`` processes (dialer, callee: two Nodes
dialing through one local dhtnode) whose ``PYTHONPATH`` is that variant's ``src``. Every
round runs the 1 KiB and the 64 KiB reliable step of :mod:`tierlink.bench.measure` on each
variant in turn (ABBA order; with ``--fresh`` on new workers and a new connection each
time, so no congestion state carries over), and reads both workers' CPU time
(``/proc/PID/stat``) around each step: CPU per message per side, and the UDP datagrams
the namespace sent per message. With ``--mtu`` the whole run happens inside a fresh network
namespace whose loopback has that MTU (root; see :mod:`tierlink.bench.netns`).
With ``--pyspy`` one more 1 KiB step per variant runs under py-spy (collapsed stacks of
both workers, for a per-function breakdown).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from tierlink.bench.harness import Pair, Plan
from tierlink.bench.measure import measure_reliable
from tierlink.bench.netns import NETNS_ENV, loopback_mtu, mtu_namespace
from tierlink.dht.launcher import start_nodes, stop_nodes

TICK = os.sysconf("SC_CLK_TCK")


def cpu_of(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def udp_out() -> int:
    """UDP datagrams sent in this network namespace so far (both workers and the dhtnode)."""
    lines = [ln.split() for ln in Path("/proc/net/snmp").read_text().splitlines()
             if ln.startswith("Udp:")]
    return int(lines[1][lines[0].index("OutDatagrams")])


async def step(pair: Pair, plan: Plan, size: int, count: int) -> dict[str, float]:
    """One reliable step with both workers' CPU per message (µs)."""
    pids = (pair.dialer.proc.pid, pair.callee.proc.pid)
    before = [cpu_of(p) for p in pids]
    out0 = udp_out()
    r = await measure_reliable(pair, plan, size, count)
    after = [cpu_of(p) for p in pids]
    out = udp_out() - out0
    n = r["received"]
    return {
        "msgs_per_s": r["msgs_per_s"], "mb_per_s": r["mb_per_s"],
        "dialer_us_per_msg": (after[0] - before[0]) / n * 1e6,
        "callee_us_per_msg": (after[1] - before[1]) / n * 1e6,
        "datagrams_per_msg": out / n,
    }


async def profiled(pair: Pair, plan: Plan, pyspy: str, out: Path, name: str) -> None:
    """One long 1 KiB step with py-spy recording both workers (collapsed stacks)."""
    procs = []
    for role, w in (("dialer", pair.dialer), ("callee", pair.callee)):
        procs.append(subprocess.Popen(
            [pyspy, "record", "--nonblocking", "-r", "1000", "-f", "raw",
             "-o", str(out / f"{name}-{role}.txt"), "-p", str(w.proc.pid)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    await asyncio.sleep(1.0)  # py-spy attached
    try:
        print(name, "profiled", await step(pair, plan, 1024, 60_000), file=sys.stderr)
    finally:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            p.wait(30)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    variants = dict(v.split("=", 1) for v in args.variants)
    plan = Plan()
    nodes = await start_nodes(1)
    pairs: dict[str, Pair] = {}
    samples: dict[str, dict[str, list[dict[str, float]]]] = {
        v: {"1k": [], "64k": []} for v in variants}
    log = open(args.log, "ab")  # noqa: SIM115 - the workers write to it until the end
    async def start(name: str) -> Pair:
        os.environ["PYTHONPATH"] = variants[name]
        pair = pairs[name] = await Pair.start("tierlink", log)
        setup = {"dht_proxy": nodes[0].proxy_url}
        c = await pair.callee.call("setup", 120.0, **setup)
        await pair.dialer.call("setup", 120.0, peer=c["fingerprint"], **setup)
        await pair.both("open_main", 60.0)
        return pair

    try:
        names = list(variants)
        if not args.fresh:
            for name in names:
                await start(name)
        for k in range(args.rounds):
            order = names if k % 2 == 0 else names[::-1]
            for name in order:
                if args.fresh:  # new processes and connection: no state carried over
                    if name in pairs:
                        await pairs.pop(name).stop()
                    await start(name)
                for label, size, count in (("1k", 1024, plan.reliable_1k_count),
                                           ("64k", 65536, plan.reliable_64k_count)):
                    if label not in args.sizes:
                        continue
                    s = await step(pairs[name], plan, size, count)
                    samples[name][label].append(s)
                    print(f"round {k + 1} {name} {label}", json.dumps(
                        {key: round(v, 2) for key, v in s.items()}), file=sys.stderr)
        if args.pyspy:
            out = Path(args.pyspy_out)
            out.mkdir(parents=True, exist_ok=True)
            for name in names:
                await profiled(pairs[name], plan, args.pyspy, out, name)
    finally:
        for pair in pairs.values():
            await pair.stop()
        await stop_nodes(nodes)
        log.close()
    summary: dict[str, Any] = {"mtu": loopback_mtu(), "rounds": args.rounds}
    for name, by_size in samples.items():
        for label, rows in by_size.items():
            for key in rows[0] if rows else ():
                vals = [r[key] for r in rows]
                summary[f"{name} {label} {key}"] = (
                    round(statistics.median(vals), 2), round(min(vals), 2), round(max(vals), 2))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("variants", nargs="+", help="NAME=SRC_DIR")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mtu", type=int)
    parser.add_argument("--fresh", action="store_true",
                        help="new worker processes and connection for every step")
    parser.add_argument("--sizes", default="1k,64k", help="steps to run: 1k, 64k or both")
    parser.add_argument("--pyspy")
    parser.add_argument("--pyspy-out", default="/tmp/ab-reliable-prof")
    parser.add_argument("--log", default="/tmp/ab-reliable.log")
    args = parser.parse_args()
    if args.mtu and not os.environ.get(NETNS_ENV):
        with mtu_namespace(args.mtu) as ns:
            code = subprocess.call(["ip", "netns", "exec", ns, sys.executable, *sys.argv],
                                   env={**os.environ, NETNS_ENV: ns})
        sys.exit(code)
    summary = asyncio.run(run(args))
    for key, value in summary.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
