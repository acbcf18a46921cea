"""A reduced connectivity matrix across the NAT lab: raw ICE (lab proven without Node) and one
cell through the full Node (DHT signaling)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from tierlink.lab.nat import PRESETS
from tierlink.lab.report import write_reports
from tierlink.lab.runner import REDUCED_PAIRS, run_matrix

pytestmark = pytest.mark.lab


def test_reduced_ice_matrix(tmp_path: Path) -> None:
    """Each preset at least once, TURN off and on: direct wherever a direct path can exist
    (without TURN); port-restricted<->symmetric and symmetric<->symmetric fail without TURN and
    go through the relay with it; with TURN every cell connects."""
    seen: list[dict[str, Any]] = []
    result = run_matrix([], 1, [False, True], seen.append, pairs=REDUCED_PAIRS, driver="ice",
                        ice_timeout=8.0)
    assert len(result["cells"]) == 2 * len(REDUCED_PAIRS) == len(seen)
    assert set(result["presets"]) == set(PRESETS)
    assert all(p["ok"] for p in result["presets"].values()), result["presets"]
    by_key = {(c["a"], c["b"], c["turn"]): c for c in result["cells"]}
    for (a, b, turn), cell in by_key.items():
        summary = json.dumps(cell)
        assert cell["as_expected"], summary
        if frozenset((a, b)) in ({"port-restricted", "symmetric"}, {"symmetric"}):
            assert cell["path"] == ("relay" if turn else "none"), summary
        elif turn:  # connects; usually direct, but a relay check may win the race
            assert cell["successes"] == 1, summary
        else:
            assert cell["successes"] == 1 and cell["path"] in ("host", "srflx", "prflx"), summary
    assert by_key[("hairpin", "hairpin", False)]["path"] == "host"

    written = write_reports(result, tmp_path)
    assert json.loads(written["json"].read_text())["cells"][0]["a"] == REDUCED_PAIRS[0][0]
    assert written["png"].stat().st_size > 10_000


@pytest.mark.skipif(importlib.util.find_spec("tierlink.node") is None,
                    reason="tierlink.node not available")
def test_node_cell_through_the_dht() -> None:
    """Two Nodes behind port-restricted and full-cone NATs find each other by fingerprint."""
    result = run_matrix([], 1, [False], pairs=[("port-restricted", "full-cone")], driver="node")
    (cell,) = result["cells"]
    assert cell["successes"] == 1, cell
    assert cell["path"] in ("host", "srflx", "prflx"), cell
