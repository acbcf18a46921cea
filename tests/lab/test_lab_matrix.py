"""A reduced connectivity matrix across the NAT lab: raw ICE (the lab proven without Node) and
the full Node, whose cells also deliver one tiered message each (offline where no path exists).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tierlink.lab.expectations import REDUCED_PAIRS
from tierlink.lab.nat import CLASSIC
from tierlink.lab.report import write_reports
from tierlink.lab.runner import run_matrix

pytestmark = pytest.mark.lab

NO_PATH = ({"port-restricted", "symmetric"}, {"symmetric"})


def _check_presets(result: dict[str, Any]) -> None:
    assert set(result["presets"]) == set(CLASSIC)
    assert all(p["ok"] for p in result["presets"].values()), result["presets"]


def test_reduced_ice_matrix(tmp_path: Path) -> None:
    """Each preset at least once, TURN off and on: direct wherever a direct path can exist
    (without TURN); port-restricted<->symmetric and symmetric<->symmetric fail without TURN and
    go through the relay with it; with TURN every cell connects, and every cell with a direct
    path still ends direct."""
    seen: list[dict[str, Any]] = []
    result = run_matrix([], 1, [False, True], seen.append, pairs=REDUCED_PAIRS, driver="ice",
                        ice_timeout=8.0)
    assert len(result["cells"]) == 2 * len(REDUCED_PAIRS) == len(seen)
    _check_presets(result)
    for cell in result["cells"]:
        summary = json.dumps(cell)
        assert cell["as_expected"], summary
        assert not cell["messages"] and cell["tier"] is None, summary
        if frozenset((cell["a"], cell["b"])) in map(frozenset, NO_PATH):
            assert cell["path"] == ("relay" if cell["turn"] else "none"), summary
        else:  # direct wherever a direct path exists, TURN or not (nomination by priority)
            assert cell["successes"] == 1 and cell["path"] in ("host", "srflx", "prflx"), summary
    hairpin = next(c for c in result["cells"] if c["a"] == "hairpin" and not c["turn"])
    assert hairpin["path"] == "host"

    written = write_reports(result, tmp_path)
    assert json.loads(written["json"].read_text())["cells"][0]["a"] == REDUCED_PAIRS[0][0]
    assert written["png"].stat().st_size > 10_000


def test_reduced_node_matrix_delivers_every_message(tmp_path: Path) -> None:
    """The full Node, each preset at least once, TURN off and on, one attempt per cell: the
    connect attempts follow the path expectations, and every cell's test message is
    acknowledged and taken by the callee exactly once: through the DHT offline queue where no
    path exists, over the live path (direct, or relay when only TURN connects) otherwise."""
    result = run_matrix([], 1, [False, True], pairs=REDUCED_PAIRS, driver="node",
                        ice_timeout=8.0)
    assert len(result["cells"]) == 2 * len(REDUCED_PAIRS)
    _check_presets(result)
    for cell in result["cells"]:
        summary = json.dumps({k: v for k, v in cell.items() if k != "expected"})
        (attempt,) = cell["results"]
        assert cell["messages"] and cell["as_expected"], summary
        assert attempt["delivered"] and attempt["received"], summary
        assert attempt["received_count"] == 1, summary
        assert cell["delivered"] == cell["received"] == 1, summary
        pair = frozenset((cell["a"], cell["b"]))
        if pair in map(frozenset, NO_PATH):
            if cell["turn"]:
                assert (cell["path"], cell["tier"]) == ("relay", "relay"), summary
            else:
                assert (cell["path"], cell["tier"]) == ("none", "offline"), summary
                assert attempt["received_tier"] == "offline", summary
        else:
            assert cell["successes"] == 1, summary
            assert cell["path"] in ("host", "srflx", "prflx") and cell["tier"] == "direct", summary
    offline = [c for c in result["cells"] if c["tier"] == "offline"]
    assert len(offline) == 2  # exactly the two no-path cells without TURN

    written = write_reports(result, tmp_path)
    md = written["md"].read_text()
    assert "| port-restricted | symmetric | off | 0/1 | none | - | 1/1 | offline |" in md


def test_real_world_cells() -> None:
    """The Node across real-world presets, TURN off, one attempt each: through a CGN as
    through any port-restricted NAT; two subscribers of one CGN through its hairpin; two
    phones behind symmetric CGNs directly over IPv6 only; a network that lets no UDP out
    has no path without TURN and its message goes through the DHT proxy on TCP 80, offline."""
    pairs = [("cgnat", "port-restricted"), ("cgnat-shared", "cgnat-shared"),
             ("mobile-v6", "mobile-v6"), ("udp-blocked", "port-restricted")]
    result = run_matrix([], 1, [False], pairs=pairs, driver="node", ice_timeout=8.0)
    assert all(p["ok"] for p in result["presets"].values()), result["presets"]
    cells = {(c["a"], c["b"]): c for c in result["cells"]}
    for cell in cells.values():
        summary = json.dumps({k: v for k, v in cell.items() if k != "expected"})
        assert cell["as_expected"] and cell["delivered"] == cell["received"] == 1, summary
    phones = cells[("mobile-v6", "mobile-v6")]
    assert phones["path"] == "host" and ":" in phones["results"][0]["selected_pair"]["local"][
        "address"]
    assert cells[("cgnat-shared", "cgnat-shared")]["path"] in ("srflx", "prflx")
    blocked = cells[("udp-blocked", "port-restricted")]
    assert (blocked["path"], blocked["tier"]) == ("none", "offline")
    assert "no UDP out" in blocked["expected"]["note"]


def test_no_udp_network_connects_through_turn_over_tls() -> None:
    """From a LAN that lets only TCP 80/443 out, the Node (asking TURN over UDP and over TLS
    on 443) connects through the relay it reached over TLS."""
    result = run_matrix([], 1, [True], pairs=[("udp-blocked", "port-restricted")],
                        driver="node", ice_timeout=8.0)
    (cell,) = result["cells"]
    summary = json.dumps({k: v for k, v in cell.items() if k != "expected"})
    assert cell["as_expected"] and (cell["path"], cell["tier"]) == ("relay", "relay"), summary
    assert cell["results"][0]["selected_pair"]["local"]["type"] == "relay", summary
