"""IPv6 in the NAT lab, with the real Node (DHT signaling, QUIC channel, a tiered message):
peers with global IPv6 behind stateful firewalls end on a direct IPv6 pair, also with TURN
(over IPv4 and IPv6) on, also where IPv4 has no direct path at all (symmetric CGN), and also
with IPv6 candidates only (STUN and TURN reached over IPv6).

Each cell's figures (selected pair, connect ms) are printed for the report (``-s``)."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator
from typing import Any

import pytest

from tierlink.lab import worlds
from tierlink.lab.runner import node_attempts
from tierlink.lab.services import TURN_PORT
from tierlink.lab.site import Site
from tierlink.lab.topology import INTERNET_IP, Lab

pytestmark = pytest.mark.lab

ATTEMPTS = 3
ICE_TIMEOUT = 8.0
#: How many times a site's preset is probed before the cell is refused.
PROBES = 3
V4_SERVERS = [f"{INTERNET_IP}:{TURN_PORT}"]
V6_SERVERS = [f"[{worlds.INTERNET_IP6}]:{TURN_PORT}"]


def servers(addresses: list[str], turn: bool) -> list[str]:
    """The peers' --stun (and with ``turn`` --turn) options: every server in ``addresses``."""
    args = [arg for a in addresses for arg in ("--stun", a)]
    return args + ([arg for a in addresses for arg in ("--turn", a)] if turn else [])


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(dht=True, ipv6=True) as shared:
        yield shared


def endpoint(site: Site, ipv4: bool) -> tuple[str, ...]:
    """(namespace, addresses...): the site's host with its IPv6 address, IPv4 too if asked."""
    ns, v4 = site.hosts[0]
    (v6,) = site.info["ipv6"]
    return (ns, v4, v6) if ipv4 else (ns, v6)


def run_cell(lab: Lab, a: str, b: str, *, ipv4: bool, server_addrs: list[str],
             turn: bool) -> list[dict[str, Any]]:
    sites = []
    try:
        for preset in (a, b):
            sites.append(lab.add_site(preset))
        for site in sites:
            for _ in range(PROBES):  # probe replies get lost on a loaded machine: ask again
                probe = lab.probe(site)
                if probe["ok"]:
                    break
            assert probe["ok"], json.dumps(probe)
        ends = [endpoint(s, ipv4) for s in sites]
        results = node_attempts(lab, ends[0], ends[1], turn, ATTEMPTS, ICE_TIMEOUT,
                                servers=servers(server_addrs, turn))
    finally:
        for site in sites:
            lab.remove_site(site)
    report = [{"ok": r.get("ok"), "path": r.get("path"), "connect_ms": r.get("connect_ms"),
               "selected_pair": r.get("selected_pair"), "tier": r.get("tier"),
               "received": r.get("received"), "error": r.get("error")} for r in results]
    print(json.dumps({"cell": f"{a}<->{b}", "ipv4": ipv4, "servers": server_addrs,
                      "turn": turn, "attempts": report}))
    return results


def assert_direct_ipv6(results: list[dict[str, Any]]) -> None:
    summary = json.dumps(results, default=str)[:3000]
    assert len(results) == ATTEMPTS, summary
    for r in results:
        assert r["ok"] and r["received"] and r["tier"] == "direct", summary
        assert r["path"] in ("host", "srflx", "prflx"), summary
        pair = r["selected_pair"]
        for side in ("local", "remote"):
            assert pair[side]["type"] != "relay", summary
            assert ipaddress.ip_address(pair[side]["address"]).version == 6, summary


@pytest.mark.parametrize("turn", [False, True], ids=["no-turn", "turn"])
def test_dual_stack_ipv6_sites_connect_directly_over_ipv6(lab: Lab, turn: bool) -> None:
    """Both families gathered (IPv4 behind port-restricted NATs also has a direct path):
    the IPv6 pair wins, relays over IPv4 and IPv6 notwithstanding."""
    assert_direct_ipv6(run_cell(lab, "ipv6", "ipv6", ipv4=True,
                                server_addrs=V4_SERVERS + V6_SERVERS, turn=turn))


def test_ipv6_only_candidates_connect_directly_with_stun_and_turn_over_ipv6(lab: Lab) -> None:
    assert_direct_ipv6(run_cell(lab, "ipv6", "ipv6", ipv4=False, server_addrs=V6_SERVERS,
                                turn=True))


def test_behind_symmetric_cgns_only_ipv6_goes_direct_and_wins_over_the_relay(lab: Lab) -> None:
    """mobile-v6: IPv4 behind a symmetric CGN on both sides (no direct IPv4 path; the IPv4
    relay works), IPv6 behind stateful firewalls: the dial ends direct over IPv6."""
    assert_direct_ipv6(run_cell(lab, "mobile-v6", "mobile-v6", ipv4=True,
                                server_addrs=V4_SERVERS + V6_SERVERS, turn=True))


def test_cgnat_ipv4_with_ipv6_beside_it_ends_direct_over_ipv6(lab: Lab) -> None:
    """A phone behind a symmetric CGN (mobile-v6) and a home behind a port-restricted NAT
    with IPv6 (the lab's --ipv6): IPv4 has no direct path, IPv6 has."""
    assert_direct_ipv6(run_cell(lab, "mobile-v6", "port-restricted", ipv4=True,
                                server_addrs=V4_SERVERS + V6_SERVERS, turn=True))
