"""One run of several systems, interleaved: each measurement is taken for every system in
turn before the next one starts, and the whole sequence is repeated ``plan.rounds`` times
(round 1 of every system, then round 2, ...), so a change in the (shared) machine's load
hits all systems alike and the ratios stay meaningful. Every figure is the median of its
rounds with its ``[min, max]`` spread (:mod:`tierlink.bench.spread`). Idle CPU is measured
for all systems at once (nothing else runs then); everything else one system at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from tierlink.bench.base import JsonDict
from tierlink.bench.harness import BenchStepError, BenchTimeout, Pair, Plan
from tierlink.bench.idle import (
    close_idle_connections,
    measure_idle_window,
    open_idle_connections,
)
from tierlink.bench.latency import MODES as LATENCY_MODES
from tierlink.bench.latency import latency_step
from tierlink.bench.measure import (
    close_memory_connections,
    measure_connect,
    measure_datagrams,
    measure_datagrams_native,
    measure_datagrams_native_mmap,
    measure_idle,
    measure_memory,
    measure_reliable_1k,
    measure_reliable_1k_base_packets,
    measure_reliable_64k,
)
from tierlink.bench.report import METRICS
from tierlink.bench.spread import SPREAD_SUFFIX, combine

Measurement = Callable[[Pair, Plan], Awaitable[JsonDict]]

#: Systems without a reliable mode: their reliable 1 KiB figure is the datagram ceiling.
RELIABLE_IS_DATAGRAM = frozenset({"aioice_raw"})
RELIABLE_NOTE = (
    "raw aioice has no reliable mode: reliable_1k_* is the paced 1 KiB datagram ceiling "
    "(< 1 % loss), an upper bound for anything reliable built on it"
)
#: The keys that are figures (rates, times, shares): medians with a spread.
FIGURES = frozenset(key for key, *_ in METRICS)


async def open_main(pair: Pair, plan: Plan) -> JsonDict:
    """The connection that the throughput and idle measurements use."""
    await pair.both("open_main", 60.0)
    return {}


#: Taken once per round for each system in turn: (name, measurement).
ROUND_STEPS: tuple[tuple[str, Measurement], ...] = (
    ("connect", measure_connect),
    ("reliable_1k", measure_reliable_1k),
    ("reliable_1k_base_packets", measure_reliable_1k_base_packets),
    ("reliable_64k", measure_reliable_64k),
    ("datagram", measure_datagrams),
    ("datagram_native", measure_datagrams_native),
    ("datagram_native_mmap", measure_datagrams_native_mmap),
    *((f"latency_{mode}", latency_step(mode)) for mode in LATENCY_MODES),
)
#: The field of each measurement whose median round supplies the details (trial lists, ...).
HEADLINE = {
    "connect": "connect_ms_median",
    "reliable_1k": "reliable_1k_msgs_per_s",
    "reliable_1k_base_packets": "reliable_1k_base_packets_msgs_per_s",
    "reliable_64k": "reliable_64k_mb_per_s",
    "datagram": "datagram_msgs_per_s",
    "datagram_native": "datagram_native_msgs_per_s",
    "datagram_native_mmap": "datagram_native_mmap_msgs_per_s",
    **{f"latency_{mode}": f"latency_{mode}_p50_ms" for mode in LATENCY_MODES},
    "idle": "idle_cpu_percent",
    "idle_conn": "idle_conn_cpu_percent",
    "memory": "rss_kb_per_connection",
}
#: Systems whose library has a native receive callback worth measuring on its own.
NATIVE_DATAGRAM = frozenset({"aioice_raw"})
#: Systems that raise their packet size by path MTU probing (and can be capped back).
PATH_MTU_PROBING = frozenset({"tierlink"})


@dataclass
class SystemRun:
    """One system's worker pair, each measurement's round results so far, and its errors."""

    system: str
    pair: Pair | None = None
    samples: dict[str, list[JsonDict]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    stopped: bool = False
    attempts: dict[str, int] = field(default_factory=dict)
    #: Processes of the system besides its workers whose CPU counts as its idle cost.
    helper_pids: tuple[int, ...] = ()
    #: Figures of phases run on their own processes (relay, many connections), as is.
    extra: JsonDict = field(default_factory=dict)

    @property
    def running(self) -> bool:
        return self.pair is not None and not self.stopped

    async def start(self, log_path: Path, setup: JsonDict) -> None:
        """Spawn the pair and run each side's setup (callee first: the dialer needs its id)."""
        log = open(log_path, "ab")  # noqa: SIM115 - the workers write to it until stop()
        try:
            self.pair = await Pair.start(self.system, log)
            c = await self.pair.callee.call("setup", 120.0, **setup)
            await self.pair.dialer.call("setup", 120.0, peer=c.get("fingerprint", ""), **setup)
        except (BenchStepError, OSError, TimeoutError) as exc:
            self.errors["setup"] = f"{type(exc).__name__}: {exc}"
            self.stopped = True
        finally:
            log.close()  # the children hold their own descriptors

    def applies(self, name: str) -> bool:
        """Whether measurement ``name`` means anything for this system."""
        if name.startswith(("reliable", "latency")) and self.system in RELIABLE_IS_DATAGRAM:
            return False
        if name.startswith("datagram_native") and self.system not in NATIVE_DATAGRAM:
            return False
        return name != "reliable_1k_base_packets" or self.system in PATH_MTU_PROBING

    async def step(self, name: str, fn: Measurement, plan: Plan, required: bool = False) -> None:
        """Run one round of a measurement and keep its result; record an error instead.

        A timeout (the workers are out of step) or a failed ``required`` step ends the run.
        """
        if not self.running or self.pair is None or not self.applies(name):
            return
        attempt = self.attempts[name] = self.attempts.get(name, 0) + 1
        try:
            new = await fn(self.pair, plan)
        except BenchStepError as exc:
            self.errors[f"{name} (round {attempt})"] = str(exc)
            if required or isinstance(exc, BenchTimeout):
                self.stopped = True
            return
        self.samples.setdefault(name, []).append(new)

    async def stop(self) -> None:
        """Stop both workers (idempotent)."""
        pair, self.pair = self.pair, None
        self.stopped = True
        if pair is not None:
            await pair.stop()

    def entry(self, headlines: dict[str, str] | None = None) -> JsonDict:
        """The system's object in results.json: medians, ``*_spread`` and the round values
        (``headlines``: the measurements to combine and their headline figures)."""
        out: JsonDict = {}
        values: dict[str, list[float]] = {}
        rounds: dict[str, int] = {}
        for name, headline in (headlines or HEADLINE).items():
            samples = self.samples.get(name, [])
            if not samples:
                continue
            combined, series = combine(samples, headline, FIGURES)
            out.update(combined)
            values.update(series)
            rounds[name] = len(samples)
        if self.system in RELIABLE_IS_DATAGRAM:
            for rel, dg in (("reliable_1k_msgs_per_s", "datagram_msgs_per_s"),
                            ("reliable_1k_mb_per_s", "datagram_mb_per_s")):
                if dg in out:
                    out[rel] = out[dg]
                    out[rel + SPREAD_SUFFIX] = out[dg + SPREAD_SUFFIX]
                    values[rel] = values[dg]
            out["reliable_note"] = RELIABLE_NOTE
        out.update(self.extra)
        out["rounds"] = rounds
        out["round_values"] = values
        if self.errors:
            out["errors"] = dict(self.errors)
        return out


async def _idle_connections(runs: list[SystemRun], plan: Plan) -> None:
    """The many-connection idle phase (:mod:`tierlink.bench.idle`), all systems at once."""
    n = plan.idle_connections
    progress(f"idle: opening {n} connections per system")
    await asyncio.gather(*(run.step("idle_open", open_idle_connections, plan) for run in runs))
    window = plan.idle_many_s / plan.rounds
    for k in range(1, plan.rounds + 1):
        progress(f"idle window {k}/{plan.rounds}: {n} connections ({window:.0f} s)")
        await asyncio.gather(*(
            run.step("idle_conn", functools.partial(measure_idle_window, helpers=run.helper_pids),
                     plan)
            for run in runs
            if run.samples.get("idle_open")
        ))
    await asyncio.gather(*(run.step("idle_close", close_idle_connections, plan) for run in runs))


def progress(text: str) -> None:
    """One line of progress on stderr."""
    print(f"bench: {text}", file=sys.stderr, flush=True)


async def run_interleaved(
    runs: list[SystemRun], plan: Plan, logs: Path, setups: dict[str, JsonDict]
) -> None:
    """Every measurement for every system, round after round; always stops every worker."""
    try:
        for run in runs:
            await run.start(logs / f"{run.system}.log", setups.get(run.system, {}))
        for run in runs:
            await run.step("open_main", open_main, plan, required=True)
        for k in range(1, plan.rounds + 1):
            for name, fn in ROUND_STEPS:
                progress(f"round {k}/{plan.rounds}: {name}")
                for run in runs:
                    await run.step(name, fn, plan)
            progress(f"round {k}/{plan.rounds}: idle ({plan.idle_s:.0f} s)")
            await asyncio.gather(*(run.step("idle", measure_idle, plan) for run in runs))
        if plan.idle_many:
            await _idle_connections(runs, plan)
        for k in range(1, plan.rounds + 1):
            progress(f"round {k}/{plan.rounds}: memory")
            for run in runs:
                await run.step("memory", measure_memory, plan)
        for run in runs:
            await run.step("memory_close", close_memory_connections, plan)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.gather(*(run.stop() for run in runs), return_exceptions=True)
