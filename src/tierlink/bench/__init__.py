"""The benchmark harness behind ``tierlink bench``: tierlink vs raw aioice vs aiortc.

Each measurement runs its two sides in two worker processes (``tierlink.bench.worker``);
:func:`tierlink.bench.runner.run_bench` drives them, round after round, and writes
``bench/results*.json`` (one file per path MTU) and ``BENCHMARKS.md``. Nothing is imported
here, so the CLI can read :data:`tierlink.bench.report.SYSTEMS` without loading the runner.
"""
