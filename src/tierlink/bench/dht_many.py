"""``dht_many``: dial by fingerprint on a DHT of many nodes, without and with churn.

A :class:`~tierlink.bench.dht_lab.DhtLab` of ``nodes`` dhtnodes (root: network namespaces)
runs one long-lived callee and ``dialers`` long-lived dialers (:mod:`tierlink.bench.dht_peer`),
each in its own namespace with its own dhtnode joined through a different lab node, as a
node that stays up (``tierlink run``) would be. The dialers dial the callee in turn, one dial
at a time (``dial_interval_s`` apart), each cold (the callee's record forgotten first, so
every dial looks it up). Per
dial, from the peers' traced DHT events on one machine-wide monotonic clock:

* ``lookup``: dial start until the callee's record was accepted;
* ``offer``: the dialer's offer put started until the callee's listen delivered it;
* ``answer``: the callee's answer put started until the dialer's listen delivered it;
* ``dial``: the whole ``Node.connect`` (lookup, offer, answer, ICE checks, QUIC).

With ``access`` (a link profile's per-link share) every peer's access link goes through the
lab's link emulator (the peers are the phones; the DHT nodes stay on plain links), and each
phase records the emulators' own statistics (peak packet rate, longest queue, frames they
dropped) to show they were not the bottleneck.

Phase ``quiet`` runs without churn, then phase ``churn`` with ``churn_per_min`` nodes leaving
(and fresh ones joining) per minute. Each phase keeps every dial's numbers (``dials``), the
load average around it, and the lab's dhtnodes' own CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from tierlink.bench.dht_lab import AccessLink, DhtLab, lab_hosts
from tierlink.bench.measure import p95
from tierlink.wire.dhtkeys import ice_candidates_key, offers_key

JsonDict = dict[str, Any]
STEPS = ("lookup", "offer", "answer", "dial")
#: How long a peer may take to start its dhtnode, join and publish (seconds).
PEER_START_S = 60.0


@dataclass(frozen=True)
class ManyPlan:
    """The counts and rates of one ``dht_many`` run."""

    nodes: int = 100
    dialers: int = 4
    dials: int = 40
    churn_per_min: float = 20.0
    churn_share: float = 0.5
    down_s: float = 20.0
    settle_s: float = 15.0
    churn_warmup_s: float = 30.0
    dial_interval_s: float = 2.0
    dial_timeout: float = 10.0
    rate_limit: bool = True
    log_dir: str | None = None
    log_nodes: bool = False
    seed: int = 1
    access: AccessLink | None = None

    @classmethod
    def quick(cls, nodes: int = 100) -> ManyPlan:
        """Small counts: a smoke run of a minute or two."""
        return cls(nodes=nodes, dialers=2, dials=10, settle_s=5.0, churn_warmup_s=10.0,
                   dial_interval_s=1.0)


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _cpu_ticks(pids: Sequence[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError), \
                open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total


class Peer:
    """One :mod:`tierlink.bench.dht_peer` process in its own lab namespace."""

    def __init__(self, proc: asyncio.subprocess.Process, ready: JsonDict) -> None:
        self.proc = proc
        self.fingerprint: str = ready["ready"]
        self.ready = ready

    @classmethod
    async def start(cls, lab: DhtLab, role: str, contact: int, log_name: str) -> Peer:
        """Start a peer whose dhtnode joins through lab node ``contact``."""
        ns, address = await lab.add_peer_host()
        params = {"role": role, "address": address, "bootstrap": list(lab.contact(contact)),
                  "log_file": lab.log_path(log_name)}
        proc = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", ns, sys.executable, "-m", "tierlink.bench.dht_peer",
            json.dumps(params), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            limit=1 << 22,
        )
        try:
            ready = await asyncio.wait_for(cls._read(proc), PEER_START_S)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        return cls(proc, ready)

    @staticmethod
    async def _read(proc: asyncio.subprocess.Process) -> JsonDict:
        assert proc.stdout is not None
        line = await proc.stdout.readline()
        if not line:
            raise RuntimeError(f"a lab peer exited (code {await proc.wait()})")
        obj: JsonDict = json.loads(line)
        return obj

    async def read(self) -> JsonDict:
        """The next line the peer printed."""
        return await self._read(self.proc)

    async def ask(self, cmd: JsonDict, timeout: float) -> JsonDict:
        """Send a command; its reply."""
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        await self.proc.stdin.drain()
        return await asyncio.wait_for(self.read(), timeout)

    async def close(self) -> None:
        """Close stdin (the peer stops), killing it if it lingers."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 10.0)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()


def step_times(reply: JsonDict, callee: Sequence[JsonDict], fingerprint: str) -> JsonDict:
    """One dial's step times (ms; None where an event is missing) from the dialer's reply and
    the callee's events."""
    mine = reply.get("events", [])
    offer_key = offers_key(fingerprint)
    skip = {offer_key, ice_candidates_key(fingerprint)}
    put = next((e for e in mine if e["ev"] == "put" and e["key"] == offer_key), None)
    got_offer = next((e for e in callee if put and e["ev"] == "value" and e["h"] == put["h"]),
                     None)
    # The callee puts its answer under the answer key and its offers key: the first copy the
    # dialer's listens delivered, matched to the callee's first put of the same value after
    # this dial's offer (the offers-key listen also hands over earlier dials' answers).
    since = put["t"] if put else float("inf")
    answers = {e["h"]: e for e in reversed(callee) if e["ev"] == "put" and e["t"] >= since}
    got_answer = next((e for e in mine if e["ev"] == "value" and e["h"] in answers), None)
    put_answer = answers[got_answer["h"]] if got_answer else None
    answer_key = next((e["key"] for e in callee if got_answer and e["ev"] == "put"
                       and e["h"] == got_answer["h"] and e["key"] not in skip), None)

    def gap(a: JsonDict | None, b: JsonDict | None) -> float | None:
        return None if a is None or b is None else round((b["t"] - a["t"]) * 1000, 2)

    return {
        "ok": reply.get("ok", False),
        "lookup": reply.get("lookup_ms"),
        "offer": gap(put, got_offer),
        "callee": gap(got_offer, put_answer),
        "answer": gap(put_answer, got_answer),
        "dial": round(reply["dial_ms"], 2) if reply.get("dial_ms") is not None else None,
        "error": reply.get("error"),
        "t0": reply.get("t0"),
        "answer_key": answer_key,
        "answer_via": (None if got_answer is None
                       else "offers" if got_answer["key"] == offer_key else "answer"),
    }


def emulator_load(stats: dict[str, JsonDict]) -> JsonDict | None:
    """The emulated access links' busiest figures (None without emulated links): peak
    frames/s and longest queue of any one emulator, frames moved and dropped by all."""
    if not stats:
        return None
    return {"links": len(stats),
            "peak_pps": max(s.get("peak_pps", 0) for s in stats.values()),
            "max_queue": max(s.get("max_queue", 0) for s in stats.values()),
            "moved": sum(sum(s.get("moved", [])) for s in stats.values()),
            "dropped": sum(sum(s.get("dropped", [])) for s in stats.values())}


def summary(values: Sequence[float | None]) -> JsonDict:
    """p50, p95 and max (ms) of the values measured, and how many were."""
    got = [float(v) for v in values if v is not None]
    if not got:
        return {"n": 0}
    return {"n": len(got), "p50": round(statistics.median(got), 1), "p95": round(p95(got), 1),
            "max": round(max(got), 1)}


async def _phase(lab: DhtLab, callee: Peer, events: list[JsonDict], dialers: Sequence[Peer],
                 plan: ManyPlan, churn: float) -> JsonDict:
    pids = lab.pids()
    ticks, started, load = _cpu_ticks(pids), time.monotonic(), _loadavg()
    lab.start_churn(churn, plan.churn_share, plan.down_s)
    if churn > 0:
        await asyncio.sleep(plan.churn_warmup_s)
    dials: list[JsonDict] = []
    for i in range(plan.dials):
        if i:  # spread the dials over the churn, not only its first seconds
            await asyncio.sleep(plan.dial_interval_s)
        reply = await dialers[i % len(dialers)].ask(
            {"dial": callee.fingerprint, "timeout": plan.dial_timeout}, plan.dial_timeout + 30)
        await asyncio.sleep(0.05)  # the callee's event lines of this dial
        dials.append(step_times(reply, events, callee.fingerprint))
    await lab.stop_churn()
    seconds = time.monotonic() - started
    cpu = (_cpu_ticks(pids) - ticks) / os.sysconf("SC_CLK_TCK") if churn == 0 else None
    out: JsonDict = {step: summary([d[step] for d in dials]) for step in (*STEPS, "callee")}
    out.update(
        churn_per_min=churn, dials_ok=sum(1 for d in dials if d["ok"]), dials_tried=len(dials),
        left=lab.churn.left, joined=lab.churn.joined, failed_joins=lab.churn.failed_joins,
        churn_events=lab.churn.events,
        loadavg_before=load, loadavg_after=_loadavg(), seconds=round(seconds, 1),
        lab_dhtnodes_cpu_percent=None if cpu is None else round(100 * cpu / seconds, 2),
        emulator=emulator_load(lab.hosts.link_stats()),
        dials=dials,
    )
    return out


async def measure(plan: ManyPlan) -> JsonDict:
    """Build the lab, run both phases, return the ``dht_many`` object."""
    started = time.monotonic()
    with lab_hosts() as hosts:
        async with DhtLab(hosts, plan.nodes, seed=plan.seed, rate_limit=plan.rate_limit,
                          log_dir=plan.log_dir, log_nodes=plan.log_nodes,
                          access=plan.access) as lab:
            ticks, t0 = _cpu_ticks(lab.pids()), time.monotonic()
            await asyncio.sleep(plan.settle_s)
            idle_cpu = (_cpu_ticks(lab.pids()) - ticks) / os.sysconf("SC_CLK_TCK")
            idle_s = time.monotonic() - t0
            peers: list[Peer] = []
            try:
                step = max(1, plan.nodes // (plan.dialers + 1))
                callee = await Peer.start(lab, "callee", plan.nodes - 1, "callee")
                peers.append(callee)
                for k in range(plan.dialers):
                    peers.append(await Peer.start(lab, "dialer", 1 + k * step, f"dialer{k}"))
                events: list[JsonDict] = []
                reader = asyncio.create_task(_collect(callee, events))
                phases = {
                    "quiet": await _phase(lab, callee, events, peers[1:], plan, 0.0),
                    "churn": await _phase(lab, callee, events, peers[1:], plan,
                                          plan.churn_per_min),
                }
                reader.cancel()
            finally:
                for peer in peers:
                    await peer.close()
    churn = phases["churn"]
    return {
        "nodes": plan.nodes,
        "churn_per_min": plan.churn_per_min,
        "lookup_ms_p50": churn["lookup"].get("p50"),
        "lookup_ms_p95": churn["lookup"].get("p95"),
        "dial_ms_p50": churn["dial"].get("p50"),
        "dial_ms_p95": churn["dial"].get("p95"),
        "profile": None if plan.access is None else plan.access.name,
        "plan": asdict(plan),
        "lab_idle_cpu_percent": round(100 * idle_cpu / idle_s, 2),
        "run_seconds": round(time.monotonic() - started),
        "phases": phases,
    }


async def _collect(peer: Peer, into: list[JsonDict]) -> None:
    while True:
        into.append(await peer.read())


def run_dht_many(plan: ManyPlan) -> JsonDict:
    """Measure ``plan`` (root); the ``dht_many`` object for results.json."""
    return asyncio.run(measure(plan))


def _table(result: JsonDict) -> list[str]:
    """The p50 / p95 / max table per step and phase, and a line per phase."""
    phases = result.get("phases", {})
    lines = ["| step (ms) | no churn p50 | p95 | max | churn p50 | p95 | max |",
             "|---|---|---|---|---|---|---|"]
    for step in (*STEPS, "callee"):
        cells = []
        for name in ("quiet", "churn"):
            s = phases.get(name, {}).get(step, {})
            cells += [str(s.get(k, "-")) for k in ("p50", "p95", "max")]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    for name in ("quiet", "churn"):
        p = phases.get(name, {})
        via = [d.get("answer_via") for d in p.get("dials", [])]
        emu = p.get("emulator")
        busy = ("" if not emu else
                f"; link emulators: peak {emu['peak_pps']} frames/s and longest queue "
                f"{emu['max_queue']} frames on one link, {emu['dropped']} frames dropped "
                f"of {emu['moved']} moved")
        lines.append(f"\n{name}: {p.get('dials_ok')}/{p.get('dials_tried')} dials connected "
                     f"(answer first via the offers key {via.count('offers')}, via the answer "
                     f"key {via.count('answer')}), {p.get('left')} nodes left, "
                     f"{p.get('joined')} joined, load average {p.get('loadavg_before')} -> "
                     f"{p.get('loadavg_after')}{busy}.")
    return lines


def _render_profile(name: str, result: JsonDict) -> list[str]:
    link = result.get("plan", {}).get("access") or {}
    return [
        "", f"### The peers on the `{name}` profile", "",
        f"The same bench with every peer's access link (the dialers' and the callee's: the "
        f"phones) through the lab's user-space link emulator, each direction "
        f"{link.get('delay_ms')} ms +- {link.get('jitter_ms')} ms, {link.get('loss', 0):.2%} "
        f"loss, {link.get('rate_mbit') or 'no'} Mbit/s (a peer-to-peer round trip crosses "
        "four such directions, a peer-to-DHT-node one two); the DHT nodes stay on plain "
        f"links. {result.get('nodes')} nodes, churn {result.get('churn_per_min')} nodes/min.",
        "", *_table(result),
        "", "The emulators' peak rate is for comparing with their capacity "
        "(`tierlink lab --emulator-check`): far below it, and with nothing dropped by them, "
        "the emulators add only the profile's delay. Per-dial numbers: `bench/results.json` "
        f"(`dht_many.profiles.{name}`).",
    ]


def render(result: JsonDict) -> list[str]:
    """BENCHMARKS.md lines for a ``dht_many`` object: p50 / p95 / max per step and phase, on
    plain links and on each profile in ``profiles``."""
    plan = result.get("plan", {})
    lines = [
        f"## Dial by fingerprint on a {result.get('nodes')}-node DHT (`tierlink bench "
        "--dht-many`)", "",
        f"{plan.get('dialers')} long-lived dialers and one callee, each with its own dhtnode "
        "joined through a different lab node, every node in its own network namespace "
        f"(0 ms links); {plan.get('dials')} cold dials per phase (the record looked up each "
        f"time); churn: {result.get('churn_per_min')} nodes/min leave and are replaced "
        f"(among {plan.get('churn_share')} of the nodes). Lab dhtnodes idle: "
        f"{result.get('lab_idle_cpu_percent')} % of one core in total.", "",
        *_table(result),
        "",
        "Steps: `lookup` dial start to the callee's record accepted; `offer` the dialer's put "
        "to the callee's listen; `callee` offer in to answer put; `answer` the callee's put to "
        "the dialer's listen; `dial` the whole `Node.connect`. The stalls of 1.0-1.3 s under "
        "churn are OpenDHT waiting out its 1 s request timeout on a departed node: a put is "
        "sent, and a get answered, only once the search for the key has heard from the 8 "
        "closest nodes it knows. A fresh key's put always starts a new search, so the callee "
        "puts its answer under its own offers key too (its listen keeps that search synced) "
        "and the dialer listens there as well (its search is warm from the offer put): "
        "`answer` is the first copy to arrive. The dial takes the first record the proxy "
        "streams, so the lookup does not wait either. Per-dial numbers: `bench/results.json` "
        "(`dht_many`).",
    ]
    for name, profiled in result.get("profiles", {}).items():
        lines += _render_profile(name, profiled)
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tierlink.bench.dht_many``: one run, its JSON on stdout (for diagnosis)."""
    ap = argparse.ArgumentParser(prog="python -m tierlink.bench.dht_many")
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--dialers", type=int, default=4)
    ap.add_argument("--dials", type=int, default=40)
    ap.add_argument("--churn", type=float, default=20.0, help="nodes leaving per minute")
    ap.add_argument("--log-dir", default=None, help="OpenDHT verbose logs of the peers' nodes")
    ap.add_argument("--log-nodes", action="store_true", help="and of every lab node")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-rate-limit", action="store_true", help="lab dhtnodes run with -U")
    a = ap.parse_args(argv)
    plan = ManyPlan.quick(a.nodes) if a.quick else ManyPlan(nodes=a.nodes)
    plan = replace(plan, churn_per_min=a.churn, log_dir=a.log_dir, log_nodes=a.log_nodes,
                   rate_limit=not a.no_rate_limit,
                   **({} if a.quick else {"dialers": a.dialers, "dials": a.dials}))
    if a.log_dir:
        os.makedirs(a.log_dir, exist_ok=True)
    print(json.dumps(run_dht_many(plan), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
