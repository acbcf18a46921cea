"""The rounds of one measurement combined: every figure's median and its ``[min, max]``.

A figure from one round means little on a shared machine (aiortc's 1 KiB rate was 932 and
15,983 msg/s in two back-to-back runs), so each figure is the median of its rounds and
carries the spread beside it: ``<key>`` and ``<key>_spread``.
"""

from __future__ import annotations

import statistics
from collections.abc import Collection, Sequence

from tierlink.bench.base import JsonDict

SPREAD_SUFFIX = "_spread"


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def median_round(rounds: Sequence[JsonDict], headline: str) -> JsonDict:
    """The round whose ``headline`` is the median (the lower middle one of an even count)."""
    ordered = sorted(rounds, key=lambda r: float(r[headline]))
    return ordered[(len(ordered) - 1) // 2]


def combine(
    rounds: Sequence[JsonDict], headline: str, figures: Collection[str]
) -> tuple[JsonDict, dict[str, list[float]]]:
    """One result from the successful rounds of a measurement, and each figure's round values.

    Keys in ``figures`` become the median of the rounds with a ``<key>_spread`` of
    ``[min, max]``; every other key (counts, details, trial lists) is taken from the median
    round of ``headline``, so a detail always describes one real round.
    """
    if not rounds:
        return {}, {}
    out = dict(median_round(rounds, headline))
    values: dict[str, list[float]] = {}
    for key in figures:
        series = [float(r[key]) for r in rounds if _number(r.get(key))]
        if not series:
            continue
        values[key] = series
        out[key] = round(statistics.median(series), 4)
        out[key + SPREAD_SUFFIX] = [min(series), max(series)]
    return out, values
