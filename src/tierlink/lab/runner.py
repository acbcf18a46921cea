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
from tierlink.lab.netns import LabError, python_argv
from tierlink.lab.services import TURN_PASSWORD, TURN_PORT, TURN_USER
from tierlink.lab.topology import INTERNET_IP, Lab, PresetMismatch, Site
from tierlink.transport.ice import PATH_TYPES, path_of

DIRECT_PATHS = PATH_TYPES[:-1]
#: How long the Node driver waits for a test message's acknowledgement.
MESSAGE_TIMEOUT = 30.0
ProgressCallback = Callable[[dict[str, Any]], None]

#: A reduced matrix: every preset at least once, including both pairs that need a relay.
REDUCED_PAIRS: tuple[tuple[str, str], ...] = (
    ("open", "full-cone"),
    ("restricted", "symmetric"),
    ("port-restricted", "symmetric"),
    ("symmetric", "symmetric"),
    ("double", "port-restricted"),
    ("hairpin", "hairpin"),
)
Endpoint = tuple[str, str]  # (namespace, LAN address)


# -- expectations ---------------------------------------------------------------------------
def direct_possible(a: str, b: str) -> bool:
    """Can ICE connect two presets without a relay? No when one side's mapping depends on the
    destination port (symmetric) while the other side filters by address and port."""
    if "hairpin" in (a, b):
        return a == b
    sa, sb = nat.PRESETS[a], nat.PRESETS[b]
    blocked = (sa.mapping == nat.APDM and sb.filtering == nat.APDF) or (
        sb.mapping == nat.APDM and sa.filtering == nat.APDF
    )
    return not blocked


def expected_cell(a: str, b: str, turn: bool) -> dict[str, Any]:
    """What a cell should show: whether it connects, through which path types, and which
    tiers may deliver its test message (Node driver).

    With TURN, a pair that could go direct may still end up on the relay: aioice nominates the
    first pair whose check succeeds, and a relay check can beat a direct one that needed a
    retransmission (seen with restricted<->symmetric: the first direct check is dropped until
    the restricted side has sent toward the symmetric side's address). The message link is a
    dial of its own, so its tier follows the same rule. Without any path the message must
    still arrive, through the DHT offline queue.
    """
    if a == "hairpin" or b == "hairpin":
        return {"connects": True, "paths": ["host"], "tiers": ["direct"]}
    if direct_possible(a, b):
        if turn:
            return {"connects": True, "paths": [*DIRECT_PATHS, "relay"],
                    "tiers": ["direct", "relay"]}
        return {"connects": True, "paths": list(DIRECT_PATHS), "tiers": ["direct"]}
    if turn:
        return {"connects": True, "paths": ["relay"], "tiers": ["relay"]}
    return {"connects": False, "paths": ["none"], "tiers": ["offline"]}


def default_pairs(presets: Sequence[str]) -> list[tuple[str, str]]:
    """Every unordered pair of presets; ``hairpin`` pairs only with itself (one shared NAT)."""
    plain = [p for p in presets if p != "hairpin"]
    pairs = [(a, b) for i, a in enumerate(plain) for b in plain[i:]]
    if "hairpin" in presets:
        pairs.append(("hairpin", "hairpin"))
    return pairs


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
        lab.run.spawn(ns, python_argv("tierlink.lab.icepeer", role, "--host-address", addr,
                                      *common), stdin=subprocess.PIPE)
        for (ns, addr), role in ((a, "--controlling"), (b, "--controlled"))
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
    message_timeout: float = MESSAGE_TIMEOUT,
) -> list[dict[str, Any]]:
    """``attempts`` Node dials from ``a`` to a callee at ``b`` (fingerprint via stdout), each
    followed by one tiered message; every result says whether the callee received it."""
    common = ["--dht", lab.dht_proxy, *_server_args(turn), "--ice-timeout", str(timeout)]
    data = lab.run.workdir / f"peer-{secrets.token_hex(4)}"
    callee = lab.run.spawn(b[0], python_argv(
        "tierlink.lab.peer", "callee", "--host-address", b[1], "--stdin-control",
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
        "tierlink.lab.peer", "dial", "--to", ready["fingerprint"], "--host-address", a[1],
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
    a: str, b: str, turn: bool, results: list[dict[str, Any]], *, messages: bool = False
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
    expected = expected_cell(a, b, turn)
    as_expected = bool(good) == expected["connects"] and (
        not good or all(r.get("path") in expected["paths"] for r in good)
    ) and (not expected["connects"] or len(good) == len(results))
    cell: dict[str, Any] = {
        "a": a, "b": b, "turn": turn, "attempts": len(results), "successes": len(good),
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
) -> dict[str, Any]:
    """Run the matrix; returns ``{"cells": [...], "presets": {name: probe_result}}``.

    ``pairs`` defaults to every unordered pair of ``presets``. Each pair's sites are built once
    and reused for every TURN mode and attempt, then removed. A preset is probed the first time
    it is built; if the probe disagrees with the preset, its cells are recorded with an error
    (never run on an untrusted preset). ``progress_cb`` gets each cell as soon as it is done.
    ``ice_timeout`` is the peers' ICE timeout; the Node driver's send budget is 4 s more.
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
    with Lab(dht=driver == "node") as lab:
        for a, b in todo:
            sites: list[Site] = []
            try:
                endpoints, mismatch = _build_pair(lab, a, b, sites, probes)
                for turn in modes:
                    if mismatch is not None:
                        res = [{"ok": False, "path": "none", "error": str(mismatch)}] * attempts
                    elif driver == "ice":
                        res = [ice_attempt(lab, *endpoints, turn, ice_timeout)
                               for _ in range(attempts)]
                    else:
                        res = node_attempts(lab, *endpoints, turn, attempts, ice_timeout)
                    cell = summarize_cell(a, b, turn, res, messages=driver == "node")
                    cells.append(cell)
                    if progress_cb is not None:
                        progress_cb(cell)
            finally:
                for site in sites:
                    lab.remove_site(site)
    return {"cells": cells, "presets": probes}


def _build_pair(
    lab: Lab, a: str, b: str, sites: list[Site], probes: dict[str, dict[str, Any]]
) -> tuple[tuple[Endpoint, Endpoint], PresetMismatch | None]:
    """Build (and on first use probe) the sites of one pair; returns the two peer endpoints."""
    names = [a] if a == b == "hairpin" else [a, b]
    mismatch: PresetMismatch | None = None
    for name in names:
        site = lab.add_site(name)
        sites.append(site)
        if name not in probes:
            probes[name] = lab.probe(site)
        if not probes[name]["ok"]:
            mismatch = PresetMismatch(name, probes[name])
    if len(sites) == 1:
        h1, h2 = sites[0].hosts[:2]
        return (h1, h2), mismatch
    return (sites[0].hosts[0], sites[1].hosts[0]), mismatch
