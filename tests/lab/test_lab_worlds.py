"""The real-world presets behave as they promise, proved by probes: a CGN on 100.64.0.0/10
with its own port blocks and hairpinning, a firewall that lets only TCP 80/443 out, UDP
mappings that die after 30 idle seconds, global IPv6 behind stateful firewalls, a path-MTU
black hole; and the lab internet's coturn answers over UDP, TCP and TLS (lab CA)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tierlink.lab import worlds
from tierlink.lab.nat import PRESETS
from tierlink.lab.netns import ns_cmd, run
from tierlink.lab.services import make_lab_ca
from tierlink.lab.topology import Lab

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(dht=True) as shared:
        yield shared


@pytest.mark.parametrize("preset", worlds.WORLD_PRESETS)
def test_world_preset_passes_its_probes(lab: Lab, preset: str) -> None:
    site = lab.add_site(preset)
    try:
        result = lab.verify(site)
    finally:
        lab.remove_site(site)
    summary = json.dumps(result)
    spec = PRESETS[preset]
    assert (result["mapping"], result["filtering"]) == (spec.mapping, spec.filtering), summary
    world = result["world"]
    assert world["ok"], summary
    if preset.startswith("cgnat"):
        lo, hi = worlds.PORT_BLOCKS[0]
        assert lo <= world["mapped_port"] <= hi, summary  # the CGN's own ports, not the host's
    if preset == "cgnat-shared":
        hp = result["hairpin"]
        assert hp["heard"] == [True, True], summary
        assert hp["from"] == list(reversed(hp["mapped"])), summary  # from public mappings
    if preset in worlds.V6_PRESETS:
        assert world["ipv6"] == {"mapping": "no-nat", "filtering": "address-and-port-dependent"}
    if preset == "udp-blocked":
        assert world["reach"] == {"udp": False, "tcp": False, "tls": True,
                                  "dht_proxy_tcp80": True}, summary
    if preset == "short-timeout":
        t = worlds.SHORT_UDP_TIMEOUT
        assert world["idle"] == {f"{t - 10:.1f}": True, f"{t + 8:.1f}": False}, summary
    if preset == "pmtu-blackhole":
        mtu = worlds.BLACK_HOLE_MTU
        assert world["mtu"]["answered"] == {"1200": True, str(mtu): True, str(mtu + 8): False}
        assert world["mtu"]["errors"] == {}  # no ICMP came back: a black hole, not an error


def test_udp_blocked_probe_catches_an_open_firewall(lab: Lab) -> None:
    """Flush the outbound filter: the probe must see UDP getting out and refuse the preset."""
    site = lab.add_site("udp-blocked")
    try:
        router = next(ns for ns in site.namespaces if ns.endswith(f"-r{site.index}"))
        run(ns_cmd(router, "nft", "flush", "chain", "ip", "lab", "c_out"))
        result = lab.probe(site)
    finally:
        lab.remove_site(site)
    assert not result["ok"] and result["world"]["reach"]["udp"], json.dumps(result)


def test_coturn_answers_over_udp_tcp_and_tls(lab: Lab, tmp_path: Path) -> None:
    """From an open host: STUN over UDP, TCP and TLS (verified against the run's CA), and the
    DHT proxy on TCP 80. TLS verified against another CA fails: only the run's CA is trusted.
    """
    other_ca = make_lab_ca(tmp_path, "203.0.113.1")[0]
    site = lab.add_site("open")
    try:
        ns = site.hosts[0][0]
        reach = worlds.services_reach(lab.run, ns)
        untrusted = worlds.world_probe(lab.run, ns, "stun", "--proto", "tls", "--server",
                                       "203.0.113.1:443", "--ca", str(other_ca))
    finally:
        lab.remove_site(site)
    assert reach == {"udp": True, "tcp": True, "tls": True, "dht_proxy_tcp80": True}
    assert not untrusted["ok"] and "CERTIFICATE_VERIFY_FAILED" in untrusted["error"]
