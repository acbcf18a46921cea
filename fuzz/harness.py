"""Run fuzz inputs through a target: classify each outcome, time it, keep the findings.

A parser's outcome is ``ok``, or the rejection (a RecordError's reason, another
TierlinkError's class name). Any other exception is a finding, and so is an input whose
parse costs more than :data:`CPU_BOUND_S` of CPU time twice in a row (the second run
filters out a pause of the shared machine or a garbage collection). Under atheris the
instrumentation slows parsers down several times, so ``python -m fuzz`` measures the
slow inputs again without it (:func:`retime`).
"""

from __future__ import annotations

import heapq
import random
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from fuzz.draw import Draw
from fuzz.targets import Target
from tierlink.errors import RecordError, TierlinkError

CPU_BOUND_S = 0.05
"""Most CPU time one parse may take."""
KEEP_SLOWEST = 8


@dataclass(frozen=True)
class Finding:
    """A parser that raised something other than TierlinkError, or took too long."""

    target: str
    kind: str
    detail: str
    where: str
    fuzz_input: bytes
    parser_input: str
    cost_s: float = 0.0

    @property
    def signature(self) -> tuple[str, str, str]:
        """What identifies the bug (not the input that showed it)."""
        return self.target, self.kind, self.where


@dataclass
class Stats:
    """What one target's run did."""

    target: str
    inputs: int = 0
    build_failures: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    findings: dict[tuple[str, str, str], Finding] = field(default_factory=dict)
    slowest: list[tuple[float, bytes]] = field(default_factory=list)
    """The :data:`KEEP_SLOWEST` costliest inputs, (CPU seconds, fuzz input), a min-heap."""

    @property
    def slowest_s(self) -> float:
        """CPU time of the costliest input."""
        return max((cost for cost, _ in self.slowest), default=0.0)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able summary (findings with their inputs in hex)."""
        return {
            "target": self.target, "inputs": self.inputs, "build_failures": self.build_failures,
            "outcomes": dict(self.outcomes), "slowest_s": self.slowest_s,
            "slowest_inputs": [data.hex() for _, data in self.slowest],
            "findings": [
                {"kind": f.kind, "detail": f.detail, "where": f.where,
                 "fuzz_input": f.fuzz_input.hex(), "parser_input": f.parser_input}
                for f in self.findings.values()
            ],
        }


def _cpu_time(target: Target, arg: Any) -> tuple[float, BaseException | None]:
    start = time.process_time()
    try:
        target.parse(arg)
    except Exception as exc:
        return time.process_time() - start, exc
    return time.process_time() - start, None


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    last = frames[-1] if frames else None
    return f"{last.filename.rsplit('/', 1)[-1]}:{last.lineno} {last.name}" if last else "?"


def _shown(arg: Any) -> str:
    text = repr(arg)
    return text if len(text) <= 2000 else text[:2000] + f"... ({len(text)} chars)"


def run_one(target: Target, data: bytes, stats: Stats) -> None:
    """Build the parser input from ``data``, parse it, and record the outcome in ``stats``."""
    stats.inputs += 1
    try:
        arg = target.build(Draw(data))
    except Exception:
        stats.build_failures += 1
        arg = target.fallback(data)
    cost, exc = _cpu_time(target, arg)
    if len(stats.slowest) < KEEP_SLOWEST:
        heapq.heappush(stats.slowest, (cost, data))
    elif cost > stats.slowest[0][0]:
        heapq.heapreplace(stats.slowest, (cost, data))
    if cost > CPU_BOUND_S:
        again, _ = _cpu_time(target, arg)
        if again > CPU_BOUND_S:
            least = min(cost, again)
            _add(stats, Finding(target.name, "slow", f"{least * 1000:.0f} ms CPU", "cpu", data,
                                _shown(arg), least))
    if exc is None:
        stats.outcomes["ok"] += 1
    elif isinstance(exc, RecordError):
        stats.outcomes[exc.reason] += 1
    elif isinstance(exc, TierlinkError):
        stats.outcomes[type(exc).__name__] += 1
    else:
        stats.outcomes["FINDING"] += 1
        _add(stats, Finding(target.name, type(exc).__name__, str(exc)[:300], _where(exc), data,
                            _shown(arg)))


def retime(target: Target, data: bytes) -> float:
    """The least CPU time (seconds) of three parses of the input built from ``data``: the
    cost of an input found under atheris, measured without its instrumentation."""
    try:
        arg = target.build(Draw(data))
    except Exception:
        arg = target.fallback(data)
    return min(_cpu_time(target, arg)[0] for _ in range(3))


def _add(stats: Stats, finding: Finding) -> None:
    """Keep the first finding of each bug, and the costliest slow input."""
    known = stats.findings.get(finding.signature)
    if known is None or finding.cost_s > known.cost_s:
        stats.findings[finding.signature] = finding


def random_inputs(runs: int, seed: int) -> list[bytes]:
    """``runs`` fuzz inputs from a seeded generator: the empty input (the valid encoding)
    first, then random bytes of varied lengths."""
    rng = random.Random(seed)
    sizes = (8, 16, 32, 64, 128, 512)
    return [b""] + [rng.randbytes(rng.choice(sizes)) for _ in range(runs - 1)]


def run_random(target: Target, runs: int, seed: int = 0) -> Stats:
    """Run ``runs`` seeded random inputs through ``target``."""
    stats = Stats(target.name)
    for data in random_inputs(runs, seed):
        run_one(target, data, stats)
    return stats
