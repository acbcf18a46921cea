"""The real-world presets: how their sites are built and the probes that prove each behaves.

Addresses (site index N)::

    cgnat          CGN <p>-cN: wan 203.0.113.(10+N), lan 100.64.N.1/24 (shared address space);
                   home router <p>-rN: wan 100.64.N.2, lan 198.18.N.1/24; host 198.18.N.2;
                   the subscriber's port block 20000-20999
    cgnat-shared   as cgnat, plus a second subscriber <p>-qN (wan 100.64.N.3, ports
                   21000-21999, lan 198.19.N.1/24) with host <p>-gN 198.19.N.2
    mobile-v6      phone <p>-hN straight behind a symmetric CGN: 100.64.N.2, and global
                   2001:db8:N::2/64 routed by the CGN behind its stateful IPv6 firewall
    ipv6           port-restricted router (IPv4) + 2001:db8:N::/64 behind a stateful firewall
    udp-blocked    port-restricted router whose firewall lets only TCP 80/443 out
    short-timeout  port-restricted router with 30 s UDP conntrack timeouts
    pmtu-blackhole port-restricted router whose WAN hop has MTU 1280; ICMP "fragmentation
                   needed" / "packet too big" toward the inside is dropped (TCP MSS
                   clamped, as such routers do)

IPv6 on the internet: 2001:db8::1/64 and 2001:db8::2/64 on the bridge; router N's WAN is
2001:db8::(100+N) and the internet routes 2001:db8:N::/64 to it.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tierlink.lab import firewalls, nat
from tierlink.lab.netns import LabError, Run, check_address, python_argv, run_module
from tierlink.lab.netns import run as sh
from tierlink.lab.services import (
    CA_FILE,
    DHT_PROXY_WEB_PORT,
    PROBE_PORTS,
    TURN_PORT,
    TURN_TLS_PORT,
)

INTERNET_IP = "203.0.113.1"
INTERNET_ALT_IP = "203.0.113.2"
INTERNET_IP6 = "2001:db8::1"
INTERNET_ALT_IP6 = "2001:db8::2"
SHORT_UDP_TIMEOUT = 30
#: The small hop's MTU: IPv6's minimum, as on many tunnels; QUIC's 1452-byte probes vanish.
BLACK_HOLE_MTU = 1280
#: Port block of the CGN's subscriber k (0, 1).
PORT_BLOCKS = ((20000, 20999), (21000, 21999))

WORLD_PRESETS = ("cgnat", "cgnat-shared", "mobile-v6", "ipv6", "udp-blocked", "short-timeout",
                 "pmtu-blackhole")
#: Presets whose hosts also have a global IPv6 address.
V6_PRESETS = ("ipv6", "mobile-v6")


class Builder(Protocol):
    """What building a site needs from the lab (:class:`tierlink.lab.topology.Lab`)."""

    run: Run
    internet: str

    def router(self, role: str) -> str: ...

    def attach(self, ns: str, dev: str, index: int, tag: str) -> None: ...


@dataclass
class Built:
    """A built site: peers as (namespace, IPv4), the public IPv4, and preset facts."""

    hosts: list[tuple[str, str]]
    public_ip: str
    info: dict[str, Any] = field(default_factory=dict)


def _wan(b: Builder, ns: str, n: int, tag: str) -> str:
    wan_ip = f"203.0.113.{10 + n}"
    b.attach(ns, "wan", n, tag)
    b.run.address(ns, "wan", f"{wan_ip}/24")
    b.run.route_default(ns, INTERNET_IP)
    return wan_ip


def _host(b: Builder, router: str, role: str, lan_dev: str, net: str) -> tuple[str, str]:
    """A host namespace on ``router``'s ``lan_dev`` in ``net`` (``a.b.c``): router .1, host .2."""
    h = b.run.add_namespace(role)
    b.run.veth(h, "eth0", router, lan_dev)
    b.run.address(router, lan_dev, f"{net}.1/24")
    b.run.address(h, "eth0", f"{net}.2/24")
    b.run.route_default(h, f"{net}.1")
    return h, f"{net}.2"


def add_ipv6(b: Builder, router: str, host: str, n: int, lan_dev: str) -> str:
    """Global IPv6 for ``host`` behind ``router``'s stateful firewall; returns its address."""
    r = b.run
    wan6, host6 = f"2001:db8::{100 + n}", f"2001:db8:{n}::2"
    r.sysctl(router, "net.ipv6.conf.all.forwarding", "1")
    for ns, dev, addr in ((router, "wan", f"{wan6}/64"), (router, lan_dev, f"2001:db8:{n}::1/64"),
                          (host, "eth0", f"{host6}/64")):
        sh(["ip", "-n", ns, "-6", "addr", "add", check_address(addr), "dev", dev, "nodad"])
    sh(["ip", "-n", router, "-6", "route", "add", "default", "via", INTERNET_IP6])
    sh(["ip", "-n", host, "-6", "route", "add", "default", "via", f"2001:db8:{n}::1"])
    sh(["ip", "-n", b.internet, "-6", "route", "replace", f"2001:db8:{n}::/64", "via", wan6])
    r.nft(router, firewalls.v6_firewall_rules())
    return host6


def build(b: Builder, preset: str, n: int) -> Built:
    """Build one real-world preset's site with index ``n``."""
    r = b.run
    if preset in ("cgnat", "cgnat-shared"):
        cgn = b.router(f"c{n}")
        public = _wan(b, cgn, n, "c")
        sh(["ip", "-n", cgn, "link", "add", "lan", "type", "bridge"])
        sh(["ip", "-n", cgn, "link", "set", "lan", "up"])
        r.address(cgn, "lan", f"100.64.{n}.1/24")
        subs = [("r", "h", f"198.18.{n}")] + ([("q", "g", f"198.19.{n}")]
                                             if preset == "cgnat-shared" else [])
        hosts, inside = [], []
        for k, (router_tag, host_tag, net) in enumerate(subs):
            home = b.router(f"{router_tag}{n}")
            r.veth(home, "wan", cgn, f"s{k}")
            sh(["ip", "-n", cgn, "link", "set", f"s{k}", "master", "lan"])
            addr = f"100.64.{n}.{2 + k}"
            r.address(home, "wan", f"{addr}/24")
            r.route_default(home, f"100.64.{n}.1")
            hosts.append(_host(b, home, f"{host_tag}{n}", "lan", net))
            r.nft(home, nat.port_restricted_rules())
            inside.append((addr, *PORT_BLOCKS[k]))
        r.nft(cgn, firewalls.cgn_rules(public, inside))
        return Built(hosts, public, {"cgn_inside": [a for a, _, _ in inside], "public_ip": public,
                                     "port_blocks": [list(p) for p in PORT_BLOCKS[:len(subs)]]})
    if preset == "mobile-v6":
        cgn = b.router(f"c{n}")
        public = _wan(b, cgn, n, "c")
        h = r.add_namespace(f"h{n}")
        r.veth(h, "eth0", cgn, "lan")
        r.address(cgn, "lan", f"100.64.{n}.1/24")
        r.address(h, "eth0", f"100.64.{n}.2/24")
        r.route_default(h, f"100.64.{n}.1")
        r.nft(cgn, nat.port_restricted_rules(fully_random=True))
        host6 = add_ipv6(b, cgn, h, n, "lan")
        return Built([(h, f"100.64.{n}.2")], public, {"ipv6": [host6]})

    rt = b.router(f"r{n}")
    public = _wan(b, rt, n, "r")
    host = _host(b, rt, f"h{n}", "lan", f"198.18.{n}")
    info: dict[str, Any] = {}
    if preset == "ipv6":
        r.nft(rt, nat.port_restricted_rules())
        info["ipv6"] = [add_ipv6(b, rt, host[0], n, "lan")]
    elif preset == "udp-blocked":
        r.nft(rt, firewalls.udp_blocked_rules())
    elif preset == "short-timeout":
        r.nft(rt, nat.port_restricted_rules())
        for key in ("nf_conntrack_udp_timeout", "nf_conntrack_udp_timeout_stream"):
            r.sysctl(rt, f"net.netfilter.{key}", str(SHORT_UDP_TIMEOUT))
        info["udp_timeout"] = SHORT_UDP_TIMEOUT
    elif preset == "pmtu-blackhole":
        r.nft(rt, nat.port_restricted_rules())
        r.nft(rt, firewalls.icmp_black_hole_rules())
        sh(["ip", "-n", rt, "link", "set", "wan", "mtu", str(BLACK_HOLE_MTU)])
        info["mtu"] = BLACK_HOLE_MTU
    else:
        raise LabError(f"{preset!r} is not a real-world preset")
    return Built([host], public, info)


# -- probes ---------------------------------------------------------------------------------
def world_probe(run: Run, ns: str, *args: str, timeout: float = 60.0) -> dict[str, Any]:
    out = run_module(run, ns, "tierlink.lab.worldprobe", *args, timeout=timeout,
                     what="world probe")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def services_reach(run: Run, ns: str) -> dict[str, bool]:
    """Which lab internet services a host reaches: STUN over UDP/TCP/TLS, the DHT proxy on
    TCP 80."""
    ca = str(Path(run.workdir) / CA_FILE)
    out = {proto: bool(world_probe(run, ns, "stun", "--proto", proto, "--server",
                              f"{INTERNET_IP}:{TURN_TLS_PORT if proto == 'tls' else TURN_PORT}",
                              "--ca", ca)["ok"])
           for proto in ("udp", "tcp", "tls")}
    web = world_probe(run, ns, "http", "--to", f"{INTERNET_IP}:{DHT_PROXY_WEB_PORT}", "--path",
                 "/key/0000000000000000000000000000000000000000")
    out["dht_proxy_tcp80"] = bool(web["ok"])
    return out


def check(run: Run, preset: str, hosts: list[tuple[str, str]], info: dict[str, Any],
          probe: dict[str, Any], *, dht: bool = True) -> dict[str, Any]:
    """The preset-specific facts of a site beyond mapping and filtering, each with whether it
    holds (``ok``): ``probe`` is the generic NAT probe's result for the first host; ``dht``:
    the lab runs its DHT node (so the proxy must answer on TCP 80)."""
    ns, addr = hosts[0]
    facts: dict[str, Any] = {}
    oks: list[bool] = []
    if preset in ("cgnat", "cgnat-shared"):
        lo, hi = PORT_BLOCKS[0]
        mapped = str(probe["mapped"][next(iter(probe["mapped"]))] or ":0")
        mapped_ip, mapped_port = mapped.rsplit(":", 1)[0], int(mapped.rsplit(":", 1)[1])
        local_port = int(str(probe["local"]).rsplit(":", 1)[1])
        facts["port_block"] = [lo, hi]
        facts["mapped_port"] = mapped_port
        # the CGN's own allocation (a port-preserving NAT would show the host's port)
        oks.append(lo <= mapped_port <= hi and mapped_port != local_port)
        oks.append(mapped_ip == info["public_ip"])
    if preset in V6_PRESETS:
        v6 = info["ipv6"][0]
        facts["ipv6"] = probe_ipv6(run, ns, v6)
        oks.append(facts["ipv6"] == {"mapping": nat.NO_NAT, "filtering": nat.APDF})
    if preset == "udp-blocked":
        reach = services_reach(run, ns)
        facts["reach"] = reach
        oks.append(reach == {"udp": False, "tcp": False, "tls": True, "dht_proxy_tcp80": dht})
    if preset == "short-timeout":
        t = int(info["udp_timeout"])
        idle = world_probe(run, ns, "idle", "--bind", addr, "--server",
                      f"{INTERNET_IP}:{PROBE_PORTS[0]}", "--delays", f"{t - 10},{t + 8}",
                      timeout=t + 40)
        facts["idle"] = idle["arrived"]
        oks.append(idle["arrived"] == {str(float(t - 10)): True, str(float(t + 8)): False})
    if preset == "pmtu-blackhole":
        mtu = int(info["mtu"])
        sizes = [1200, mtu, mtu + 8]
        res = world_probe(run, ns, "mtu", "--bind", addr, "--server",
                     f"{INTERNET_IP}:{PROBE_PORTS[0]}", "--sizes", ",".join(map(str, sizes)))
        facts["mtu"] = res
        answered = res["answered"]
        oks.append(answered[str(1200)] and answered[str(mtu)] and not answered[str(mtu + 8)]
                   and not res["errors"])
    facts["ok"] = all(oks)
    return facts


def probe_ipv6(run: Run, ns: str, address: str) -> dict[str, str]:
    """Mapping and filtering seen from a host's global IPv6 address (no NAT expected; a
    stateful firewall filters by address and port)."""
    proc = run.spawn(ns, python_argv("tierlink.lab.probe", "nat", "--bind", address,
                                     "--primary", f"[{INTERNET_IP6}]:{PROBE_PORTS[0]}",
                                     "--alt", f"[{INTERNET_ALT_IP6}]:{PROBE_PORTS[1]}"))
    out, err = proc.communicate(timeout=30)
    if proc.returncode != 0:
        raise LabError(f"IPv6 probe in {ns} failed: {err.strip()[-300:]}")
    result = json.loads(out.strip().splitlines()[-1])
    return {"mapping": str(result["mapping"]), "filtering": str(result["filtering"])}


def mutual_hairpin(run: Run, hosts: list[tuple[str, str]], server: str) -> dict[str, Any]:
    """Two hosts behind one CGN send to each other's public mapping at once; did each hear
    the other (through the CGN's hairpin, from the other's public mapping)?"""
    procs = [run.spawn(ns, python_argv("tierlink.lab.probe", "hairpin-both", "--bind", addr,
                                       "--server", server, "--wait", "3"),
                       stdin=subprocess.PIPE) for ns, addr in hosts[:2]]
    try:
        firsts = []
        for proc in procs:
            assert proc.stdout is not None
            firsts.append(json.loads(proc.stdout.readline() or "{}"))
        for proc, other in zip(procs, reversed(firsts), strict=True):
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(other) + "\n")
            proc.stdin.flush()
        lasts = []
        for proc in procs:
            out, _ = proc.communicate(timeout=15)
            lasts.append(json.loads(out.strip().splitlines()[-1]) if out.strip() else {})
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    heard = [bool(x.get("received")) for x in lasts]
    return {"mapped": [f.get("mapped") for f in firsts],
            "from": [x.get("from") for x in lasts], "received": all(heard), "heard": heard}
