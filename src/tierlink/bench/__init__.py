"""The benchmark harness behind ``tierlink bench``: tierlink vs raw aioice vs aiortc.

Each measurement runs its two sides in two worker processes (``tierlink.bench.worker``);
``run_bench`` drives them and writes ``bench/results.json`` and ``BENCHMARKS.md``.
"""

from tierlink.bench.report import SYSTEMS
from tierlink.bench.runner import default_markdown_path, run_bench, run_bench_async

__all__ = ["SYSTEMS", "default_markdown_path", "run_bench", "run_bench_async"]
