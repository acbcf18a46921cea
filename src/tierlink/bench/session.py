"""One run of several systems, interleaved: each measurement is taken for every system in
turn before the next one starts, so a change in the (shared) machine's load hits all
systems alike and the ratios stay meaningful. Idle CPU is measured for all systems at once
(nothing else runs then); everything else runs one system at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from tierlink.bench.base import JsonDict
from tierlink.bench.harness import BenchStepError, BenchTimeout, Pair, Plan
from tierlink.bench.measure import (
    measure_connect,
    measure_datagrams,
    measure_datagrams_native,
    measure_idle,
    measure_memory,
    measure_reliable_1k,
    measure_reliable_1k_base_packets,
    measure_reliable_64k,
)

Measurement = Callable[[Pair, Plan], Awaitable[JsonDict]]

#: Systems without a reliable mode: their reliable 1 KiB figure is the datagram ceiling.
RELIABLE_IS_DATAGRAM = frozenset({"aioice_raw"})
RELIABLE_NOTE = (
    "raw aioice has no reliable mode: reliable_1k_* is the paced 1 KiB datagram ceiling "
    "(< 1 % loss), an upper bound for anything reliable built on it"
)


async def open_main(pair: Pair, plan: Plan) -> JsonDict:
    """The connection that the throughput and idle measurements use."""
    await pair.both("open_main", 60.0)
    return {}


#: Repeated ``plan.rounds`` times, interleaved: (name, measurement, headline field, higher is
#: better). Of the rounds, the one with the best headline is kept (whole, details included):
#: on a shared machine interference only ever makes a figure worse.
ROUND_STEPS: tuple[tuple[str, Measurement, str, bool], ...] = (
    ("connect", measure_connect, "connect_ms_median", False),
    ("reliable_1k", measure_reliable_1k, "reliable_1k_msgs_per_s", True),
    (
        "reliable_1k_base_packets",
        measure_reliable_1k_base_packets,
        "reliable_1k_base_packets_msgs_per_s",
        True,
    ),
    ("reliable_64k", measure_reliable_64k, "reliable_64k_mb_per_s", True),
    ("datagram", measure_datagrams, "datagram_msgs_per_s", True),
    ("datagram_native", measure_datagrams_native, "datagram_native_msgs_per_s", True),
)
#: Systems whose library has a native receive callback worth measuring on its own.
NATIVE_DATAGRAM = frozenset({"aioice_raw"})
#: Systems that raise their packet size by path MTU probing (and can be capped back).
PATH_MTU_PROBING = frozenset({"tierlink"})


@dataclass
class SystemRun:
    """One system's worker pair, its results so far and its errors."""

    system: str
    pair: Pair | None = None
    result: JsonDict = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    stopped: bool = False
    rounds: dict[str, int] = field(default_factory=dict)

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

    async def step(
        self,
        name: str,
        fn: Measurement,
        plan: Plan,
        required: bool = False,
        headline: tuple[str, bool] | None = None,
    ) -> None:
        """Run one measurement; record its error. A timeout or a required step ends the run.

        With ``headline`` (field, higher is better) a repeated step replaces the earlier
        result only if its headline is better.
        """
        if not self.running or self.pair is None:
            return
        if name.startswith("reliable") and self.system in RELIABLE_IS_DATAGRAM:
            return
        if name == "datagram_native" and self.system not in NATIVE_DATAGRAM:
            return
        if name == "reliable_1k_base_packets" and self.system not in PATH_MTU_PROBING:
            return
        self.rounds[name] = self.rounds.get(name, 0) + 1
        try:
            new = await fn(self.pair, plan)
        except BenchStepError as exc:
            self.errors[f"{name} (round {self.rounds[name]})"] = str(exc)
            if required or isinstance(exc, BenchTimeout):
                self.stopped = True
            return
        if headline is None or _better(new, self.result, *headline):
            self.result.update(new)
        if name == "datagram" and self.system in RELIABLE_IS_DATAGRAM:
            if "datagram_msgs_per_s" in self.result:
                self.result["reliable_1k_msgs_per_s"] = self.result["datagram_msgs_per_s"]
                self.result["reliable_1k_mb_per_s"] = self.result["datagram_mb_per_s"]
            self.result["reliable_note"] = RELIABLE_NOTE

    async def stop(self) -> None:
        """Stop both workers (idempotent)."""
        pair, self.pair = self.pair, None
        self.stopped = True
        if pair is not None:
            await pair.stop()

    def entry(self) -> JsonDict:
        """The system's object in results.json."""
        out = dict(self.result)
        out["rounds"] = dict(self.rounds)
        if self.errors:
            out["errors"] = dict(self.errors)
        return out


def _better(new: JsonDict, old: JsonDict, key: str, higher: bool) -> bool:
    """True if ``new[key]`` beats ``old[key]`` (or old has none)."""
    if key not in new:
        return key not in old
    if key not in old:
        return True
    return bool(new[key] > old[key]) if higher else bool(new[key] < old[key])


async def run_interleaved(
    runs: list[SystemRun], plan: Plan, logs: Path, setups: dict[str, JsonDict]
) -> None:
    """Every measurement for every system, interleaved; always stops every worker."""
    try:
        for run in runs:
            await run.start(logs / f"{run.system}.log", setups.get(run.system, {}))
        for run in runs:
            await run.step("open_main", open_main, plan, required=True)
        for _ in range(plan.rounds):
            for name, fn, key, higher in ROUND_STEPS:
                for run in runs:
                    await run.step(name, fn, plan, headline=(key, higher))
        await asyncio.gather(*(run.step("idle", measure_idle, plan) for run in runs))
        for run in runs:
            await run.step("memory", measure_memory, plan)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.gather(*(run.stop() for run in runs), return_exceptions=True)
