"""What ``tierlink lab`` runs: :func:`run_lab_cli` (the matrix) and :func:`run_cleanup_stale`.
The options are parsed by the one ``tierlink`` parser (:mod:`tierlink.cli.tool_commands`).

Exit status: 0 when every cell met its expectation (and every preset passed its probes), 1
when some did not (or the lab failed mid-run), 2 when the lab cannot run here (not root, a
tool missing, a bad argument), 130 on Ctrl-C. Progress goes to stderr; stdout carries only
the matrix (a table, or the JSON object with ``cells`` and ``presets``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from tierlink.lab.nat import PRESETS
from tierlink.lab.netns import LabError, LabUnavailable, cleanup_stale, missing_requirements
from tierlink.lab.profiles import PROFILES

EXIT_OK, EXIT_UNEXPECTED, EXIT_UNAVAILABLE, EXIT_INTERRUPTED = 0, 1, 2, 130
DEFAULT_ICE_TIMEOUT = 8.0


T = TypeVar("T")


def _guarded(work: Callable[[], T]) -> tuple[T | None, int]:
    """Run a lab job: (its result, 0), or (None, the exit code) after saying why it failed
    (the lab removes its namespaces and processes on every exit)."""
    try:
        return work(), 0
    except LabUnavailable as exc:
        _err(f"tierlink lab: {exc}")
        return None, EXIT_UNAVAILABLE
    except LabError as exc:
        _err(f"tierlink lab: the lab failed: {exc}")
        return None, EXIT_UNEXPECTED
    except KeyboardInterrupt:
        _err("tierlink lab: interrupted (namespaces and processes removed)")
        return None, EXIT_INTERRUPTED


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def progress_line(cell: dict[str, Any]) -> str:
    """One line per finished cell (stderr)."""
    from tierlink.lab.report import tier_label

    ms = cell.get("connect_ms_median")
    line = f"[{cell['profile']}] " if cell.get("profile") else ""
    line += (f"{cell['a']:>15} <-> {cell['b']:<15} turn={'on ' if cell['turn'] else 'off'} "
            f"{cell['successes']}/{cell['attempts']} {cell['path']:<6} "
            f"{'-' if ms is None else f'{ms:.0f} ms':>8}")
    if cell.get("messages"):
        line += f"  msg {cell.get('delivered')}/{cell['attempts']} {tier_label(cell):<8}"
    return line + f"  {'ok' if cell.get('as_expected') else 'UNEXPECTED'}"


def format_table(result: dict[str, Any]) -> str:
    """The matrix as a plain-text table (one row per cell) plus the failing presets."""
    from tierlink.lab.report import outcome, tier_label

    with_profile = any(c.get("profile") for c in result["cells"])
    head: tuple[str, ...] = ("a", "b", "TURN", "connected", "path", "connect", "delivered",
                             "tier", "delivery", "outcome", "expected")
    if with_profile:
        head = ("profile", *head)
    rows = [head]
    for c in result["cells"]:
        connect, delivery = c.get("connect_ms_median"), c.get("deliver_ms_median")
        row: tuple[str, ...] = (
            c["a"], c["b"], "on" if c["turn"] else "off", f"{c['successes']}/{c['attempts']}",
            str(c["path"]), "-" if connect is None else f"{connect:.0f} ms",
            f"{c.get('delivered')}/{c['attempts']}" if c.get("messages") else "-",
            tier_label(c), "-" if delivery is None else f"{delivery:.0f} ms", outcome(c),
            "yes" if c.get("as_expected") else "NO",
        )
        rows.append((str(c.get("profile") or "-"), *row) if with_profile else row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    bad = [n for n, p in result.get("presets", {}).items() if not p.get("ok")]
    if bad:
        lines.append(f"presets that failed their probes: {', '.join(bad)}")
    return "\n".join(lines)


def all_as_expected(result: dict[str, Any]) -> bool:
    """Every cell met its expectation, every probed preset matched its definition, and the
    link emulator (if used) carried at least twice the run's busiest second."""
    cells_ok = all(c.get("as_expected") for c in result["cells"])
    emulator_ok = (result.get("emulator") or {}).get("sustains_twice", True)
    return cells_ok and bool(emulator_ok) and all(
        p.get("ok") for p in result.get("presets", {}).values())


def _preflight(
    names: Sequence[str], attempts: int, report: Path | None, driver: str, ice_timeout: float,
    has_pairs: bool = True, profiles: Sequence[str] = (),
) -> str | None:
    """Why the lab cannot run with these arguments here (None: it can)."""
    unknown = [n for n in names if n not in PRESETS]
    if unknown:
        return (f"unknown NAT type {', '.join(unknown)} "
                f"(choose from {', '.join(PRESETS)})")
    bad = [p for p in profiles if p != "none" and p not in PROFILES]
    if bad:
        return f"unknown profile {', '.join(bad)} (choose from {', '.join(PROFILES)}, none)"
    if attempts < 1:
        return "--attempts must be at least 1"
    if driver not in ("node", "ice"):
        return f"unknown driver {driver!r} (choose from node, ice)"
    if not ice_timeout > 0:
        return "--ice-timeout must be more than 0 seconds"
    if not has_pairs:
        return f"no pair of the reduced list among {', '.join(names)}"
    missing = missing_requirements()
    if missing:
        return "NAT lab needs " + ", ".join(missing)
    if report is not None:
        try:
            report.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return f"cannot create the report directory {report}: {exc.strerror or exc}"
        if not os.access(report, os.W_OK):
            return f"the report directory {report} is not writable"
    if report is not None and importlib.util.find_spec("matplotlib") is None:
        return "--report needs matplotlib for matrix.png (pip install 'tierlink[lab]')"
    return None


def run_lab_cli(
    nat: list[str] | None,
    attempts: int,
    turn: bool | None,
    as_json: bool,
    report: Path | None,
    *,
    driver: str = "node",
    reduced: bool = False,
    ice_timeout: float = DEFAULT_ICE_TIMEOUT,
    profiles: list[str] | None = None,
    ipv6: bool = False,
    faults: str | None = None,
) -> int:
    """``tierlink lab``: run the matrix and print it; returns the exit status.

    ``nat``: the presets to pair (every unordered pair among them, ``hairpin`` and
    ``cgnat-shared`` only with themselves; None = the default matrix: every pair of the
    classic presets plus the real-world pairs); ``reduced``: only the pairs of the reduced
    list among them. ``turn``: True/False for one TURN mode, None for both. ``driver``:
    ``node`` (the Node, one tiered message per attempt) or ``ice`` (raw ICE only).
    ``profiles``: link profiles of the WAN links, one matrix each (None: plain links).
    ``ipv6``: global IPv6 on every site that can have it, used by the peers.
    ``faults``: run the fault matrix instead (``all`` or comma-separated fault names).
    """
    if faults is not None:
        return run_fault_cli(faults, profiles, as_json, report)
    from tierlink.lab.expectations import REDUCED_PAIRS, default_pairs, matrix_pairs
    from tierlink.lab.runner import resolve_profiles, run_matrix

    names = list(dict.fromkeys(nat)) if nat else list(PRESETS)
    if reduced:
        pairs = [p for p in REDUCED_PAIRS if set(p) <= set(names)]
    else:
        pairs = default_pairs(names) if nat else matrix_pairs()
    wanted = list(dict.fromkeys(profiles or []))
    problem = _preflight(names, attempts, report, driver, ice_timeout, bool(pairs), wanted)
    if problem is not None:
        _err(f"tierlink lab: {problem}")
        return EXIT_UNAVAILABLE
    modes = [False, True] if turn is None else [bool(turn)]
    links = resolve_profiles(wanted)
    total = len(pairs) * len(modes) * len(links)
    _err(f"tierlink lab: {total} cells x {attempts} attempt(s), "
         f"TURN {'off and on' if turn is None else ('on' if turn else 'off')}, "
         f"profiles {', '.join(wanted) or 'none'}{', IPv6' if ipv6 else ''}")
    done = [0]

    def progress(cell: dict[str, Any]) -> None:
        done[0] += 1
        _err(f"{done[0]:>3}/{total} {progress_line(cell)}")

    result, code = _guarded(lambda: run_matrix(
        names, attempts, modes, progress, pairs=pairs, driver=driver,
        ice_timeout=ice_timeout, profiles=links, ipv6=ipv6))
    if result is None:
        return code
    if as_json:
        print(json.dumps(result, sort_keys=True, default=str))
    else:
        print(format_table(result))
    if report is not None:
        from tierlink.lab.report import write_reports

        for path in write_reports(result, report).values():
            _err(f"wrote {path}")
    return EXIT_OK if all_as_expected(result) else EXIT_UNEXPECTED


def run_fault_cli(
    faults: str, profiles: list[str] | None, as_json: bool, report: Path | None
) -> int:
    """``tierlink lab --faults [NAME,...]``: the fault matrix on each profile (both apis);
    0 when every run lost nothing and delivered nothing twice."""
    from tierlink.lab.faultreport import format_fault_table
    from tierlink.lab.faultrun import fault_line, run_faults
    from tierlink.lab.faults import FAULTS
    from tierlink.lab.runner import profile_figures, resolve_profiles

    names = list(FAULTS) if faults == "all" else [
        n.strip() for n in faults.split(",") if n.strip()]
    wanted = list(dict.fromkeys(profiles or []))
    unknown = [n for n in names if n not in FAULTS]
    problem = (f"unknown fault {', '.join(unknown)} (choose from {', '.join(FAULTS)})"
               if unknown or not names else
               _preflight([], 1, report, "node", DEFAULT_ICE_TIMEOUT, True, wanted))
    if problem is not None:
        _err(f"tierlink lab: {problem}")
        return EXIT_UNAVAILABLE
    links = resolve_profiles(wanted)
    total = len(names) * len(links) * 2
    _err(f"tierlink lab: fault matrix, {total} runs ({', '.join(names)}; profiles "
         f"{', '.join(wanted) or 'none'}; apis send, connection)")
    done = [0]

    def progress(row: dict[str, Any]) -> None:
        done[0] += 1
        _err(f"{done[0]:>3}/{total} {fault_line(row)}")

    rows, code = _guarded(lambda: run_faults(names, links, progress=progress))
    if rows is None:
        return code
    result = {"cells": [], "presets": {}, "faults": rows,
              "profiles": {p.name: profile_figures(p) for p in links if p is not None}}
    print(json.dumps(result, sort_keys=True, default=str) if as_json
          else format_fault_table(rows))
    if report is not None:
        from tierlink.lab.report import write_reports

        for path in write_reports(result, report).values():
            _err(f"wrote {path}")
    return EXIT_OK if all(r["ok"] for r in rows) else EXIT_UNEXPECTED


def run_emulator_check(profiles: list[str] | None, as_json: bool,
                       report: Path | None = None) -> int:
    """``tierlink lab --emulator-check``: requested vs measured RTT, jitter and loss of each
    profile (default all) and the emulator's packet-rate capacity (also written as
    ``emulator.json`` / ``emulator.md`` into ``report``); 0 when every profile is within
    tolerance."""
    wanted = [p for p in dict.fromkeys(profiles or []) if p != "none"]
    bad = [p for p in wanted if p not in PROFILES]
    missing = missing_requirements()
    if bad or missing:
        why = (f"unknown profile {', '.join(bad)}" if bad
               else "NAT lab needs " + ", ".join(missing))
        _err(f"tierlink lab: {why}")
        return EXIT_UNAVAILABLE
    from tierlink.lab.linkcheck import emulator_check, format_check

    _err(f"tierlink lab: emulator check of {', '.join(wanted) or 'every profile'}")
    try:
        result = emulator_check(wanted or None)
    except LabError as exc:
        _err(f"tierlink lab: the check failed: {exc}")
        return EXIT_UNEXPECTED
    print(json.dumps(result, sort_keys=True) if as_json else format_check(result))
    if report is not None:
        report.mkdir(parents=True, exist_ok=True)
        (report / "emulator.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        (report / "emulator.md").write_text("# Link emulator: requested vs measured\n\n"
                                            + format_check(result) + "\n")
        _err(f"wrote {report / 'emulator.json'} and {report / 'emulator.md'}")
    return EXIT_OK if all(r["ok"] for r in result["profiles"]) else EXIT_UNEXPECTED


def run_cleanup_stale() -> int:
    """``tierlink lab --cleanup-stale``: remove what dead lab runs left behind; prints the
    removed namespaces as JSON (``{"removed": [...]}``)."""
    missing = missing_requirements()
    if missing:
        _err("tierlink lab: NAT lab needs " + ", ".join(missing))
        return EXIT_UNAVAILABLE
    print(json.dumps({"removed": cleanup_stale()}))
    return EXIT_OK
