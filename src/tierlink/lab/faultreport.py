"""Fault matrix reports: a plain-text table, the ``matrix.md`` section and ``faults.png``
(one row per fault, one column per profile and api; colour: lost/duplicated or not)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

FAULT_HEAD = ("profile", "fault", "api", "sent", "failed", "delivered", "lost", "duplicates",
              "recovery", "tier after", "path before -> after", "redials", "ok")


def fault_table_rows(rows: Sequence[dict[str, Any]]) -> list[tuple[str, ...]]:
    """The fault matrix as text cells, one tuple per run (columns: :data:`FAULT_HEAD`)."""
    out: list[tuple[str, ...]] = []
    for r in rows:
        rec = r["recovery_ms"]
        redials = r.get("redials")
        out.append((
            str(r["profile"] or "-"), r["fault"], r["api"], str(r["sent"]), str(r["failed"]),
            str(r["delivered"]), str(r["lost"]), str(r["duplicates"]),
            "-" if rec is None else f"{rec:.0f} ms", str(r["tier_after"]),
            f"{r['path_before']} -> {r['path_after']}", "-" if redials is None else str(redials),
            "yes" if r["ok"] else ("ERROR" if r.get("error") else "NO"),
        ))
    return out


def format_fault_table(rows: Sequence[dict[str, Any]]) -> str:
    """The fault matrix as a plain-text table."""
    table = [FAULT_HEAD, *fault_table_rows(rows)]
    widths = [max(len(r[i]) for r in table) for i in range(len(FAULT_HEAD))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
             for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def fault_markdown(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The fault matrix section of ``matrix.md``."""
    lines = ["## Fault matrix", "",
             "A stream of messages (20/s) between two port-restricted peers; the fault is "
             "injected mid-stream. `sent`: accepted by the API; `failed`: the send raised; "
             "`lost`: accepted, never handled by the receiving application; `recovery`: fault "
             "to the first handling of a message sent after it; `redials`: new connections "
             "the `connection` stream needed.", "",
             "| " + " | ".join(FAULT_HEAD) + " |", "|---" * len(FAULT_HEAD) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in fault_table_rows(rows)]
    errors = [f"- {r['fault']} / {r['api']}: {r['error']}" for r in rows if r.get("error")]
    return lines + (["", "Runs that could not be carried out:", *errors] if errors else [])


def write_fault_png(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Heatmap: faults x (profile, api); green when nothing was lost or duplicated, red when
    something was, grey when the run failed; text: recovery time, failed sends, tier."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    faults = list(dict.fromkeys(r["fault"] for r in rows))
    columns = list(dict.fromkeys((r["profile"] or "plain", r["api"]) for r in rows))
    fig, ax = plt.subplots(figsize=(2.1 * len(columns) + 2.2, 0.75 * len(faults) + 1.6))
    for r in rows:
        i, j = faults.index(r["fault"]), columns.index((r["profile"] or "plain", r["api"]))
        colour = "#bbbbbb" if r.get("error") else ("#2e9e6b" if r["ok"] else "#d55e00")
        ax.add_patch(Rectangle((j, i), 1, 1, facecolor=colour, edgecolor="white",
                               linewidth=2))
        rec = r["recovery_ms"]
        text = (f"lost {r['lost']} dup {r['duplicates']}\n"
                f"recovery {'-' if rec is None else f'{rec / 1000:.1f} s'}\n"
                f"failed {r['failed']}/{r['sent'] + r['failed']} {r['tier_after']}")
        ax.text(j + 0.5, i + 0.5, "run failed" if r.get("error") else text, ha="center",
                va="center", fontsize=7.5, color="white" if not r.get("error") else "black")
    ax.set_xlim(0, len(columns))
    ax.set_ylim(len(faults), 0)
    ax.set_xticks([k + 0.5 for k in range(len(columns))], [f"{p}\n{a}" for p, a in columns])
    ax.set_yticks([k + 0.5 for k in range(len(faults))], faults)
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_title("tierlink NAT lab: faults injected mid-stream (green: nothing lost or "
                 "duplicated)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
