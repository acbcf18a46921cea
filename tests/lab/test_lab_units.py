"""Lab logic that needs no root: classifications, expectations, rulesets, report writers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tierlink.lab import nat
from tierlink.lab.command import all_as_expected, format_table, progress_line
from tierlink.lab.expectations import (
    REDUCED_PAIRS,
    default_pairs,
    direct_possible,
    expected_cell,
    matrix_pairs,
)
from tierlink.lab.netns import LabError, check_address
from tierlink.lab.probe import classify_filtering, classify_mapping
from tierlink.lab.report import outcome, write_reports
from tierlink.lab.runner import summarize_cell
from tierlink.transport.ice import path_of, tier_of

P, A = "203.0.113.1:40001", "203.0.113.2"
DESTS = [P, f"{A}:40001", f"{A}:40002"]


def test_mapping_classes() -> None:
    local = "198.18.1.2:5000"
    same = dict.fromkeys(DESTS, "203.0.113.11:5000")
    assert classify_mapping(local, same, DESTS) == nat.EIM
    assert classify_mapping("203.0.113.101:7", dict.fromkeys(DESTS, "203.0.113.101:7"),
                            DESTS) == nat.NO_NAT
    adm = {P: "x:1", DESTS[1]: "x:2", DESTS[2]: "x:2"}
    assert classify_mapping(local, adm, DESTS) == nat.ADM
    apdm = {P: "x:1", DESTS[1]: "x:2", DESTS[2]: "x:3"}
    assert classify_mapping(local, apdm, DESTS) == nat.APDM
    assert classify_mapping(local, {**same, P: None}, DESTS) == "unknown"


def test_filtering_classes() -> None:
    assert classify_filtering([P, f"{A}:40001"], P, A) == nat.EIF
    assert classify_filtering([P, "203.0.113.1:40002"], P, A) == nat.ADF
    assert classify_filtering([P], P, A) == nat.APDF
    assert classify_filtering([], P, A) == "blocked"


def test_expectations_match_the_brief() -> None:
    plain = [p for p in nat.CLASSIC if p != "hairpin"]
    blocked = {frozenset(p) for p in [("port-restricted", "symmetric"),
                                      ("symmetric", "symmetric"), ("double", "symmetric")]}
    for a, b in default_pairs(plain):
        assert direct_possible(a, b) == (frozenset((a, b)) not in blocked), (a, b)
        assert expected_cell(a, b, True)["connects"]
    assert expected_cell("symmetric", "symmetric", True)["paths"] == ["relay"]
    assert expected_cell("symmetric", "symmetric", True)["tiers"] == ["relay"]
    assert not expected_cell("port-restricted", "symmetric", False)["connects"]
    assert expected_cell("port-restricted", "symmetric", False)["tiers"] == ["offline"]
    assert expected_cell("double", "symmetric", False)["tiers"] == ["offline"]
    assert expected_cell("open", "full-cone", False)["tiers"] == ["direct"]
    assert expected_cell("open", "full-cone", True)["tiers"] == ["direct"]  # direct beats relay
    assert expected_cell("hairpin", "hairpin", False)["paths"][0] == "host"
    assert expected_cell("hairpin", "hairpin", True)["tiers"] == ["direct"]
    assert ("hairpin", "hairpin") in default_pairs(list(nat.PRESETS))
    for shared in ("hairpin", "cgnat-shared"):
        assert not any(shared in p and p != (shared, shared)
                       for p in default_pairs(list(nat.PRESETS)))
    assert {p for pair in REDUCED_PAIRS for p in pair} == set(nat.CLASSIC)


def test_real_world_expectations() -> None:
    """A CGN behaves like a port-restricted NAT for ICE; a network without UDP connects only
    through a relay reached over TLS (said in the cell); two phones behind
    symmetric CGNs can only go direct over IPv6."""
    assert expected_cell("cgnat", "port-restricted", False)["connects"]
    assert not direct_possible("cgnat", "symmetric")
    blocked = expected_cell("udp-blocked", "port-restricted", True)
    assert not blocked["connects"] and blocked["tiers"] == ["offline"]
    assert "no TURN over TLS" in blocked["note"]
    tls = expected_cell("udp-blocked", "port-restricted", True, turn_tls=True)
    assert tls["paths"] == ["relay"] and tls["tiers"] == ["relay"] and "TLS" in tls["note"]
    assert not expected_cell("udp-blocked", "open", False, turn_tls=True)["connects"]
    phones = expected_cell("mobile-v6", "mobile-v6", False)
    assert phones["paths"] == ["host"] and "IPv6" in phones["note"]
    assert not direct_possible("mobile-v6", "port-restricted")
    assert not expected_cell("mobile-v6", "port-restricted", False)["connects"]
    assert expected_cell("mobile-v6", "port-restricted", False, ipv6=True)["paths"] == ["host"]
    assert expected_cell("symmetric", "symmetric", False, ipv6=True)["connects"]
    assert not expected_cell("double", "symmetric", False, ipv6=True)["connects"]
    assert expected_cell("cgnat-shared", "cgnat-shared", False)["connects"]
    pairs = matrix_pairs()
    assert set(default_pairs(nat.CLASSIC)) <= set(pairs)
    assert {p for pair in pairs for p in pair} == set(nat.PRESETS)


def test_path_of_takes_the_most_indirect_end() -> None:
    assert path_of(("host", "srflx")) == "srflx"
    assert path_of(("host", "relay", "prflx")) == "relay"
    assert path_of((None, None)) == "none"
    assert [tier_of(p) for p in ("host", "prflx", "relay", "none")] == [
        "direct", "direct", "relay", "none"]


def test_summarize_cell_flags_unexpected_outcomes() -> None:
    ok = {"ok": True, "path": "srflx", "connect_ms": 40.0}
    cell = summarize_cell("open", "full-cone", False, [ok, {**ok, "connect_ms": 60.0}])
    assert cell["successes"] == 2 and cell["path"] == "srflx" and cell["tier"] is None
    assert cell["connect_ms_median"] == 50.0 and cell["as_expected"] and not cell["messages"]
    relay = {"ok": True, "path": "relay", "connect_ms": 300.0}
    assert not summarize_cell("open", "full-cone", True, [relay])["as_expected"]
    assert not summarize_cell("open", "full-cone", False, [relay])["as_expected"]
    assert summarize_cell("symmetric", "symmetric", True, [relay])["as_expected"]
    assert not summarize_cell("hairpin", "hairpin", True, [relay])["as_expected"]
    partial = summarize_cell("open", "full-cone", False, [ok, {"ok": False}])
    assert partial["successes"] == 1 and not partial["as_expected"]
    fail = {"ok": False, "path": "none", "error": "ice: TimeoutError"}
    bad = summarize_cell("symmetric", "symmetric", False, [fail])
    assert bad["as_expected"] and bad["path"] == "none" and bad["errors"]
    assert not summarize_cell("symmetric", "symmetric", True, [fail])["as_expected"]


def _msg(tier: str, *, received: bool = True, ms: float = 500.0) -> dict[str, object]:
    delivered = tier != "none"
    return {"tier": tier, "delivered": delivered, "received": received,
            "deliver_ms": ms if delivered else None,
            "message_error": None if delivered else "not acknowledged within 30 s"}


def test_summarize_cell_checks_message_delivery() -> None:
    """Node cells: every message must be acknowledged through an expected tier and taken by
    the callee; a no-path cell is as expected only when its messages went offline."""
    ok = {"ok": True, "path": "srflx", "connect_ms": 40.0}
    fail = {"ok": False, "path": "none", "error": "connect: IceFailed"}

    def cell(a: str, b: str, turn: bool, *results: dict[str, object]) -> dict[str, object]:
        return summarize_cell(a, b, turn, list(results), messages=True)

    good = cell("open", "full-cone", False, {**ok, **_msg("direct", ms=400.0)},
                {**ok, **_msg("direct", ms=600.0)})
    assert good["as_expected"] and good["tier"] == "direct" and good["delivered"] == 2
    assert good["tiers"] == {"direct": 2} and good["deliver_ms_median"] == 500.0
    offline = cell("symmetric", "symmetric", False, {**fail, **_msg("offline")})
    assert offline["as_expected"] and offline["tier"] == "offline" and offline["path"] == "none"
    assert outcome(offline) == "offline"
    lost = cell("symmetric", "symmetric", False, {**fail, **_msg("none")})
    assert not lost["as_expected"] and lost["tier"] == "none" and lost["delivered"] == 0
    assert outcome(lost) == "failed" and "not acknowledged within 30 s" in lost["errors"]
    # a path exists, yet the message fell back to the DHT: a defect of the live tier
    assert not cell("open", "full-cone", False, {**ok, **_msg("offline")})["as_expected"]
    # acknowledged but never taken by the callee's application
    assert not cell("open", "full-cone", False, {**ok, **_msg("direct", received=False)})[
        "as_expected"]
    assert not cell("symmetric", "symmetric", True,
                    {**ok, "path": "relay", **_msg("direct")})["as_expected"]
    # with TURN, a message relayed where a direct path exists is a defect of nomination
    mixed = cell("open", "full-cone", True, {**ok, **_msg("direct")}, {**ok, **_msg("relay")})
    assert not mixed["as_expected"] and mixed["tiers"] == {"direct": 1, "relay": 1}


def test_rulesets_carry_the_eim_fix() -> None:
    for preset in ("full-cone", "restricted", "port-restricted", "symmetric"):
        rules = nat.rules_for(preset, host="198.18.1.2")
        assert 'iifname "wan" ct state new drop' in rules
    assert "fully-random" in nat.rules_for("symmetric", host="198.18.1.2")
    assert "fully-random" not in nat.rules_for("port-restricted", host="198.18.1.2")
    assert "@contacted" in nat.rules_for("restricted", host="198.18.1.2")
    with pytest.raises(ValueError):
        nat.rules_for("open", host="198.18.1.2")


def test_addresses_outside_the_lab_ranges_are_refused() -> None:
    check_address("198.18.3.2/24")
    check_address("203.0.113.9")
    for bad in ("10.0.0.1/8", "192.168.1.1", "172.16.0.1", "8.8.8.8"):
        with pytest.raises(LabError):
            check_address(bad)


def _sample() -> dict[str, object]:
    cells = [
        {"a": "open", "b": "full-cone", "turn": False, "attempts": 2, "successes": 2,
         "path": "srflx", "tier": "direct", "connect_ms_median": 41.5, "as_expected": True},
        {"a": "symmetric", "b": "symmetric", "turn": False, "attempts": 2, "successes": 0,
         "path": "none", "tier": "none", "connect_ms_median": None, "as_expected": True},
        {"a": "symmetric", "b": "symmetric", "turn": True, "attempts": 2, "successes": 2,
         "path": "relay", "tier": "relay", "connect_ms_median": 512.0, "as_expected": True},
        {"a": "open", "b": "symmetric", "turn": True, "attempts": 2, "successes": 1,
         "path": "srflx", "tier": "direct", "connect_ms_median": 80.0, "as_expected": False},
        {"a": "port-restricted", "b": "symmetric", "turn": False, "attempts": 2,
         "successes": 0, "path": "none", "paths": {}, "connect_ms_median": None,
         "messages": True, "tier": "offline", "tiers": {"offline": 2}, "delivered": 2,
         "deliver_ms_median": 8040.0, "as_expected": True},
        {"a": "open", "b": "full-cone", "turn": True, "attempts": 2, "successes": 2,
         "path": "srflx", "paths": {"srflx": 2}, "connect_ms_median": 45.0, "messages": True,
         "tier": "direct", "tiers": {"direct": 1, "relay": 1}, "delivered": 2,
         "deliver_ms_median": 700.0, "as_expected": True},
    ]
    presets = {"open": {"mapping": "no-nat", "filtering": "endpoint-independent", "ok": True}}
    return {"cells": cells, "presets": presets}


def test_outcome_classes() -> None:
    kinds = [outcome(c) for c in _sample()["cells"]]  # type: ignore[attr-defined]
    assert kinds == ["direct", "failed", "relay", "partial", "offline", "direct"]
    mixed = {"successes": 2, "attempts": 2, "path": "relay", "paths": {"relay": 1, "srflx": 1}}
    assert outcome(mixed) == "mixed"


def test_report_writers(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    result = _sample()
    written = write_reports(result, tmp_path)
    assert json.loads(written["json"].read_text()) == result
    md = written["md"].read_text()
    assert "| symmetric | symmetric | on | 2/2 | relay | 512 ms | - | relay | - | relay | yes |" \
        in md
    assert "| open | symmetric | on | 1/2 | srflx | 80 ms | - | direct | - | partial | **NO** |" \
        in md
    assert ("| port-restricted | symmetric | off | 0/2 | none | - | 2/2 | offline | 8040 ms "
            "| offline | yes |") in md
    assert "| 2/2 | direct 1 + relay 1 | 700 ms | direct | yes |" in md
    png = written["png"].read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000


def test_cli_table_and_verdict() -> None:
    result = _sample()
    table = format_table(result).splitlines()
    assert table[0].split() == ["a", "b", "TURN", "connected", "path", "connect", "delivered",
                                "tier", "delivery", "outcome", "expected"]
    offline_row = next(r for r in table if r.startswith("port-restricted"))
    assert offline_row.split() == ["port-restricted", "symmetric", "off", "0/2", "none", "-",
                                   "2/2", "offline", "8040", "ms", "offline", "yes"]
    assert not all_as_expected(result)  # one cell is unexpected
    cells = result["cells"]
    assert isinstance(cells, list)
    good = {**result, "cells": [c for c in cells if c["as_expected"]]}
    assert all_as_expected(good)
    assert not all_as_expected({**good, "presets": {"open": {"ok": False}}})
    line = progress_line(cells[4])
    assert "msg 2/2 offline" in line and line.endswith("ok")
    assert progress_line(cells[3]).endswith("UNEXPECTED")
