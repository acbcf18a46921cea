"""Which event loop the worker processes run: asyncio's default (as shipped) or uvloop
(``TIERLINK_BENCH_LOOP=uvloop``), whose datagram callback costs far less CPU per packet than
asyncio's; tierlink's batch reads close most of that gap on asyncio
(:mod:`tierlink.bench.packet_cost` measures all three).

The choice travels in the environment, so every worker (and the run inside an ``--mtu``
namespace) uses it; each loop's results go to files of their own.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

from tierlink.bench.netns import BenchError

LOOP_ENV = "TIERLINK_BENCH_LOOP"
LOOPS = ("asyncio", "uvloop")
T = TypeVar("T")


def chosen_loop() -> str:
    """The loop named in the environment (default ``asyncio``); BenchError if unknown or
    not installed."""
    loop = os.environ.get(LOOP_ENV) or "asyncio"
    if loop not in LOOPS:
        raise BenchError(f"{LOOP_ENV}={loop!r}: choose one of {', '.join(LOOPS)}")
    if loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
        raise BenchError(f"{LOOP_ENV}=uvloop but uvloop is not installed: pip install uvloop")
    return loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the chosen loop."""
    if chosen_loop() == "asyncio":
        return asyncio.run(main)
    uvloop = importlib.import_module("uvloop")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
