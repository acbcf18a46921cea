"""Smoke test of the benchmark harness: quick mode, raw aioice only, two worker processes,
three interleaved rounds.

Checks that every measurement produced a plausible median with its spread in every round
and that both output files are written; no speed is asserted (speed belongs to the
benchmark itself).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tierlink.bench import loops, netns, packet_cost, runner
from tierlink.bench.crowd import CrowdPlan, measure_crowd
from tierlink.bench.harness import MIN_ROUNDS, Plan
from tierlink.bench.netns import BenchError
from tierlink.bench.relay import measure_relay
from tierlink.bench.report import METRICS, render_markdown, targets
from tierlink.bench.runner import run_bench
from tierlink.bench.spread import combine
from tierlink.dht.launcher import start_nodes, stop_nodes

#: Keys every system of today's results.json has, and the figures among them that get spreads.
RAW_FIGURES = (
    "connect_ms_median",
    "connect_ms_p95",
    "connect_open_ms_median",
    "reliable_1k_msgs_per_s",
    "reliable_1k_mb_per_s",
    "datagram_msgs_per_s",
    "datagram_mb_per_s",
    "datagram_loss_percent",
    "datagram_native_msgs_per_s",
    "datagram_native_mmap_msgs_per_s",
    "idle_cpu_percent",
    "idle_conn_cpu_percent",
    "idle_conn_wakeups_per_s",
    "rss_kb_per_connection",
)


def test_quick_bench_aioice_raw(tmp_path: Path) -> None:
    results = run_bench(["aioice_raw"], True, tmp_path)

    assert results["mtu"] == netns.loopback_mtu() and results["netns"] is None
    assert results["plan"]["rounds"] == MIN_ROUNDS and results["quick"] is True
    raw = results["aioice_raw"]
    assert "errors" not in raw and "error" not in raw, raw
    for key in RAW_FIGURES:
        low, high = raw[f"{key}_spread"]
        assert low <= raw[key] <= high, (key, raw[key], low, high)
        assert len(raw["round_values"][key]) == MIN_ROUNDS, key
    assert all(n == MIN_ROUNDS for n in raw["rounds"].values()), raw["rounds"]
    assert set(raw["rounds"]) == {
        "connect", "datagram", "datagram_native", "datagram_native_mmap", "idle", "idle_conn",
        "memory",
    }
    assert 0 < raw["connect_ms_median"] <= raw["connect_ms_p95"]
    assert raw["connect_n"] == 5
    assert raw["datagram_msgs_per_s"] > 0 and raw["datagram_loss_percent"] < 1.0
    assert raw["reliable_1k_msgs_per_s"] == raw["datagram_msgs_per_s"]
    assert raw["reliable_1k_msgs_per_s_spread"] == raw["datagram_msgs_per_s_spread"]
    assert 0 <= raw["idle_cpu_percent"] < 100
    assert raw["mem_connections"] == 10
    assert raw["idle_conn_connections"] == 5 and raw["idle_conn_cpu_percent"] > 0
    assert raw["idle_conn_wakeups_per_s"] > 0  # aioice's consent checks at least
    assert "idle_conn_helper_cpu_percent" not in raw  # raw aioice runs no helper process
    assert results["machine"]["cores"] >= 1
    # every worker held the run's allocator state; the callee switched for the mmap figure
    assert results["machine"]["malloc"] == "heap" and raw["datagram_native_mmap_pinned"] is True

    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["mtu"] == results["mtu"]
    assert on_disk["aioice_raw"]["connect_ms_median_spread"] == raw["connect_ms_median_spread"]
    md = (tmp_path / "BENCHMARKS.md").read_text()
    assert f"## Loopback (MTU {results['mtu']})" in md and "QUICK" in md
    low, high = raw["connect_ms_median_spread"]
    assert f"| connect, median (ms) | - | {raw['connect_ms_median']:,.1f} ({low:,.1f}–" in md


def test_combine_takes_medians_spreads_and_the_median_rounds_details() -> None:
    rounds = [
        {"rate": 932.0, "n": 1, "detail": {"round": 1}},
        {"rate": 15983.0, "n": 2, "detail": {"round": 2}},
        {"rate": 3000.0, "n": 3, "detail": {"round": 3}},
    ]
    out, values = combine(rounds, "rate", {"rate"})
    assert out["rate"] == 3000.0 and out["rate_spread"] == [932.0, 15983.0]
    assert out["detail"] == {"round": 3} and out["n"] == 3
    assert values == {"rate": [932.0, 15983.0, 3000.0]}
    two, _ = combine(rounds[:2], "rate", {"rate"})
    assert two["rate"] == pytest.approx((932.0 + 15983.0) / 2) and two["detail"] == {"round": 1}


def test_fewer_than_three_rounds_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 3"):
        Plan(rounds=2)
    assert runner.make_plan(True, 5).rounds == 5


def test_targets_and_table_from_fixed_results() -> None:
    results = {
        "machine": {"cores": 2, "python": "3.11", "date": "d", "versions": {}},
        "mtu": 1500,
        "netns": "tlbench-1",
        "plan": {"rounds": 3},
        "tierlink": {
            "reliable_1k_msgs_per_s": 9000.0,
            "reliable_1k_msgs_per_s_spread": [8000.0, 9500.0],
            "connect_ms_median": 20.0,
            "idle_cpu_percent": 0.2,
        },
        "aioice_raw": {"reliable_1k_msgs_per_s": 20000.0},
        "aiortc_datachannel": {
            "reliable_1k_msgs_per_s": 3000.0,
            "reliable_1k_msgs_per_s_spread": [932.0, 15983.0],
            "connect_ms_median": 50.0,
        },
    }
    rows = {t: (m, s) for t, m, s in targets(results)}
    assert rows["reliable 1 KiB msg/s >= 0.5x raw aioice"] == ("0.45x", "FAIL")
    assert rows["reliable 1 KiB msg/s >= 3x aiortc data channel"] == ("3.00x", "PASS")
    assert rows["connect median <= 0.5x aiortc's"] == ("0.40x", "PASS")
    assert rows["idle CPU < 0.1 %"][1] == "FAIL"
    assert rows["idle CPU per connection <= aiortc's"] == ("-", "not measured")
    assert rows["reliable 1 KiB msg/s >= 0.8x raw aioice, at MTU 1500"] == ("0.45x", "FAIL")
    assert rows["reliable 64 KiB >= 100 MB/s, at MTU 1500"] == ("-", "not measured")
    md = render_markdown([{**results, "mtu": 65536, "netns": None}, results])
    row = (
        "| reliable 1 KiB (msg/s) | 9,000 (8,000–9,500) | 20,000 | 3,000 (932–15,983) "
        "| 0.45x | 3.00x |"
    )
    assert md.count(row) == 2
    loopback, mtu1500 = md.index("## Loopback (MTU 65536)"), md.index("## MTU 1500: inside")
    assert loopback < mtu1500 < md.index("## How it is measured")
    assert {key for key, *_ in METRICS} >= set(RAW_FIGURES)


def test_missing_peer_is_refused_naming_make_bench(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(runner.REQUIRES, "aiortc_datachannel", "no_such_module_aiortc")
    with pytest.raises(netns.BenchError) as err:
        run_bench(None, True, tmp_path)
    message = str(err.value)
    assert "no_such_module_aiortc (for aiortc_datachannel)" in message
    assert "make bench" in message and "pip install -e '.[bench]'" in message
    assert not (tmp_path / "results.json").exists()


def test_mtu_mode_needs_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netns.os, "geteuid", lambda: 1000)
    with pytest.raises(netns.BenchError, match="--mtu needs root"):
        run_bench(["aioice_raw"], True, tmp_path, mtu=1500)
    assert not (tmp_path / "results-mtu1500.json").exists()


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root, ip")
def test_mtu_namespace_has_that_mtu_and_is_removed_on_failure() -> None:
    probe = [sys.executable, "-c", "from tierlink.bench.netns import loopback_mtu as m; print(m())"]
    with pytest.raises(RuntimeError, match="a failing run"), netns.mtu_namespace(1500) as ns:
        assert ns in _namespaces()
        out = subprocess.run(["ip", "netns", "exec", ns, *probe], capture_output=True,
                             text=True, check=True)
        assert out.stdout.strip() == "1500"
        raise RuntimeError("a failing run")
    assert ns not in _namespaces()


def test_crowd_phase_holds_every_connection_and_releases_them(tmp_path: Path) -> None:
    if shutil.which("dhtnode") is None:
        pytest.skip("dhtnode not installed")
    plan = CrowdPlan(connections=12, dialers=2, concurrency=3, idle_s=0.5)
    out = asyncio.run(measure_crowd(plan, tmp_path / "crowd.log"))
    assert out["connections_asked"] == 12 and out["connections_opened"] == 12
    assert out["crowd_accepted"] == 12 and out["crowd_closed_by_peer"] == 12
    assert out["crowd_echo_mixed"] == 0 and out["crowd_echo_lost"] == 0
    assert out["crowd_dial_failures"] == [{}, {}]
    assert out["rss_kb_per_connection_at_1000"] is not None
    assert out["crowd_fds_per_connection"] >= 1  # at least its UDP socket
    assert out["crowd_tasks_left_after_close"] <= 0
    refused = out["crowd_callee"]["held"]["node"]["offer_rejections"]
    assert not refused, refused


def test_relay_phase_goes_through_coturn(tmp_path: Path) -> None:
    if shutil.which("dhtnode") is None or shutil.which("turnserver") is None:
        pytest.skip("dhtnode or coturn not installed")

    async def run() -> dict[str, Any]:
        nodes = await start_nodes(1)
        try:
            return await measure_relay(Plan.quick(), nodes[0].proxy_url, tmp_path)
        finally:
            await stop_nodes(nodes)

    out = asyncio.run(run())
    assert "relay_errors" not in out, out
    for key in ("relay_reliable_1k_msgs_per_s", "relay_reliable_64k_mb_per_s",
                "relay_latency_idle_p50_ms", "relay_latency_same_p99_ms"):
        value, (low, high) = out[key], out[f"{key}_spread"]
        assert 0 < low <= value <= high, key


def test_relay_and_crowd_rows_render_beside_the_direct_figures() -> None:
    results = {
        "machine": {}, "mtu": 65536, "netns": None, "plan": {"rounds": 3},
        "tierlink": {
            "reliable_1k_msgs_per_s": 40000.0, "relay_reliable_1k_msgs_per_s": 8000.0,
            "relay_reliable_1k_msgs_per_s_spread": [7000.0, 9000.0],
            "connections_asked": 1000, "connections_opened": 1000, "crowd_dialers": 4,
            "crowd_dials_in_flight": 16, "crowd_dht_nodes": 2,
            "rss_kb_per_connection_at_1000": 142.2,
        },
    }
    md = render_markdown([results])
    assert "| reliable 1 KiB (msg/s) | 40,000 | 8,000 (7,000–9,000) | 0.20x |" in md
    assert "| callee RSS per connection (KiB) | 142.2 |" in md
    rows = {t: (m, s) for t, m, s in targets(results)}
    assert rows["1000 connections to one node"] == ("1000 of 1000", "PASS")
    assert not any("MTU 1500" in t for t in rows)  # a loopback run: no real-MTU targets


def test_loop_choice_is_checked_and_names_its_results_file(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(loops.LOOP_ENV, "trio")
    with pytest.raises(BenchError, match="choose one of asyncio, uvloop"):
        loops.chosen_loop()
    monkeypatch.delenv(loops.LOOP_ENV)
    assert loops.chosen_loop() == "asyncio"
    assert runner.results_name(None) == "results.json"
    assert runner.results_name(1500, "uvloop") == "results-mtu1500-uvloop.json"


def test_packet_budget_floors_from_fixed_figures() -> None:
    figures = {"receive_asyncio": {"us_per_datagram": 17.5},
               "send_gso": {"us_per_datagram": 0.5}, "loadavg_at_start": [1.0, 1.0, 1.0]}
    text = "\n".join(packet_cost.render(figures))
    assert "| receive: asyncio DatagramProtocol (the default loop, as shipped) | 17.50 |" in text
    assert "| receive: uvloop DatagramProtocol | - |" in text
    floor = packet_cost.AIOQUIC_RECV_US + 17.5
    assert f"- receive, asyncio: {floor:.1f} µs -> at most {1452 / floor:.0f} MB/s" in text
    assert "send, sendto" not in text  # not measured: no floor claimed
