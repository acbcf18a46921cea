"""The NAT lab topology: one "internet" namespace with services, and NAT'ed sites of peers.

Addresses (site index N, 1..89)::

    internet  <p>-i     br0 203.0.113.1/24 (coturn, DHT proxy, probes) + 203.0.113.2/24 (probes)
    router    <p>-rN    wan 203.0.113.(10+N)/24, lan 198.18.N.1/24
    host      <p>-hN    eth0 198.18.N.2/24 (hairpin adds <p>-gN at 198.18.N.3)
    open      <p>-hN    eth0 203.0.113.(100+N)/24 straight on the internet bridge, no router
    double    <p>-cN    CGN: wan 203.0.113.(10+N), lan 198.19.N.1/24; home router wan 198.19.N.2

Use :class:`Lab` as a context manager; :meth:`Lab.add_site` builds one preset's site and
:meth:`Lab.verify` probes it and raises :class:`PresetMismatch` if it does not behave as its
preset promises.
"""

from __future__ import annotations

import subprocess
from typing import Any

from tierlink.lab import nat, worlds
from tierlink.lab.links import EmulatedLink, emulated_link, unshape
from tierlink.lab.netns import LabError, Run
from tierlink.lab.netns import run as sh
from tierlink.lab.profiles import LinkProfile
from tierlink.lab.services import (
    DHT_PROXY_WEB_PORT,
    TURN_PORT,
    start_coturn,
    start_dhtnode,
    start_probe_server,
)
from tierlink.lab.site import Site
from tierlink.lab.site_probes import probe_site

INTERNET_IP = worlds.INTERNET_IP
INTERNET_ALT_IP = worlds.INTERNET_ALT_IP
MAX_SITES = 89


def _kill(proc: subprocess.Popen[str] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait(timeout=5)


class PresetMismatch(LabError):
    """A preset's probe result disagrees with the preset's definition: do not trust it."""

    def __init__(self, preset: str, result: dict[str, Any]) -> None:
        super().__init__(f"preset {preset!r} probe disagrees with its definition: {result}")
        self.preset = preset
        self.result = result


class Lab:
    """Internet namespace + coturn + DHT node + probe server, and NAT sites on demand."""

    def __init__(
        self, *, turn: bool = True, dht: bool = True, profile: LinkProfile | None = None,
        ipv6: bool = False,
    ) -> None:
        self.run = Run()
        self.internet = ""
        self.profile = profile
        #: Give every site that can have it global IPv6 behind a stateful firewall.
        self.ipv6 = ipv6
        self._want_turn = turn
        self._want_dht = dht
        self._used: set[int] = set()
        self._ports: list[str] = []  # bridge ports of the site being built
        self._links: list[EmulatedLink] = []  # emulated links of the site being built
        self._site_profile: LinkProfile | None = None
        #: Statistics of every emulated link removed so far (see :meth:`emulator_peak`).
        self.link_stats: list[dict[str, Any]] = []
        self._live_links: list[EmulatedLink] = []
        #: The internet's coturn and DHT node processes (restarted by fault runs).
        self.turn_process: subprocess.Popen[str] | None = None
        self.dht_process: subprocess.Popen[str] | None = None

    @property
    def prefix(self) -> str:
        return self.run.prefix

    @property
    def stun_server(self) -> tuple[str, int]:
        return (INTERNET_IP, TURN_PORT)

    @property
    def dht_proxy(self) -> str:
        """The DHT proxy as peers use it: TCP 80 (redirected to the proxy's own port), which
        also networks that only let web traffic out can reach."""
        return f"http://{INTERNET_IP}:{DHT_PROXY_WEB_PORT}"

    def __enter__(self) -> Lab:
        self.run.__enter__()
        try:
            self._build_internet()
        except BaseException:
            self.run.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every process and remove every namespace of this lab (idempotent)."""
        self.run.close()

    def _build_internet(self) -> None:
        r = self.run
        self.internet = r.add_namespace("i")
        ns = self.internet
        r.nft(ns, "")  # nft works in the namespace
        sh(["ip", "-n", ns, "link", "add", "br0", "type", "bridge"])
        sh(["ip", "-n", ns, "link", "set", "br0", "up"])
        r.address(ns, "br0", f"{INTERNET_IP}/24")
        r.address(ns, "br0", f"{INTERNET_ALT_IP}/24")
        r.sysctl(ns, "net.ipv6.conf.all.forwarding", "1")  # sites' IPv6 prefixes meet here
        for ip6 in (worlds.INTERNET_IP6, worlds.INTERNET_ALT_IP6):
            sh(["ip", "-n", ns, "-6", "addr", "add", f"{ip6}/64", "dev", "br0", "nodad"])
        if self._want_turn:  # STUN and TURN over IPv6 too
            self.turn_process = start_coturn(r, ns, INTERNET_IP, worlds.INTERNET_IP6)
        if self._want_dht:
            self.dht_process = start_dhtnode(r, ns, INTERNET_IP)
        start_probe_server(r, ns, (INTERNET_IP, INTERNET_ALT_IP, worlds.INTERNET_IP6,
                                   worlds.INTERNET_ALT_IP6))

    def kill_turn(self) -> None:
        """SIGKILL the lab's coturn (its allocations die with it)."""
        _kill(self.turn_process)

    def start_turn(self) -> None:
        """Start coturn again (after :meth:`kill_turn`), with the same configuration."""
        self.turn_process = start_coturn(self.run, self.internet, INTERNET_IP, worlds.INTERNET_IP6)

    def restart_dht(self) -> None:
        """SIGKILL the lab's DHT node and start a new one with empty storage."""
        _kill(self.dht_process)
        self.dht_process = start_dhtnode(self.run, self.internet, INTERNET_IP, web_door=False)

    # -- sites ----------------------------------------------------------------------------
    def attach(self, ns: str, dev: str, index: int, tag: str) -> None:
        """Plug ``dev`` of ``ns`` into the internet bridge (port name ``<tag><index>``):
        a veth, or an emulated link when the site has a profile."""
        port = f"{tag}{index}"
        self._ports.append(port)
        if self._site_profile is None:
            self.run.veth(ns, dev, self.internet, port)
        else:
            self._links.append(emulated_link(self.run, (ns, dev), (self.internet, port),
                                             self._site_profile, port))
        sh(["ip", "-n", self.internet, "link", "set", port, "master", "br0"])

    def router(self, role: str) -> str:
        r = self.run
        ns = r.add_namespace(role)
        r.sysctl(ns, "net.ipv4.ip_forward", "1")
        r.sysctl(ns, "net.ipv4.conf.all.send_redirects", "0")
        r.sysctl(ns, "net.ipv4.conf.default.send_redirects", "0")
        return ns

    def add_site(self, preset: str, profile: LinkProfile | str | None = "lab") -> Site:
        """Build the namespaces and NAT of one preset; returns the site (not yet verified).

        ``profile``: the WAN link's profile (default: the lab's; None: a plain veth).
        """
        self._site_profile = self.profile if isinstance(profile, str) else profile
        if preset not in nat.PRESETS:
            raise LabError(f"unknown preset {preset!r}; known: {', '.join(nat.PRESETS)}")
        free = [i for i in range(1, MAX_SITES + 1) if i not in self._used]
        if not free:
            raise LabError("too many sites in one lab")
        n = free[0]
        self._used.add(n)
        before = len(self.run.namespaces)
        self._ports = []
        self._links = []
        try:
            site = self._build_site(preset, n)
        except BaseException:
            self._drop_ports(self._ports)
            self.run.remove_namespaces(self.run.namespaces[before:])
            self._used.discard(n)
            raise
        site.namespaces = self.run.namespaces[before:]
        site.ports = self._ports
        site.profile = self._site_profile
        site.links = self._links
        self._live_links += self._links
        return site

    def _drop_ports(self, ports: list[str]) -> None:
        """Delete bridge ports now: a deleted namespace frees its veths only asynchronously,
        so the next site could otherwise find its port name still taken."""
        for port in ports:
            sh(["ip", "-n", self.internet, "link", "del", port], check=False)
            unshape(self.internet, port)

    def emulator_peak(self) -> dict[str, Any]:
        """Busiest second of any emulated link so far (live ones included) and the totals."""
        stats = list(self.link_stats)
        stats += [link.stats() for link in self._live_links]
        return {"links": len(stats),
                "peak_pps": max((int(s.get("peak_pps", 0)) for s in stats), default=0),
                "moved": sum(sum(s.get("moved", [])) for s in stats),
                "dropped": sum(sum(s.get("dropped", [])) for s in stats)}

    def _build_site(self, preset: str, n: int) -> Site:
        r = self.run
        lan_host = f"198.18.{n}.2"
        if preset in worlds.WORLD_PRESETS:
            built = worlds.build(self, preset, n)
            return Site(preset, n, built.hosts, public_ip=built.public_ip, info=built.info)
        if preset == "open":
            h = r.add_namespace(f"h{n}")
            public = f"203.0.113.{100 + n}"
            self.attach(h, "eth0", n, "o")
            r.address(h, "eth0", f"{public}/24")
            r.route_default(h, INTERNET_IP)
            info: dict[str, Any] = {}
            if self.ipv6:
                v6 = f"2001:db8::{200 + n}"
                sh(["ip", "-n", h, "-6", "addr", "add", f"{v6}/64", "dev", "eth0", "nodad"])
                info["ipv6"] = [v6]
            return Site(preset, n, [(h, public)], public_ip=public, info=info)

        wan_ip = f"203.0.113.{10 + n}"
        if preset == "double":
            cgn = self.router(f"c{n}")
            self.attach(cgn, "wan", n, "c")
            r.address(cgn, "wan", f"{wan_ip}/24")
            r.route_default(cgn, INTERNET_IP)
            rt = self.router(f"r{n}")
            r.veth(cgn, "lan", rt, "wan")
            r.address(cgn, "lan", f"198.19.{n}.1/24")
            r.address(rt, "wan", f"198.19.{n}.2/24")
            r.route_default(rt, f"198.19.{n}.1")
            r.nft(cgn, nat.port_restricted_rules())
            r.nft(rt, nat.port_restricted_rules())
        else:
            rt = self.router(f"r{n}")
            self.attach(rt, "wan", n, "r")
            r.address(rt, "wan", f"{wan_ip}/24")
            r.route_default(rt, INTERNET_IP)

        hosts: list[tuple[str, str]] = []
        if preset == "hairpin":
            sh(["ip", "-n", rt, "link", "add", "lan", "type", "bridge"])
            sh(["ip", "-n", rt, "link", "set", "lan", "up"])
            for role, addr, port in ((f"h{n}", lan_host, "l1"), (f"g{n}", f"198.18.{n}.3", "l2")):
                h = r.add_namespace(role)
                r.veth(h, "eth0", rt, port)
                sh(["ip", "-n", rt, "link", "set", port, "master", "lan"])
                hosts.append((h, addr))
        else:
            h = r.add_namespace(f"h{n}")
            r.veth(h, "eth0", rt, "lan")
            hosts.append((h, lan_host))
        r.address(rt, "lan", f"198.18.{n}.1/24")
        for h, addr in hosts:
            r.address(h, "eth0", f"{addr}/24")
            r.route_default(h, f"198.18.{n}.1")

        if preset == "hairpin":
            rules = nat.hairpin_rules(wan_ip, f"198.18.{n}.0/24", [a for _, a in hosts])
            r.nft(rt, rules)
        elif preset != "double":
            r.nft(rt, nat.rules_for(preset, host=lan_host))
        info = {}
        if self.ipv6 and preset not in ("double", "hairpin"):
            info["ipv6"] = [worlds.add_ipv6(self, rt, hosts[0][0], n, "lan")]
        return Site(preset, n, hosts, public_ip=wan_ip, info=info)

    def remove_site(self, site: Site) -> None:
        """Remove a site's namespaces (and any process still running in them)."""
        self._drop_ports(site.ports)
        self.run.remove_namespaces(site.namespaces)  # emulators write their last stats
        # the next site may reuse its addresses behind new devices (new MAC addresses)
        sh(["ip", "-n", self.internet, "neigh", "flush", "dev", "br0"], check=False)
        self.link_stats += [link.stats() for link in site.links]
        self._live_links = [x for x in self._live_links if x not in site.links]
        self._used.discard(site.index)

    def probe(self, site: Site) -> dict[str, Any]:
        """Measure mapping and filtering (and hairpinning) of a site; returns a plain dict
        (see :func:`~tierlink.lab.site_probes.probe_site`)."""
        return probe_site(self.run, self.internet, site, dht=self._want_dht)

    def verify(self, site: Site) -> dict[str, Any]:
        """Probe a site; raise :class:`PresetMismatch` unless it behaves as its preset."""
        result = self.probe(site)
        if not result["ok"]:
            raise PresetMismatch(site.preset, result)
        return result
