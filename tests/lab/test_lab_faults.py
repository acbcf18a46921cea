"""The reduced fault matrix (``make test`` as root): one link profile, two faults injected
mid-stream, both apis. Outcomes only: nothing accepted is lost, nothing is handled twice.
The full matrix is ``make lab`` (``tierlink lab --faults``)."""

from __future__ import annotations

import json
import shutil

import pytest

from tierlink.lab.faultrun import APIS, run_faults
from tierlink.lab.faults import REDUCED_FAULTS
from tierlink.lab.profiles import PROFILES

if shutil.which("conntrack") is None:  # `make test` installs it (scripts/system-deps.sh)
    pytest.skip("the NAT faults need conntrack", allow_module_level=True)

pytestmark = pytest.mark.lab


def test_reduced_fault_matrix() -> None:
    rows = run_faults(REDUCED_FAULTS, [PROFILES["broadband"]], APIS)
    assert [(r["fault"], r["api"]) for r in rows] == [
        (f, api) for f in REDUCED_FAULTS for api in APIS]
    for row in rows:
        summary = json.dumps({k: v for k, v in row.items() if k != "lost_seqs"})
        assert row["error"] is None, summary
        assert row["sent"] > 0, summary
        assert row["lost"] == 0, summary
        assert row["duplicates"] == 0, summary
        assert row["delivered"] >= row["sent"], summary
    restarted = [r for r in rows if r["fault"] == "receiver-restart"]
    assert all("receiver_back_ms" in r["facts"] for r in restarted)
    # The restarted receiver is recognised (its newer record, its silence): the sender's
    # connection closes as "peer restarted", not at the liveness timeout.
    assert all(r["facts"]["migration"]["node"]["peers_restarted"] >= 1 for r in restarted), [
        r["facts"]["migration"] for r in restarted]
    # NAT rebinding: the same Connection moves to a new pair (migration), never a redial.
    rebound = [r for r in rows if r["fault"] == "nat-rebinding" and r["api"] == "connection"]
    assert rebound and all(r["redials"] == 0 and r["path_changes"] >= 1 for r in rebound), rebound
