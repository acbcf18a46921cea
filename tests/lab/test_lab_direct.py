"""With TURN configured, a pair of NATs that connects directly without TURN still ends on a
direct pair: the relay's check succeeding first no longer wins (direct-first nomination,
:mod:`tierlink.protocol.nomination`). The cells are the ones where the relay used to win
the race: a restricted or port-restricted NAT filters the first check from the peer."""

from __future__ import annotations

import json

import pytest

from tierlink.lab.expectations import DIRECT_PATHS, direct_possible
from tierlink.lab.runner import run_matrix

pytestmark = pytest.mark.lab

#: Direct-capable pairs whose first check from the peer is filtered (the relay used to win).
RACE_PAIRS = (
    ("restricted", "symmetric"),
    ("restricted", "port-restricted"),
    ("port-restricted", "port-restricted"),
    ("full-cone", "restricted"),
    ("restricted", "double"),
)
ATTEMPTS = 3


@pytest.mark.parametrize("driver", ["ice", "node"])
def test_turn_on_cells_with_a_direct_path_end_direct(driver: str) -> None:
    assert all(direct_possible(a, b) for a, b in RACE_PAIRS)
    result = run_matrix([], ATTEMPTS, [True], pairs=RACE_PAIRS, driver=driver,
                        ice_timeout=8.0)
    assert len(result["cells"]) == len(RACE_PAIRS)
    for cell in result["cells"]:
        summary = json.dumps({k: v for k, v in cell.items() if k != "expected"})
        assert cell["successes"] == ATTEMPTS, summary
        assert all(r["path"] in DIRECT_PATHS for r in cell["results"]), summary
