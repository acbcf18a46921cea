"""The connectivity matrix: for each pair of presets (and TURN on/off), build both NAT sites,
verify their presets with probes, run peer processes in the LAN namespaces, collect results.

Two peer drivers share this runner:

* ``"ice"``: :mod:`tierlink.lab.icepeer`, raw
  :class:`tierlink.transport.aioice_adapter.IceConnection`s whose
  offers the runner swaps over the processes' stdin/stdout (proves the lab without Node);
* ``"node"``: :mod:`tierlink.lab.peer`, the full :class:`tierlink.node.Node` (DHT signaling);
  the callee starts first and prints its fingerprint, which the runner hands to the dialer.
  After each connect attempt the dialer also sends one tiered message (``node.send``) and
  waits for its acknowledgement: the cell records the delivering tier (direct, relay, or
  offline through the DHT where no path exists) and whether the callee took the message.
"""

from __future__ import annotations

import contextlib
import json
import queue
import secrets
import statistics
import subprocess
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import IO, Any

from tierlink.lab import nat
from tierlink.lab.expectations import SHARED_SITE, default_pairs, expected_cell
from tierlink.lab.netns import LabError, python_argv
from tierlink.lab.profiles import PROFILES, LinkProfile
from tierlink.lab.services import CA_FILE, TURN_PASSWORD, TURN_PORT, TURN_TLS_PORT, TURN_USER
from tierlink.lab.site import Site
from tierlink.lab.topology import INTERNET_IP, Lab, PresetMismatch
from tierlink.transport.ice import path_of

#: How long the Node driver waits for a test message's acknowledgement.
MESSAGE_TIMEOUT = 30.0
ProgressCallback = Callable[[dict[str, Any]], None]
Endpoint = tuple[str, ...]  # (namespace, IPv4 address, further addresses such as IPv6)


def majority(counts: Counter[str]) -> str:
    """The most common value (ties: the first seen); ``none`` when empty."""
    return counts.most_common(1)[0][0] if counts else "none"


# -- process plumbing -----------------------------------------------------------------------
class LineReader:
    """Reads a child's stdout lines on a thread so the runner can wait with a timeout."""

    def __init__(self, stream: IO[str]) -> None:
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        try:
            for line in stream:
                self._lines.put(line)
        except (OSError, ValueError):
            pass
        self._lines.put(None)

    def json(self, timeout: float) -> dict[str, Any] | None:
        """The next JSON line (non-JSON lines skipped); None on EOF or timeout."""
        while True:
            try:
                line = self._lines.get(timeout=timeout)
            except queue.Empty:
                return None
            if line is None:
                self._lines.put(None)
                return None
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                return obj


def _finish(proc: subprocess.Popen[str], timeout: float = 5.0) -> str:
    """Wait for a peer to exit (kill it after ``timeout``); returns the tail of its stderr."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
    err = proc.stderr.read() if proc.stderr else ""
    return err.strip()[-600:]


def _host_args(end: Endpoint) -> list[str]:
    """``--host-address A`` for every address of an endpoint (IPv4, then IPv6 if any)."""
    return [arg for addr in end[1:] for arg in ("--host-address", addr)]


def _server_args(turn: bool) -> list[str]:
    args = ["--stun", f"{INTERNET_IP}:{TURN_PORT}"]
    if turn:
        args += ["--turn", f"{INTERNET_IP}:{TURN_PORT}", "--turn-user", TURN_USER,
                 "--turn-password", TURN_PASSWORD]
    return args


# -- drivers --------------------------------------------------------------------------------
def ice_attempt(lab: Lab, a: Endpoint, b: Endpoint, turn: bool, timeout: float) -> dict[str, Any]:
    """One raw-ICE attempt: controlling peer at ``a``, controlled at ``b``."""
    common = [*_server_args(turn), "--timeout", str(timeout)]
    procs = [
        lab.run.spawn(end[0], python_argv("tierlink.lab.icepeer", role, *_host_args(end),
                                          *common), stdin=subprocess.PIPE)
        for end, role in ((a, "--controlling"), (b, "--controlled"))
    ]
    readers = [LineReader(p.stdout) for p in procs if p.stdout is not None]
    try:
        offers = [r.json(timeout=30) for r in readers]
        if any(o is None or o.get("event") != "offer" for o in offers):
            errs = [_finish(p, 0.5) for p in procs]
            return {"ok": False, "path": "none", "error": f"no offer: {errs}"}
        for proc, offer in zip(procs, reversed(offers), strict=True):
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(offer) + "\n")
            proc.stdin.flush()
        results = [r.json(timeout=timeout + 20) for r in readers]
    finally:
        errs = [_finish(p) for p in procs]
    ra, rb = results
    if ra is None or rb is None:
        return {"ok": False, "path": "none", "error": f"peer gave no result: {errs}"}
    ok = bool(ra.get("ok") and ra.get("echo"))
    # Both views: the controlled side may see a peer-reflexive candidate the dialer does not.
    types = [(r.get(end) or {}).get("type") for r in (ra, rb) for end in ("local", "remote")]
    return {
        "ok": ok,
        "path": path_of(types) if ok else "none",
        "connect_ms": ra.get("connect_ms") if ok else None,
        "selected_pair": {"local": ra.get("local"), "remote": ra.get("remote")},
        "callee_pair": {"local": rb.get("local"), "remote": rb.get("remote")},
        "error": None if ok else (ra.get("error") or rb.get("error") or "echo failed"),
    }


def node_attempts(
    lab: Lab, a: Endpoint, b: Endpoint, turn: bool, attempts: int, timeout: float,
    message_timeout: float = MESSAGE_TIMEOUT, servers: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """``attempts`` Node dials from ``a`` to a callee at ``b`` (fingerprint via stdout), each
    followed by one tiered message; every result says whether the callee received it.
    ``servers``: the peers' STUN/TURN options instead of the lab's IPv4 defaults."""
    common = ["--dht", lab.dht_proxy, *(_server_args(turn) if servers is None else servers),
              "--ice-timeout", str(timeout)]
    # the Node also asks TURN over TLS on 443 (what a network without UDP allows)
    if turn and servers is None:
        common += ["--turn-tls", f"{INTERNET_IP}:{TURN_TLS_PORT}",
                   "--turn-ca", str(lab.run.workdir / CA_FILE)]
    data = lab.run.workdir / f"peer-{secrets.token_hex(4)}"
    callee = lab.run.spawn(b[0], python_argv(
        "tierlink.lab.peer", "callee", *_host_args(b), "--stdin-control",
        "--data-dir", str(data / "callee"), *common
    ), stdin=subprocess.PIPE)
    assert callee.stdout is not None
    callee_events = LineReader(callee.stdout)
    ready = callee_events.json(timeout=60)
    if ready is None or "fingerprint" not in ready:
        err = _finish(callee, 0.5)
        return [{"ok": False, "path": "none", "tier": "none", "delivered": False,
                 "received": False, "error": f"callee not ready: {err}"}] * attempts
    dialer = lab.run.spawn(a[0], python_argv(
        "tierlink.lab.peer", "dial", "--to", ready["fingerprint"], *_host_args(a),
        "--attempts", str(attempts), "--message-timeout", str(message_timeout),
        "--data-dir", str(data / "dialer"), *common
    ))
    assert dialer.stdout is not None
    reader = LineReader(dialer.stdout)
    out: list[dict[str, Any]] = []
    received: list[dict[str, Any]] = []
    dialer_fp: str | None = None
    errs: list[str] = []
    try:
        while len(out) < attempts:
            # one connect (dial timeout 20 s + echo) plus one message, with margin
            event = reader.json(timeout=timeout * 3 + message_timeout + 30)
            if event is None or event.get("event") == "done":
                break
            if event.get("event") == "ready":
                dialer_fp = event.get("fingerprint")
            elif event.get("event") == "attempt":
                out.append(event)
        errs.append(_finish(dialer))
        if callee.stdin is not None:  # the dialer is done: let the callee finish and exit
            with contextlib.suppress(OSError):
                callee.stdin.close()
        while (event := callee_events.json(timeout=15)) is not None:
            if event.get("event") == "message":
                received.append(event)
    finally:
        errs += [_finish(dialer), _finish(callee)]
    errs = [e for e in errs if e]
    while len(out) < attempts:
        out.append({"ok": False, "path": "none", "tier": "none", "delivered": False,
                    "error": f"dialer gave no result: {errs}"})
    return [_match_received(r, received, dialer_fp) for r in out]


def _match_received(
    result: dict[str, Any], received: list[dict[str, Any]], dialer_fp: str | None
) -> dict[str, Any]:
    """Add what the callee saw of this attempt's message: ``received`` (exactly once, from
    the dialer, same payload) and ``received_tier``."""
    got = [m for m in received
           if result.get("payload") and m.get("payload") == result["payload"]
           and m.get("sender") == dialer_fp]
    return {**result, "received": len(got) == 1, "received_count": len(got),
            "received_tier": got[0].get("tier") if got else None}


# -- the matrix -----------------------------------------------------------------------------
def summarize_cell(
    a: str, b: str, turn: bool, results: list[dict[str, Any]], *, messages: bool = False,
    profile: str | None = None, ipv6: bool = False, turn_tls: bool = False,
) -> dict[str, Any]:
    """One matrix cell from its attempts: successes, most common path, median connect ms and,
    with ``messages`` (Node driver), how the test messages were delivered.

    ``tier``/``tiers``: the delivering tier per attempt (``none`` when not acknowledged),
    majority and counts. ``as_expected`` holds when the connections match the expectation
    and, with ``messages``, every attempt's message was acknowledged through an expected tier
    and taken by the callee exactly once.
    """
    good = [r for r in results if r.get("ok")]
    paths = Counter(str(r.get("path", "none")) for r in good)
    ms = [float(r["connect_ms"]) for r in good if r.get("connect_ms") is not None]
    expected = expected_cell(a, b, turn, ipv6, turn_tls=turn_tls)
    as_expected = bool(good) == expected["connects"] and (
        not good or all(r.get("path") in expected["paths"] for r in good)
    ) and (not expected["connects"] or len(good) == len(results))
    cell: dict[str, Any] = {
        "a": a, "b": b, "turn": turn, "profile": profile, "ipv6": ipv6,
        "attempts": len(results),
        "successes": len(good),
        "path": majority(paths), "paths": dict(paths),
        "connect_ms_median": round(statistics.median(ms), 1) if ms else None,
        "messages": messages,
    }
    if messages:
        tiers = Counter(str(r.get("tier") or "none") for r in results)
        done = [r for r in results if r.get("delivered")]
        deliver_ms = [float(r["deliver_ms"]) for r in done if r.get("deliver_ms") is not None]
        delivered_ok = all(
            r.get("delivered") and r.get("tier") in expected["tiers"] and r.get("received")
            for r in results
        )
        cell.update(
            tier=majority(tiers), tiers=dict(tiers), delivered=len(done),
            received=sum(1 for r in results if r.get("received")),
            deliver_ms_median=round(statistics.median(deliver_ms), 1) if deliver_ms else None,
        )
        as_expected = as_expected and delivered_ok
    else:
        cell.update(tier=None, tiers={}, delivered=None, received=None, deliver_ms_median=None)
    errors = {str(r["error"]) for r in results if r.get("error")}
    errors |= {str(r["message_error"]) for r in results if r.get("message_error")}
    cell.update(expected=expected, as_expected=as_expected, errors=sorted(errors)[:5],
                results=results)
    return cell


def _turn_flag(mode: bool | str) -> bool:
    if isinstance(mode, str):
        return mode.lower() in ("on", "true", "turn", "yes", "1")
    return bool(mode)


def run_matrix(
    presets: Sequence[str],
    attempts: int,
    turn_modes: Iterable[bool | str],
    progress_cb: ProgressCallback | None = None,
    *,
    pairs: Sequence[tuple[str, str]] | None = None,
    driver: str = "node",
    ice_timeout: float = 8.0,
    profiles: Sequence[LinkProfile | None] = (None,),
    ipv6: bool = False,
) -> dict[str, Any]:
    """Run the matrix; returns ``{"cells": [...], "presets": {name: probe_result},
    "profiles": {name: figures}, "emulator": busiest second of the link emulators}``.

    ``pairs`` defaults to every unordered pair of ``presets``. For each profile (None: plain
    veth WAN links) each pair's sites are built once and reused for every TURN mode and
    attempt, then removed. A preset is probed the first time it is built; if the probe
    disagrees with the preset, its cells are recorded with an error (never run on an untrusted
    preset). ``ipv6``: sites that can have it get global IPv6 and the peers use it too.
    With profiles, the emulator's capacity is measured at the end and compared with the
    busiest second of the run (``emulator.sustains_twice``).
    ``progress_cb`` gets each cell as soon as it is done. ``ice_timeout`` is the peers' ICE
    timeout; the Node driver's send budget is 4 s more.
    """
    if driver not in ("ice", "node"):
        raise ValueError("driver must be 'ice' or 'node'")
    if attempts < 1:
        raise ValueError("attempts must be >= 1")
    modes = [_turn_flag(m) for m in turn_modes]
    todo = list(pairs) if pairs is not None else default_pairs(presets)
    for a, b in todo:
        for p in (a, b):
            if p not in nat.PRESETS:
                raise LabError(f"unknown preset {p!r}")
    cells: list[dict[str, Any]] = []
    probes: dict[str, dict[str, Any]] = {}
    with Lab(dht=driver == "node", ipv6=ipv6) as lab:
        for profile in profiles:
            name = profile.name if profile is not None else None
            for a, b in todo:
                sites: list[Site] = []
                try:
                    endpoints, mismatch = _build_pair(lab, a, b, sites, probes, profile)
                    for turn in modes:
                        if mismatch is not None:
                            res = [{"ok": False, "path": "none", "error": str(mismatch)}]
                            res *= attempts
                        elif driver == "ice":
                            res = [ice_attempt(lab, *endpoints, turn, ice_timeout)
                                   for _ in range(attempts)]
                        else:
                            res = node_attempts(lab, *endpoints, turn, attempts, ice_timeout)
                        cell = summarize_cell(a, b, turn, res, messages=driver == "node",
                                              profile=name, ipv6=ipv6,
                                              turn_tls=driver == "node")
                        cells.append(cell)
                        if progress_cb is not None:
                            progress_cb(cell)
                finally:
                    for site in sites:
                        lab.remove_site(site)
        emulator = lab.emulator_peak()
        if emulator["links"]:
            from tierlink.lab.linkcheck import measure_capacity

            emulator["capacity_pps"] = measure_capacity(lab=lab)["capacity_pps"]
            emulator["sustains_twice"] = emulator["capacity_pps"] >= 2 * emulator["peak_pps"]
    figures = {p.name: profile_figures(p) for p in profiles if p is not None}
    return {"cells": cells, "presets": probes, "profiles": figures, "emulator": emulator}


def profile_figures(profile: LinkProfile) -> dict[str, Any]:
    """A profile's requested figures, as the reports show them."""
    return {"rtt_ms": profile.rtt_ms, "jitter_ms": profile.jitter_ms, "loss": profile.loss,
            "rate_mbit": profile.rate_mbit, "description": profile.description}


def resolve_profiles(names: Sequence[str] | None) -> list[LinkProfile | None]:
    """Profile names -> profiles (``none`` or no names: plain links); LabError if unknown."""
    if not names:
        return [None]
    unknown = [n for n in names if n != "none" and n not in PROFILES]
    if unknown:
        raise LabError(f"unknown profile {', '.join(unknown)} (choose from "
                       f"{', '.join(PROFILES)}, none)")
    return [None if n == "none" else PROFILES[n] for n in names]


def _build_pair(
    lab: Lab, a: str, b: str, sites: list[Site], probes: dict[str, dict[str, Any]],
    profile: LinkProfile | None = None,
) -> tuple[tuple[Endpoint, Endpoint], PresetMismatch | None]:
    """Build (and on first use probe) the sites of one pair; returns the two peer endpoints."""
    names = [a] if a == b and a in SHARED_SITE else [a, b]
    mismatch: PresetMismatch | None = None
    for name in names:
        site = lab.add_site(name, profile)
        sites.append(site)
        if name not in probes:
            probes[name] = lab.probe(site)
        if not probes[name]["ok"]:
            mismatch = PresetMismatch(name, probes[name])
    ends = [(ns, addr, *s.info.get("ipv6", [])[i:i + 1])
            for s in sites for i, (ns, addr) in enumerate(s.hosts)]
    if len(sites) == 1:
        return (ends[0], ends[1]), mismatch
    return (ends[0], ends[len(sites[0].hosts)]), mismatch
