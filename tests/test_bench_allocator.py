"""The bench's pinned allocator state (:mod:`tierlink.bench.allocator`): the state decides
whether asyncio's 256 KiB datagram read buffer is mmapped per datagram, and a worker holds
the run's state. No speed is asserted: the mapping itself is counted (glibc ``mallinfo2``).
"""

from __future__ import annotations

import pytest

from tests.mapped_blocks import run_probe
from tierlink.bench import allocator
from tierlink.bench.harness import Plan
from tierlink.bench.netns import BenchError
from tierlink.bench.report import METRICS
from tierlink.bench.session import HEADLINE, SystemRun

#: In a fresh interpreter: pin MODE (unless "none"), receive one datagram the way asyncio's
#: datagram transport reads it (recvfrom of 256 KiB) and keep it; print how many more
#: mmapped blocks glibc then holds (mallinfo2().hblks).
_PROBE = r"""
import json, socket, sys
from tierlink.bench import allocator

mode = sys.argv[1]
pinned = allocator.pin(mode) if mode != "none" else None
rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
rx.bind(("127.0.0.1", 0))
tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
tx.sendto(bytes(1024), rx.getsockname())
before = mapped_blocks()
data, _ = rx.recvfrom(256 * 1024)  # asyncio's _SelectorDatagramTransport.max_size
after = mapped_blocks()
print(json.dumps({"pinned": pinned, "mapped": after - before, "size": len(data)}))
"""


def _probe(mode: str) -> dict[str, object]:
    return run_probe(_PROBE, mode)


def test_the_state_decides_whether_a_datagram_read_is_mmapped() -> None:
    fresh = _probe("none")  # a new process as shipped: glibc's start-up threshold
    mmap = _probe("mmap")
    heap = _probe("heap")
    assert fresh["size"] == mmap["size"] == heap["size"] == 1024
    assert mmap["pinned"] is True and heap["pinned"] is True
    assert fresh["mapped"] == 1  # the 256 KiB buffer, shrunk in place by mremap, still mapped
    assert mmap["mapped"] == 1
    assert heap["mapped"] == 0  # from the heap: no mmap, mremap, munmap, page faults


def test_the_mode_comes_from_the_environment_and_unknown_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(allocator.MALLOC_ENV, raising=False)
    assert allocator.chosen_mode() == "heap"
    monkeypatch.setenv(allocator.MALLOC_ENV, "mmap")
    assert allocator.chosen_mode() == "mmap"
    monkeypatch.setenv(allocator.MALLOC_ENV, "tcmalloc")
    with pytest.raises(BenchError, match="heap, mmap"):
        allocator.chosen_mode()


def test_the_mmap_figure_is_raw_aioice_only_and_reported_with_a_spread() -> None:
    assert SystemRun("aioice_raw").applies("datagram_native_mmap")
    assert not SystemRun("tierlink").applies("datagram_native_mmap")
    assert not SystemRun("aiortc_datachannel").applies("datagram_native_mmap")
    assert HEADLINE["datagram_native_mmap"] == "datagram_native_mmap_msgs_per_s"
    assert "datagram_native_mmap_msgs_per_s" in {key for key, *_ in METRICS}
    run = SystemRun("aioice_raw")
    run.samples["datagram_native_mmap"] = [
        {"datagram_native_mmap_msgs_per_s": v} for v in (32_000.0, 45_000.0, 22_000.0)
    ]
    entry = run.entry()
    assert entry["datagram_native_mmap_msgs_per_s"] == 32_000.0
    assert entry["datagram_native_mmap_msgs_per_s_spread"] == [22_000.0, 45_000.0]
    assert Plan().rounds == len(entry["round_values"]["datagram_native_mmap_msgs_per_s"])
