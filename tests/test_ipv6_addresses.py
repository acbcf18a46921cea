"""Which addresses host candidates are gathered on, and how candidates rank, without
namespaces: a fake ``/proc/net/if_inet6`` table, RFC 6724 precedence, RFC 8445 priorities,
the 16-candidate budget of a session description, and ``--host-address`` / NodeConfig
accepting IPv6 literals (and refusing addresses no peer could use)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import pytest
from aioice.candidate import candidate_priority

from tierlink.cli.argtypes import host_address
from tierlink.identity import Identity
from tierlink.node import NodeConfig
from tierlink.transport.candidate_budget import MAX_CANDIDATES, select_candidates
from tierlink.transport.host_addresses import (
    check_host_address,
    choose_host_addresses,
    local_preference,
    parse_if_inet6,
    precedence,
    usable_ipv6,
)

# address, ifindex, prefix length, scope, flags, interface (as the kernel prints them)
IF_INET6 = """\
20010db800010000021122fffe334455 02 40 00 00     eth0
20010db800010000c5a1d2e3f4a5b6c7 02 40 00 01     eth0
20010db8000100009999888877776666 02 40 00 21     eth0
fe80000000000000021122fffe334455 02 40 20 80     eth0
00000000000000000000000000000001 01 80 10 80       lo
20010db8000200000000000000000002 03 40 00 80    wlan0
20010db8000300000000000000000005 03 40 00 40    wlan0
20010db8000400000000000000000007 03 40 00 88    wlan0
fd00000000000000000000000000000a 03 40 00 80    wlan0
ff020000000000000000000000000001 03 80 00 80    wlan0
00000000000000000000ffffc0000201 03 60 00 80    wlan0
20010db8000500000000000000000009 04 40 00 80   docker0
20010db8000500000000000000000010 05 40 00 01     tun0
not a line
20010db80001zz000000000000000001 02 40 00 80     eth0
"""
STABLE = "2001:db8:1:0:211:22ff:fe33:4455"  # EUI-64 from the MAC: the same on every network
TEMPORARY = "2001:db8:1:0:c5a1:d2e3:f4a5:b6c7"
DEPRECATED_TEMPORARY = "2001:db8:1:0:9999:8888:7777:6666"


def test_if_inet6_lines_are_parsed_and_malformed_ones_skipped() -> None:
    entries = parse_if_inet6(IF_INET6)
    assert len(entries) == 13
    first = entries[0]
    assert (str(first.address), first.interface, first.prefix_length, first.flags) == (
        STABLE, "eth0", 64, 0)
    assert entries[1].temporary and not entries[0].temporary


def test_a_temporary_address_replaces_the_stable_one_of_its_interface_and_prefix() -> None:
    """RFC 8445 5.1.1.1: with a temporary address gathered, the trackable stable address of
    the same interface and prefix MUST NOT be; deprecated, tentative, DAD-failed,
    link-local, loopback, multicast and IPv4-mapped addresses never are."""
    chosen = usable_ipv6(parse_if_inet6(IF_INET6))
    assert STABLE not in chosen  # the attacker's prize: a device identifier
    assert DEPRECATED_TEMPORARY not in chosen
    assert chosen == [
        TEMPORARY,
        "2001:db8:5::10",       # temporary on tun0
        "2001:db8:2::2",        # stable, but its prefix has no temporary address
        "fd00::a",              # unique local: kept (it ranks low)
        "2001:db8:5::9",        # docker0's prefix: the temporary one is on tun0
    ]


def test_a_stable_address_stays_when_its_prefix_has_no_live_temporary_one() -> None:
    table = "\n".join(line for line in IF_INET6.splitlines() if "c5a1d2e3" not in line)
    chosen = usable_ipv6(parse_if_inet6(table))
    assert STABLE in chosen and DEPRECATED_TEMPORARY not in chosen


def test_host_addresses_never_include_loopback_or_link_local(tmp_path: Path) -> None:
    table = tmp_path / "if_inet6"
    table.write_text(IF_INET6)
    listed = ["192.0.2.7", "127.0.0.1", "127.0.1.1", "169.254.3.4", "::1", "fe80::1%eth0",
              STABLE, "192.0.2.7"]
    assert choose_host_addresses(listed, True, table) == [
        "192.0.2.7", *usable_ipv6(parse_if_inet6(IF_INET6))]
    assert choose_host_addresses(listed, False, table) == ["192.0.2.7"]
    # no /proc/net/if_inet6 (not Linux): the interface listing, filtered, no flags known
    assert choose_host_addresses(listed, True, tmp_path / "missing") == ["192.0.2.7", STABLE]


def test_rfc_6724_precedence() -> None:
    assert precedence("::1") == 50
    assert precedence("2001:db8::1") == 40
    assert precedence("192.0.2.1") == 35
    assert precedence("2002:c000:201::1") == 30
    assert precedence("2001:0:4136:e378::1") == 5  # Teredo
    assert precedence("fd00::1") == 3


def pair_priority(controlling: int, controlled: int) -> int:
    """RFC 8445 section 6.1.2.3."""
    g, d = controlling, controlled
    return (1 << 32) * min(g, d) + 2 * max(g, d) + (1 if g > d else 0)


def test_ipv6_ranks_above_ipv4_and_any_direct_pair_above_every_relay() -> None:
    hosts = ["192.0.2.7", "198.51.100.7", "2001:db8:1::7", "fd00::7"]
    pref = {a: local_preference(a, hosts) for a in hosts}
    assert pref["2001:db8:1::7"] > pref["192.0.2.7"] > pref["198.51.100.7"] > pref["fd00::7"]
    assert len(set(pref.values())) == len(hosts)  # no two host candidates tie
    host6 = candidate_priority(1, "host", pref["2001:db8:1::7"])
    host4 = candidate_priority(1, "host", pref["192.0.2.7"])
    srflx6 = candidate_priority(1, "srflx", pref["2001:db8:1::7"])
    srflx4 = candidate_priority(1, "srflx", pref["192.0.2.7"])
    relay4 = candidate_priority(1, "relay", 65535)  # the best relay: UDP
    assert host6 > host4 > srflx6 > srflx4 > relay4
    # the worst direct pair (srflx on both sides) outranks the best relayed pair
    assert pair_priority(srflx6, srflx6) > pair_priority(relay4, host6)
    assert pair_priority(host6, host6) > pair_priority(host4, host4)


@dataclass
class Cand:
    type: str
    host: str
    priority: int


def test_over_sixteen_candidates_keep_one_of_each_kind_then_the_best() -> None:
    """A dual-stack host with many addresses: the offer still carries its srflx and a relay
    of each family (the fallback through CGNAT), not 16 host candidates."""
    cands = [Cand("host", f"192.0.2.{i}", 2_000_000 - i) for i in range(12)]
    cands += [Cand("host", f"2001:db8::{i}", 3_000_000 - i) for i in range(6)]
    cands += [Cand("srflx", "203.0.113.5", 1_000_000), Cand("srflx", "2001:db8:9::5", 1_500_000)]
    cands += [Cand("relay", "203.0.113.1", 1000), Cand("relay", "203.0.113.1", 900),
              Cand("relay", "2001:db8::1", 800)]
    kept = select_candidates(cands)
    assert len(kept) == MAX_CANDIDATES == 16
    kinds = {(c.type, ":" in c.host) for c in kept}
    assert kinds == {(t, v6) for t in ("host", "srflx", "relay") for v6 in (False, True)}
    assert [c for c in kept if c.type == "host" and ":" in c.host] == cands[12:18]
    assert [c for c in kept if c.type == "relay"] == [cands[20], cands[22]]
    assert kept == [c for c in cands if c in kept]  # gathering order kept
    assert select_candidates(cands[:16]) == cands[:16]


def test_host_address_accepts_ipv6_literals_normalised() -> None:
    assert check_host_address("2001:DB8:0::0001") == "2001:db8::1"
    assert check_host_address("[2001:db8::1]") == "2001:db8::1"
    assert check_host_address("::1") == "::1"
    assert check_host_address(" 192.0.2.1 ") == "192.0.2.1"
    assert host_address("[2001:db8::7]") == "2001:db8::7"


@pytest.mark.parametrize("bad", ["fe80::1", "fe80::1%eth0", "169.254.0.9", "ff02::1", "::",
                                 "0.0.0.0", "::ffff:192.0.2.1", "2001:db8::1:80", "host",
                                 "[::1]:80", "224.0.0.1"])
def test_host_address_refuses_what_no_peer_can_use(bad: str) -> None:
    if bad == "2001:db8::1:80":  # a valid address (the ':80' is part of it): accepted as such
        assert check_host_address(bad) == bad
        return
    with pytest.raises(ValueError, match=r"address|link-local|mapped"):
        check_host_address(bad)
    with pytest.raises(argparse.ArgumentTypeError):
        host_address(bad)


def test_node_config_normalises_and_checks_host_addresses() -> None:
    identity = Identity.generate()
    config = NodeConfig(identity=identity, host_addresses=["2001:DB8::5", "[::1]", "127.0.0.1"])
    assert config.host_addresses == ["2001:db8::5", "::1", "127.0.0.1"]
    assert config.ice_settings().host_addresses == ["2001:db8::5", "::1", "127.0.0.1"]
    assert config.ice_settings().use_ipv6
    with pytest.raises(ValueError, match="link-local"):
        NodeConfig(identity=identity, host_addresses=["fe80::1"])
