"""The C allocator's state that decides what asyncio's datagram read costs, pinned per run.

asyncio's datagram transport reads every datagram with ``recvfrom(256 KiB)``: CPython
allocates a 256 KiB bytes object, then shrinks it to the datagram. glibc serves a block that
large with ``mmap`` while its mmap threshold is at its start-up value (128 KiB): an mmap, two
page faults, an mremap and an munmap per datagram, ~20 µs of system time. It raises the
threshold by itself the first time the process frees an mmapped block above it (any large
temporary buffer, at any time), and from then on the read buffer comes from the heap. Which of
the two states a receiver is in depends on its whole allocation history, so a change to code
that is not on the receive path flips raw aioice's ceiling between ~32k and ~128k
datagrams/s (measured here: 25-33 µs of CPU per datagram against 8.4-10.7 µs).

The bench workers therefore pin the threshold with ``mallopt`` (which also stops glibc from
moving it): ``heap`` (the default: the state glibc moves to after its first large free) or
``mmap`` (its start-up state), chosen by ``TIERLINK_BENCH_MALLOC``. Raw aioice's callback
ceiling is measured in both (:func:`tierlink.bench.measure.measure_datagrams_native_mmap`).
"""

from __future__ import annotations

import ctypes
import os

from tierlink.bench.netns import BenchError

MALLOC_ENV = "TIERLINK_BENCH_MALLOC"
#: (mmap threshold, trim threshold) of each state, in bytes. ``heap``: above asyncio's
#: 256 KiB read buffer, with the trim threshold at twice it as glibc's own raise sets it (so
#: the freed tail of the shrunk buffer does not go back to the kernel per datagram).
#: ``mmap``: glibc's start-up values.
MODES: dict[str, tuple[int, int]] = {
    "heap": (1024 * 1024, 2 * 1024 * 1024),
    "mmap": (128 * 1024, 128 * 1024),
}
DEFAULT_MODE = "heap"
#: glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def chosen_mode() -> str:
    """The state named in the environment (default ``heap``); BenchError if unknown."""
    mode = os.environ.get(MALLOC_ENV) or DEFAULT_MODE
    if mode not in MODES:
        raise BenchError(f"{MALLOC_ENV}={mode!r}: choose one of {', '.join(MODES)}")
    return mode


def pin(mode: str) -> bool:
    """Hold this process's allocator in ``mode`` (KeyError if unknown); False where the C
    library has no glibc ``mallopt`` (the state is then whatever that allocator does)."""
    mmap_threshold, trim_threshold = MODES[mode]
    libc = ctypes.CDLL(None)
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold)) and bool(
        mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
    )
