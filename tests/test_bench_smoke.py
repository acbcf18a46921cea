"""Smoke test of the benchmark harness: quick mode, raw aioice only, two worker processes.

Checks that every measurement produced a plausible value and that both output files are
written; no speed is asserted (speed belongs to the benchmark itself).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tierlink.bench import runner
from tierlink.bench.report import render_markdown, targets
from tierlink.bench.runner import run_bench


def test_quick_bench_aioice_raw(tmp_path: Path) -> None:
    results = run_bench(["aioice_raw"], True, tmp_path)

    raw = results["aioice_raw"]
    assert "errors" not in raw and "error" not in raw, raw
    assert 0 < raw["connect_ms_median"] <= raw["connect_ms_p95"]
    assert raw["connect_n"] == 5
    assert raw["datagram_msgs_per_s"] > 0 and raw["datagram_loss_percent"] < 1.0
    assert raw["reliable_1k_msgs_per_s"] == raw["datagram_msgs_per_s"]
    assert raw["datagram_native_msgs_per_s"] > 0
    assert 0 <= raw["idle_cpu_percent"] < 100
    assert raw["mem_connections"] == 10 and "rss_kb_per_connection" in raw
    assert results["machine"]["cores"] >= 1 and results["quick"] is True

    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["aioice_raw"]["connect_n"] == 5
    md = (tmp_path / "BENCHMARKS.md").read_text()
    assert "| connect, median (ms) |" in md and "QUICK" in md


def test_targets_and_table_from_fixed_results() -> None:
    results = {
        "machine": {"cores": 2, "python": "3.11", "date": "d", "versions": {}},
        "tierlink": {
            "reliable_1k_msgs_per_s": 9000.0,
            "connect_ms_median": 20.0,
            "idle_cpu_percent": 0.2,
        },
        "aioice_raw": {"reliable_1k_msgs_per_s": 20000.0},
        "aiortc_datachannel": {"reliable_1k_msgs_per_s": 3000.0, "connect_ms_median": 50.0},
    }
    rows = {t: (m, s) for t, m, s in targets(results)}
    assert rows["reliable 1 KiB msg/s >= 0.5x raw aioice"] == ("0.45x", "FAIL")
    assert rows["reliable 1 KiB msg/s >= 3x aiortc data channel"] == ("3.00x", "PASS")
    assert rows["connect median <= 0.5x aiortc's"] == ("0.40x", "PASS")
    assert rows["idle CPU < 0.1 %"][1] == "FAIL"
    md = render_markdown(results)
    assert "| reliable 1 KiB (msg/s) | 9,000 | 20,000 | 3,000 | 0.45x | 3.00x |" in md


def test_unavailable_system_is_recorded_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(runner.REQUIRES, "tierlink", "tierlink.no_such_module")
    results = run_bench(["tierlink"], True, tmp_path)
    assert results["tierlink"]["error"] == "tierlink.no_such_module is not importable"
    assert "`tierlink`: not measured" in (tmp_path / "BENCHMARKS.md").read_text()
    assert json.loads((tmp_path / "results.json").read_text())["tierlink"]["quick"] is True
