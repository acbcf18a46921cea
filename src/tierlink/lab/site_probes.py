"""Probing a built site of the NAT lab: do its mapping, filtering and hairpinning match its
preset, is its LAN closed to internet neighbours, and (world presets, IPv6) do the preset's
other facts hold? The probes run :mod:`tierlink.lab.probe` in the site's namespaces against
the internet's probe server.
"""

from __future__ import annotations

import json
from typing import Any

from tierlink.lab import nat, worlds
from tierlink.lab.netns import LabError, Run, python_argv, run_module
from tierlink.lab.netns import run as sh
from tierlink.lab.services import PROBE_PORTS
from tierlink.lab.site import Site
from tierlink.lab.worlds import INTERNET_ALT_IP, INTERNET_IP


def _probe_cmd(run: Run, ns: str, *args: str, timeout: float = 15.0) -> list[dict[str, Any]]:
    """Run one probe in ``ns``; its JSON output lines."""
    out = run_module(run, ns, "tierlink.lab.probe", *args, timeout=timeout, what="probe")
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def probe_site(run: Run, internet: str, site: Site, *, dht: bool) -> dict[str, Any]:
    """Measure mapping and filtering (and hairpinning, LAN exposure, the world's or IPv6's
    facts) of a site from the ``internet`` namespace; returns a plain dict with ``ok``.
    ``dht``: the lab runs a DHT node (a world preset checks it can reach it)."""
    ns, addr = site.hosts[0]
    primary = f"{INTERNET_IP}:{PROBE_PORTS[0]}"
    alt = f"{INTERNET_ALT_IP}:{PROBE_PORTS[1]}"
    result = _probe_cmd(run, ns, "nat", "--bind", addr, "--primary", primary, "--alt", alt)[0]
    result["preset"] = site.preset
    if len(site.hosts) > 1:
        result["hairpin"] = (worlds.mutual_hairpin(run, site.hosts, primary)
                             if site.preset == "cgnat-shared"
                             else _probe_hairpin(run, site, primary))
    result["lan_exposed"] = _probe_lan_exposure(run, internet, site, primary)
    spec = nat.PRESETS[site.preset]
    ok = result["mapping"] == spec.mapping and result["filtering"] == spec.filtering
    ok = ok and not result["lan_exposed"]
    if spec.hairpin:
        ok = ok and bool(result["hairpin"]["received"])
    result["expected"] = {"mapping": spec.mapping, "filtering": spec.filtering}
    if spec.hairpin:
        result["expected"]["hairpin"] = True
    if site.preset in worlds.WORLD_PRESETS:
        result["world"] = worlds.check(run, site.preset, site.hosts, site.info, result, dht=dht)
        ok = ok and bool(result["world"]["ok"])
    elif site.info.get("ipv6"):  # --ipv6: global IPv6, firewalled except on open
        result["ipv6"] = worlds.probe_ipv6(run, ns, site.info["ipv6"][0])
        want = nat.EIF if site.preset == "open" else nat.APDF
        ok = ok and result["ipv6"] == {"mapping": nat.NO_NAT, "filtering": want}
    result["ok"] = ok
    return result


def _probe_hairpin(run: Run, site: Site, server: str) -> dict[str, Any]:
    (ns1, a1), (ns2, a2) = site.hosts[:2]
    recv = run.spawn(
        ns1, python_argv("tierlink.lab.probe", "hairpin-recv", "--bind", a1,
                         "--server", server, "--wait", "3")
    )
    try:
        assert recv.stdout is not None
        first = json.loads(recv.stdout.readline() or "{}")
        mapped = first.get("mapped")
        if not mapped:
            raise LabError(f"hairpin probe got no mapping in {ns1}")
        sent = _probe_cmd(run, ns2, "hairpin-send", "--bind", a2, "--server", server,
                          "--to", mapped)[0]
        out, _ = recv.communicate(timeout=10)
    finally:
        if recv.poll() is None:
            recv.kill()
    got = json.loads(out.strip().splitlines()[-1]) if out.strip() else {"received": False}
    return {"receiver_mapped": mapped, "sender_mapped": sent.get("mapped"), **got}


def _probe_lan_exposure(run: Run, internet: str, site: Site, server: str) -> bool | None:
    """Can an internet neighbour that routes the LAN prefix via our WAN reach the host?

    Measured: with only the input-hook drop, yes (the router forwards it); the forward-hook
    drop of new inbound connections is what stops it. None where not applicable (open has
    no LAN; a CGN has no route to the home LAN; mobile-v6 has no 198.18 LAN).
    """
    if site.preset in ("open", "double", "cgnat", "cgnat-shared", "mobile-v6"):
        return None
    ns, addr = site.hosts[0]
    lan = f"198.18.{site.index}.0/24"
    recv = run.spawn(ns, python_argv("tierlink.lab.probe", "hairpin-recv", "--bind",
                                     addr, "--server", server, "--wait", "1.5"))
    sh(["ip", "-n", internet, "route", "add", lan, "via", site.public_ip])
    try:
        assert recv.stdout is not None
        local = json.loads(recv.stdout.readline() or "{}").get("local")
        if not local:
            raise LabError(f"LAN exposure probe did not start in {ns}")
        _probe_cmd(run, internet, "hairpin-send", "--bind", INTERNET_ALT_IP,
                   "--server", f"{INTERNET_IP}:{PROBE_PORTS[1]}", "--to", local)
        out, _ = recv.communicate(timeout=10)
    finally:
        sh(["ip", "-n", internet, "route", "del", lan], check=False)
        if recv.poll() is None:
            recv.kill()
    last = out.strip().splitlines()[-1] if out.strip() else "{}"
    return bool(json.loads(last).get("received"))
