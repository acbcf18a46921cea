"""The link emulator on real namespaces: each profile's measured RTT, jitter and loss lie
within the stated tolerances, jitter does not reorder, and the emulator carries at least
twice the packet rate of a lab run that uses it (a reduced ``--profile broadband`` cell)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tierlink.lab.linkcheck import check_profile, measure_capacity
from tierlink.lab.profiles import PROFILES
from tierlink.lab.runner import run_matrix
from tierlink.lab.topology import Lab

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(turn=False, dht=False) as shared:
        yield shared


@pytest.mark.parametrize("name", list(PROFILES))
def test_profile_accuracy(lab: Lab, name: str) -> None:
    """400 echoes across two emulated links each way (as between two lab peers)."""
    profile = PROFILES[name]
    row = check_profile(profile, count=400, lab=lab)
    summary = json.dumps(row)
    assert row["sent"] == 400 and 0 < row["received"] <= 400, summary
    assert row["within"] == {"rtt": True, "jitter": True, "loss": True}, summary
    # delay is never taken away: nothing comes back faster than the requested minimum
    assert row["rtt_p5_p95_ms"][0] >= profile.rtt_ms - 2 * profile.jitter_ms - 0.5, summary
    assert row["reordered"] == 0, summary


def test_emulator_carries_twice_a_lab_runs_packet_rate() -> None:
    """A reduced ``--profile broadband`` dial cell (Node driver, one attempt, TURN off)
    connects and delivers its message directly; then the emulator's measured capacity is at
    least twice the busiest second any of that run's emulated links saw."""
    result = run_matrix([], 1, [False], pairs=[("port-restricted", "full-cone")],
                        driver="node", profiles=[PROFILES["broadband"]])
    (cell,) = result["cells"]
    summary = json.dumps({k: v for k, v in cell.items() if k != "results"})
    assert cell["profile"] == "broadband" and cell["as_expected"], summary
    assert cell["successes"] == 1 and cell["tier"] == "direct", summary
    assert cell["results"][0]["selected_pair"], summary
    assert result["profiles"]["broadband"]["rtt_ms"] == 20.0
    emulator = result["emulator"]
    assert emulator["links"] == 2 and emulator["moved"] > 0, emulator
    assert emulator["capacity_pps"] >= 2 * max(emulator["peak_pps"], 1), emulator
    assert emulator["sustains_twice"], emulator


def test_capacity_steps_are_bounded_and_counted(lab: Lab) -> None:
    """The capacity probe sends exactly what each step asks and counts what arrived."""
    capacity = measure_capacity(rates=(500, 1000), lab=lab)
    assert [s["sent"] for s in capacity["steps"]] == [500, 1000]
    assert all(0 <= s["received"] <= s["sent"] for s in capacity["steps"])
    assert capacity["capacity_pps"] in (0, 500, 1000)
