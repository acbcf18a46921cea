"""Matrix reports: ``matrix.json`` (everything), ``matrix.md`` (tables), ``matrix.png`` (heatmap)
and, when the run had link profiles, ``connect_vs_rtt.png`` (connect time against RTT); with
a fault matrix also its table and ``faults.png`` (:mod:`tierlink.lab.faultreport`).

Input is the object :func:`tierlink.lab.runner.run_matrix` returns::

    {"cells": [{"a", "b", "turn", "attempts", "successes", "path", "connect_ms_median",
                "messages", "tier", "tiers", "delivered", "deliver_ms_median", ...}, ...],
     "presets": {name: probe_result}}

``tier`` is the tier that delivered the cell's test messages (Node driver; None for raw ICE).

matplotlib is needed only for the PNG (``pip install matplotlib``; the ``lab`` extra).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tierlink.lab.nat import PRESETS

#: Outcome -> (colour, legend text). Colour-blind friendly (Okabe-Ito based).
OUTCOMES: dict[str, tuple[str, str]] = {
    "direct": ("#2e9e6b", "direct (host/srflx/prflx)"),
    "relay": ("#56b4e9", "relay (TURN)"),
    "mixed": ("#9b8ad0", "direct and relay in different attempts"),
    "partial": ("#f0c542", "some attempts failed"),
    "offline": ("#cc79a7", "no path; message delivered offline (DHT)"),
    "failed": ("#d55e00", "no connection (and no message)"),
    "not run": ("#e6e6e6", "not run"),
}


def outcome(cell: dict[str, Any]) -> str:
    """Outcome class of a cell: direct, relay, mixed, partial, offline or failed.

    ``offline``: no attempt connected, but every test message was delivered (through the DHT).
    """
    if cell.get("successes", 0) == 0:
        attempts = cell.get("attempts", 0)
        if cell.get("messages") and attempts and cell.get("delivered") == attempts:
            return "offline"
        return "failed"
    if cell["successes"] < cell.get("attempts", 0):
        return "partial"
    paths = set(cell.get("paths") or ())
    if "relay" in paths and paths - {"relay"}:
        return "mixed"
    return "relay" if cell.get("path") == "relay" else "direct"


def _order(result: dict[str, Any]) -> list[str]:
    seen = {c["a"] for c in result["cells"]} | {c["b"] for c in result["cells"]}
    return [p for p in PRESETS if p in seen] + sorted(seen - set(PRESETS))


def _rtts(ms: float | None, rtt_ms: float | None) -> str:
    """A connect time in round trips of its profile ("-" when either is unknown)."""
    if ms is None or not rtt_ms:
        return "-"
    return f"{ms / rtt_ms:.1f}"


def _ms(value: Any) -> str:
    return "-" if value is None else f"{float(value):.0f} ms"


def _path_label(cell: dict[str, Any]) -> str:
    """``srflx``, or ``relay 2 + srflx 1`` when attempts took different paths."""
    paths = cell.get("paths") or {}
    if len(paths) <= 1:
        return str(cell["path"])
    return " + ".join(f"{p} {n}" for p, n in sorted(paths.items(), key=lambda kv: -kv[1]))


def tier_label(cell: dict[str, Any]) -> str:
    """``offline``, ``direct 1 + relay 1`` when messages took different tiers, ``-`` for raw
    ICE cells (no messages)."""
    tiers = cell.get("tiers") or {}
    if not cell.get("messages") and not tiers:
        return "-" if cell.get("tier") is None else str(cell["tier"])
    if len(tiers) <= 1:
        return str(cell.get("tier") or "none")
    return " + ".join(f"{t} {n}" for t, n in sorted(tiers.items(), key=lambda kv: -kv[1]))


def _short_tiers(cell: dict[str, Any]) -> str:
    """``relay+direct`` (most common first): the tier label without counts, for the PNG."""
    tiers = cell.get("tiers") or {}
    if len(tiers) <= 1:
        return str(cell.get("tier") or "none")
    return "+".join(t for t, _ in sorted(tiers.items(), key=lambda kv: -kv[1]))


def _delivered(cell: dict[str, Any]) -> str:
    if not cell.get("messages"):
        return "-"
    return f"{cell.get('delivered') or 0}/{cell.get('attempts', 0)}"


def _yes(flag: Any) -> str:
    return "yes" if flag else "no"


def write_json(result: dict[str, Any], path: Path) -> Path:
    path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return path


def by_profile(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Connect time against RTT: one row per profile of the run (cells with a profile), with
    the median connect time of the connected attempts by path class and the median delivery.
    """
    rows = []
    for name, fig in result.get("profiles", {}).items():
        cells = [c for c in result["cells"] if c.get("profile") == name]
        attempts = [r for c in cells for r in c.get("results", []) if r.get("ok")]
        direct = [float(r["connect_ms"]) for r in attempts
                  if r.get("connect_ms") is not None and r.get("path") != "relay"]
        relay = [float(r["connect_ms"]) for r in attempts
                 if r.get("connect_ms") is not None and r.get("path") == "relay"]
        deliver = [float(r["deliver_ms"]) for c in cells for r in c.get("results", [])
                   if r.get("deliver_ms") is not None]
        rows.append({
            "profile": name, "rtt_ms": fig["rtt_ms"], "jitter_ms": fig["jitter_ms"],
            "loss": fig["loss"], "cells": len(cells),
            "connected": f"{sum(c['successes'] for c in cells)}/"
                         f"{sum(c['attempts'] for c in cells)}",
            "direct_ms": _median(direct), "relay_ms": _median(relay),
            "deliver_ms": _median(deliver), "direct_points": direct, "relay_points": relay,
        })
    return rows


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


def write_markdown(result: dict[str, Any], path: Path) -> Path:
    """Tables: preset probe results, connect time against RTT per profile (when the run had
    profiles), then one row per cell, then the fault matrix (when the run had faults; a
    fault-only run writes just that)."""
    if not result["cells"] and result.get("faults"):
        from tierlink.lab.faultreport import fault_markdown

        lines = ["# NAT lab fault matrix", "", *fault_markdown(result["faults"])]
        path.write_text("\n".join(lines) + "\n")
        return path
    lines = ["# NAT lab connectivity matrix", "", "## Presets (probe results)", "",
             "| preset | mapping | filtering | hairpin | LAN reachable by routing "
             "| matches definition |",
             "|---|---|---|---|---|---|"]
    for name, probe in result.get("presets", {}).items():
        hp = probe.get("hairpin")
        hairpin = "-" if hp is None else _yes(hp.get("received"))
        exposed = probe.get("lan_exposed")
        lines.append(f"| {name} | {probe.get('mapping')} | {probe.get('filtering')} | {hairpin} "
                     f"| {'-' if exposed is None else _yes(exposed)} "
                     f"| {'yes' if probe.get('ok') else '**NO**'} |")
    profile_rows = by_profile(result)
    if profile_rows:
        lines += ["", "## Connect time against RTT (per link profile)", "",
                  "| profile | RTT | jitter | loss | cells | connected | median connect direct "
                  "| in RTTs | median connect relay | in RTTs | median delivery |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in profile_rows:
            jitter = f"+-{r['jitter_ms']} ms" if r["jitter_ms"] else "-"
            lines.append(f"| {r['profile']} | {r['rtt_ms']} ms | {jitter} | {r['loss']:.1%} "
                         f"| {r['cells']} | {r['connected']} | {_ms(r['direct_ms'])} "
                         f"| {_rtts(r['direct_ms'], r['rtt_ms'])} | {_ms(r['relay_ms'])} "
                         f"| {_rtts(r['relay_ms'], r['rtt_ms'])} | {_ms(r['deliver_ms'])} |")
        emu = result.get("emulator") or {}
        if emu.get("links"):
            capacity = emu.get("capacity_pps")
            lines += ["", f"Link emulators: {emu['links']} links, busiest second "
                      f"{emu['peak_pps']} packets/s, {emu['moved']} packets moved, "
                      f"{emu['dropped']} dropped by the emulator (failed writes or a full queue). "
                      + ("" if capacity is None else
                         f"Measured capacity: {capacity} packets/s "
                         f"({'at least' if emu.get('sustains_twice') else '**less than**'} "
                         "twice the busiest second).")]
    with_profile = any(c.get("profile") for c in result["cells"])
    lines += ["", "## Cells", "",
              "`successes`/`path`/`median connect`: the connect attempts (dial + echo). "
              "`delivered`/`tier`/`median delivery`: the one test message sent after each "
              "attempt with `node.send` (acknowledged by the callee; `none` = not delivered).",
              "",
              ("| profile " if with_profile else "")
              + "| a | b | TURN | successes | path | median connect | delivered | tier "
              "| median delivery | outcome | expected |",
              "|---" * (12 if with_profile else 11) + "|"]
    for c in result["cells"]:
        expected = c.get("as_expected")
        mark = "-" if expected is None else ("yes" if expected else "**NO**")
        note = (c.get("expected") or {}).get("note")
        if note:
            mark += f" ({note})"
        lines.append(
            (f"| {c.get('profile') or '-'} " if with_profile else "")
            + f"| {c['a']} | {c['b']} | {'on' if c['turn'] else 'off'} "
            f"| {c['successes']}/{c['attempts']} | {_path_label(c)} "
            f"| {_ms(c.get('connect_ms_median'))} | {_delivered(c)} | {tier_label(c)} "
            f"| {_ms(c.get('deliver_ms_median'))} | {outcome(c)} | {mark} |"
        )
    if result.get("faults"):
        from tierlink.lab.faultreport import fault_markdown

        lines += ["", *fault_markdown(result["faults"])]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_png(result: dict[str, Any], path: Path) -> Path:
    """Heatmap per TURN mode: rows/columns are presets, colour = outcome, text = path + ms
    (cells of the run's first profile; the others are in ``connect_vs_rtt.png``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    first = result["cells"][0].get("profile") if result["cells"] else None
    result = {**result, "cells": [c for c in result["cells"] if c.get("profile") == first]}
    names = _order(result)
    modes = sorted({bool(c["turn"]) for c in result["cells"]}) or [False]
    n = len(names)
    size = max(3.2, 1.25 * n + 1.4)
    fig, axes = plt.subplots(1, len(modes), figsize=(size * len(modes), size + 1.0),
                             squeeze=False)
    for ax, turn in zip(axes[0], modes, strict=True):
        grid: dict[tuple[int, int], dict[str, Any]] = {}
        for c in result["cells"]:
            if bool(c["turn"]) != turn:
                continue
            i, j = names.index(c["a"]), names.index(c["b"])
            grid[(i, j)] = grid[(j, i)] = c
        for i in range(n):
            for j in range(n):
                cell = grid.get((i, j))
                kind = outcome(cell) if cell else "not run"
                ax.add_patch(Rectangle((j, i), 1, 1, facecolor=OUTCOMES[kind][0],
                                       edgecolor="white", linewidth=2))
                if cell is None:
                    if "hairpin" in (names[i], names[j]):
                        ax.text(j + 0.5, i + 0.5, "n/a", ha="center", va="center",
                                fontsize=8, color="#888888")
                    continue
                text = f"{_path_label(cell)}\n{_ms(cell.get('connect_ms_median'))}"
                text += f"\n{cell['successes']}/{cell['attempts']}"
                if cell.get("messages"):
                    text += f"\nmsg {_delivered(cell)}:\n{_short_tiers(cell)}"
                if cell.get("as_expected") is False:
                    text += "\nUNEXPECTED"
                    ax.add_patch(Rectangle((j + 0.04, i + 0.04), 0.92, 0.92, fill=False,
                                           edgecolor="black", linewidth=2.5))
                ax.text(j + 0.5, i + 0.5, text, ha="center", va="center", fontsize=8.5,
                        color="white" if kind in ("direct", "failed") else "black")
        ax.set_xlim(0, n)
        ax.set_ylim(n, 0)
        ax.set_xticks([k + 0.5 for k in range(n)], names, rotation=35, ha="right")
        ax.set_yticks([k + 0.5 for k in range(n)], names)
        ax.set_aspect("equal")
        ax.tick_params(length=0)
        for side in ax.spines.values():
            side.set_visible(False)
        ax.set_title(f"TURN {'on' if turn else 'off'}", fontsize=12)
    handles = [Patch(facecolor=c, label=label) for c, label in OUTCOMES.values()]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=8.5,
               frameon=False)
    on = f" (link profile {first})" if first else ""
    fig.suptitle(f"tierlink NAT lab: outcome per preset pair{on} (row dials column; "
                 "mirrored)\ncell: path, median connect time, successes/attempts, "
                 "messages delivered/sent and their tier", fontsize=12)
    fig.tight_layout(rect=(0, 0.07, 1, 0.95))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_rtt_png(result: dict[str, Any], path: Path) -> Path:
    """Connect time against the profile's RTT: every connected attempt, direct and relay."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = by_profile(result)
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for key, label, colour in (("direct_points", "direct", OUTCOMES["direct"][0]),
                               ("relay_points", "relay (TURN)", OUTCOMES["relay"][0])):
        xs = [r["rtt_ms"] for r in rows for _ in r[key]]
        ys = [v for r in rows for v in r[key]]
        ax.scatter(xs, ys, label=label, color=colour, alpha=0.8, s=28)
    for i, r in enumerate(sorted(rows, key=lambda row: row["rtt_ms"])):
        ax.annotate(r["profile"], (r["rtt_ms"], 0), textcoords="offset points",
                    xytext=(0, 4 + 11 * (i % 3)), ha="left", rotation=0, fontsize=8,
                    color="#555555")  # staggered: close RTTs (lan, broadband, lossy)
    ax.set_xlabel("profile RTT (ms)")
    ax.set_ylabel("connect time (ms): DHT lookup, signaling, ICE, echo")
    ax.set_title("tierlink NAT lab: connect time against RTT per link profile")
    ax.set_ylim(bottom=0)
    ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_reports(
    result: dict[str, Any], out_dir: Path, *, formats: Sequence[str] = ("json", "md", "png")
) -> dict[str, Path]:
    """Write the requested reports into ``out_dir``; returns {format: path}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    if "json" in formats:
        written["json"] = write_json(result, out_dir / "matrix.json")
    if "md" in formats:
        written["md"] = write_markdown(result, out_dir / "matrix.md")
    if "png" in formats and result["cells"]:
        written["png"] = write_png(result, out_dir / "matrix.png")
        if result.get("profiles"):
            written["rtt_png"] = write_rtt_png(result, out_dir / "connect_vs_rtt.png")
    if "png" in formats and result.get("faults"):
        from tierlink.lab.faultreport import write_fault_png

        written["faults_png"] = write_fault_png(result["faults"], out_dir / "faults.png")
    return written
