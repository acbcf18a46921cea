"""What a bench worker process uses: CPU seconds, resident memory, event-loop wake-ups."""

from __future__ import annotations

import asyncio
import resource
from typing import Any

from tierlink.bench.base import JsonDict, now


def rss_kb() -> int:
    """Resident set size of this process (KiB)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() // 1024


def cpu_s() -> float:
    """CPU seconds (user + system) this process used so far."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def usage_over(seconds: float) -> JsonDict:
    """CPU of this process and its event loop's wake-ups (passes through the selector;
    None where the loop has no selector to count) over ``seconds`` of sleeping."""
    passes = 0
    selector = getattr(asyncio.get_running_loop(), "_selector", None)
    select = getattr(selector, "select", None)
    if selector is not None and select is not None:

        def counting(timeout: float | None = None) -> Any:
            nonlocal passes
            passes += 1
            return select(timeout)

        selector.select = counting
    try:
        c0, w0 = cpu_s(), now()
        await asyncio.sleep(seconds)
        c1, w1 = cpu_s(), now()
    finally:
        if selector is not None and select is not None:
            del selector.select  # the class's method again
    return {"cpu_s": c1 - c0, "wall_s": w1 - w0,
            "wakeups": passes if select is not None else None}
