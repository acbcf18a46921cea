"""Counting glibc's mmapped blocks in a fresh interpreter (``mallinfo2().hblks``): how the
tests see whether a datagram read buffer was mapped, without timing anything."""

from __future__ import annotations

import json
import subprocess
import sys

#: Defines ``mapped_blocks()`` in a probe script (glibc's ``mallinfo2``).
MALLINFO_PRELUDE = r"""
import ctypes

class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

_libc = ctypes.CDLL(None)
_libc.mallinfo2.restype = _MallInfo2

def mapped_blocks():
    return _libc.mallinfo2().hblks
"""


def run_probe(script: str, argument: str) -> dict[str, object]:
    """Run ``script`` (after the prelude) in a fresh interpreter with one argument; its
    last output line is a JSON object."""
    out = subprocess.run([sys.executable, "-c", MALLINFO_PRELUDE + script, argument],
                         check=True, capture_output=True, text=True, timeout=60).stdout
    result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return result
