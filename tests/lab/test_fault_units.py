"""Fault matrix logic that needs no root: stream payloads, the receiver's log, a run's row,
the tables and reports, the injectable clock and the ``--faults`` argument checks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tierlink.lab.command import EXIT_UNAVAILABLE, run_lab_cli
from tierlink.lab.faultmsg import DeliveryLog, payload_of, sent_at_of, seq_of
from tierlink.lab.faultreport import fault_markdown, format_fault_table
from tierlink.lab.faultrun import fault_line, read_log, summarize_run
from tierlink.lab.faults import FAULTS, REDUCED_FAULTS
from tierlink.lab.report import write_reports


def _handled(seq: int, t: float) -> dict[str, Any]:
    return {"seq": seq, "api": "send", "tier": "direct", "t": t}


def test_payloads_carry_their_sequence_number_and_send_time() -> None:
    assert seq_of(payload_of(17)) == 17
    padded = payload_of(17, 4000, 123.25)
    assert len(padded) == 4000 and seq_of(padded) == 17 and sent_at_of(padded) == 123.25
    assert seq_of(b"lab-msg 17") is None
    assert seq_of(b"fault-msg x") is None
    assert sent_at_of(b"fault-msg 3") is None


def test_receiver_log_round_trip_skips_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "handled.jsonl"
    log = DeliveryLog(path)
    log.record(payload_of(1, 0, 12.5), "send", "direct")
    log.record(b"ping", "send", "direct")  # not a stream message: not recorded
    log.record(payload_of(2, 300, 13.0), "connection", "relay")
    log.close()
    with path.open("a") as f:
        f.write('{"seq": 3, "api"')  # SIGKILL in the middle of a write
    handled = read_log(path)
    assert [(h["seq"], h["sent_at"], h["api"]) for h in handled] == [
        (1, 12.5, "send"), (2, 13.0, "connection")]
    assert read_log(tmp_path / "missing.jsonl") == []


def test_a_run_counts_lost_duplicates_and_recovery() -> None:
    result = {"sent": list(range(8)), "failed": [8, 9], "tier_after": "direct",
              "path_before": "srflx", "path_after": "srflx", "redials": 1, "path_changes": 1}
    handled = [_handled(s, 10.0 + s) for s in (0, 1, 2, 3, 3, 4, 6)]
    handled.append(_handled(5, 20.0))  # sent after the fault, handled late
    row = summarize_run("nat-rebinding", "broadband", "connection", result, handled,
                        fault_started=12.5, fault_at=3)
    assert row["sent"] == 8 and row["failed"] == 2
    assert row["delivered"] == 7
    assert row["duplicates"] == 1
    assert row["lost"] == 1 and row["lost_seqs"] == [7]
    # the first message sent after the fault (seq > 3) was handled at t=14 (seq 4)
    assert row["recovery_ms"] == 1500.0
    assert row["path_changes"] == 1 and "(1 path change)" in fault_line({**row, "ok": True})
    # with send times, "after the fault" is by the time a message was handed to the API
    timed = [{**_handled(4, 14.0), "sent_at": 12.0}, {**_handled(5, 13.0), "sent_at": 12.6}]
    row = summarize_run("nat-rebinding", None, "send", result, timed, 12.5, 3)
    assert row["recovery_ms"] == 500.0
    nothing = summarize_run("blackhole", None, "send", {"sent": [0]}, [], 1.0, 0)
    assert nothing["recovery_ms"] is None and nothing["lost"] == 1


def test_fault_tables_and_report(tmp_path: Path) -> None:
    row = summarize_run("receiver-restart", "broadband", "send",
                        {"sent": [0, 1], "tier_after": "direct"},
                        [_handled(0, 1.0), _handled(1, 2.0)], 0.5, 0)
    row.update(ok=True, error=None)
    bad = {**row, "api": "connection", "ok": False, "error": "the sender gave no result"}
    table = format_fault_table([row, bad])
    assert "receiver-restart" in table and "ERROR" in table
    md = "\n".join(fault_markdown([row, bad]))
    assert "| broadband | receiver-restart | send | 2 | 0 | 2 | 0 | 0 | 1500 ms |" in md
    assert "the sender gave no result" in md
    written = write_reports({"cells": [], "presets": {}, "faults": [row, bad]}, tmp_path)
    assert "png" not in written and written["faults_png"].stat().st_size > 0
    assert "## Fault matrix" in written["md"].read_text()
    assert "## Cells" not in written["md"].read_text()
    assert json.loads(written["json"].read_text())["faults"][0]["fault"] == "receiver-restart"


def test_fault_names() -> None:
    assert set(REDUCED_FAULTS) <= set(FAULTS)
    assert [f for f in FAULTS.values() if f.relay_only] == [FAULTS["turn-kill"]]
    assert FAULTS["clock-skew"].clock_offset_s == 300.0


def test_unknown_fault_is_refused_before_anything_runs() -> None:
    assert run_lab_cli(None, 1, None, False, None, faults="nat-rebinding,meteor") \
        == EXIT_UNAVAILABLE
    assert run_lab_cli(None, 1, None, False, None, faults=",") == EXIT_UNAVAILABLE


def test_clock_offset_shifts_wall_time_only() -> None:
    code = ("import time; from tierlink.lab.faultpeer import shift_clock; "
            "from tierlink.wire.records import now_ms; "
            "w, m, n = time.time(), time.monotonic(), now_ms(); shift_clock(300); "
            "print(time.time() - w, time.monotonic() - m, (now_ms() - n) / 1000)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    wall, mono, records = (float(x) for x in out)
    assert 299 < wall < 301 and 299 < records < 301
    assert mono < 1
