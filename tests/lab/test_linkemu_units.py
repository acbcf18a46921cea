"""The link emulator's parts that need no root: profile shares, the per-direction queue, the
kernel rulesets."""

from __future__ import annotations

import math
import os
import random

import pytest

from tierlink.lab.linkemu import Direction, Emulator, is_neighbour_discovery
from tierlink.lab.links import loss_ruleset
from tierlink.lab.profiles import PROFILES, loss_threshold


def test_profiles_are_what_users_name() -> None:
    assert list(PROFILES) == ["lan", "broadband", "mobile", "intercontinental", "satellite",
                              "lossy"]
    assert (PROFILES["mobile"].rtt_ms, PROFILES["mobile"].jitter_ms) == (80.0, 20.0)
    assert PROFILES["satellite"].loss == 0.005 and PROFILES["lossy"].loss == 0.05


@pytest.mark.parametrize("name", list(PROFILES))
def test_each_link_gets_its_share(name: str) -> None:
    """Four link directions make one round trip; two make a one-way trip."""
    p = PROFILES[name]
    assert math.isclose(4 * p.link_delay_ms, p.rtt_ms)
    assert math.isclose(1 - (1 - p.link_loss) ** 2, p.loss)
    assert math.isclose(2 * p.link_jitter_ms, p.jitter_ms)
    # four uniforms of half-width j/2: variance 4 * (j/2)^2 / 3
    assert math.isclose(p.rtt_stdev_ms ** 2, 4 * p.link_jitter_ms ** 2 / 3)


def _pipe_direction(reorder: bool) -> tuple[Direction, int]:
    r, w = os.pipe()
    os.set_blocking(r, False)
    return Direction(-1, w, reorder), r


def _drain(fd: int) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(os.read(fd, 4))
        except BlockingIOError:
            return out


def test_fifo_direction_never_reorders_under_jitter() -> None:
    """Departures drawn with jitter larger than the spacing still leave in arrival order."""
    d, r = _pipe_direction(reorder=False)
    rng = random.Random(7)
    dues = [i * 0.001 + rng.uniform(0, 0.02) for i in range(500)]
    for i, due in enumerate(dues):
        d.push(i.to_bytes(4, "big"), due)
    assert d.flush(now=10.0) == 500
    got = [int.from_bytes(b, "big") for b in _drain(r)]
    assert got == list(range(500)) and d.moved == 500 and d.dropped == 0


def test_heap_direction_reorders_when_asked() -> None:
    d, r = _pipe_direction(reorder=True)
    for i, due in enumerate([0.3, 0.1, 0.2]):
        d.push(i.to_bytes(4, "big"), due)
    assert d.flush(now=0.15) == 1  # only what is due leaves
    assert d.flush(now=1.0) == 2
    assert [int.from_bytes(b, "big") for b in _drain(r)] == [1, 2, 0]


def test_jitter_is_uniform_within_its_bounds() -> None:
    emu = Emulator((-1, -2), delay_ms=20.0, jitter_ms=5.0, reorder=False, seed=1)
    samples = [emu.sample() for _ in range(5000)]
    assert min(samples) >= 0.015 and max(samples) <= 0.025
    assert abs(sum(samples) / len(samples) - 0.020) < 0.0005


def test_neighbour_discovery_passes_undelayed() -> None:
    arp = bytes(12) + b"\x08\x06" + bytes(28)
    ipv4 = bytes(12) + b"\x08\x00" + bytes(28)
    ns = bytearray(bytes(12) + b"\x86\xdd" + bytes(60))
    ns[20], ns[54] = 58, 135
    echo = bytearray(ns)
    echo[54] = 128  # ICMPv6 echo request: delayed like any data
    assert is_neighbour_discovery(arp) and is_neighbour_discovery(bytes(ns))
    assert not is_neighbour_discovery(ipv4) and not is_neighbour_discovery(bytes(echo))


def test_loss_rule_drops_the_share_of_ip_frames_only() -> None:
    rules = loss_ruleset("wan", PROFILES["lossy"].link_loss)
    assert 'hook egress device "wan"' in rules
    assert "meta protocol { ip, ip6 }" in rules
    assert f"mod 1000000 < {loss_threshold(PROFILES['lossy'].link_loss)} drop" in rules
    assert loss_threshold(0.05) == 50_000


def test_world_rulesets_say_what_the_presets_promise() -> None:
    from tierlink.lab import firewalls

    cgn = firewalls.cgn_rules("203.0.113.11", [("100.64.1.2", 20000, 20999),
                                               ("100.64.1.3", 21000, 21999)])
    assert "snat ip to 203.0.113.11:20000-20999" in cgn
    assert "snat ip to 203.0.113.11:21000-21999" in cgn
    assert "dnat ip to udp dport map @owner" in cgn  # hairpin to the mapping's owner
    assert "snat ip to ip saddr . udp sport map @public" in cgn  # ... from the sender's own
    assert 'iifname "wan" ct state new drop' in cgn
    blocked = firewalls.udp_blocked_rules()
    assert 'oifname "wan" tcp dport { 80, 443 } accept' in blocked
    assert blocked.index("tcp dport { 80, 443 } accept") < blocked.index('oifname "wan" drop')
    v6 = firewalls.v6_firewall_rules()
    assert 'iifname "wan" ct state established,related accept' in v6
    hole = firewalls.icmp_black_hole_rules()
    assert "frag-needed drop" in hole and "packet-too-big drop" in hole
