"""Writers of ``bench/results*.json`` and the side-by-side tables in ``BENCHMARKS.md``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tierlink.bench.base import JsonDict
from tierlink.bench.dht_many import render as render_dht_many
from tierlink.bench.packet_cost import render as packet_cost_lines

SYSTEMS = ("tierlink", "aioice_raw", "aiortc_datachannel")

#: (key, label, digits, higher is better)
METRICS: tuple[tuple[str, str, int, bool], ...] = (
    ("connect_ms_median", "connect, median (ms)", 1, False),
    ("connect_ms_p95", "connect, p95 (ms)", 1, False),
    ("connect_open_ms_median", "of which: dial returned, median (ms)", 1, False),
    ("reliable_1k_msgs_per_s", "reliable 1 KiB (msg/s)", 0, True),
    ("reliable_1k_mb_per_s", "reliable 1 KiB (MB/s)", 2, True),
    (
        "reliable_1k_base_packets_msgs_per_s",
        "reliable 1 KiB, packets capped at 1200 B (msg/s)",
        0,
        True,
    ),
    ("reliable_64k_mb_per_s", "reliable 64 KiB (MB/s)", 2, True),
    ("datagram_msgs_per_s", "datagrams 1 KiB, < 1 % loss (msg/s)", 0, True),
    ("datagram_mb_per_s", "datagrams 1 KiB, < 1 % loss (MB/s)", 2, True),
    ("datagram_loss_percent", "datagram loss at that rate (%)", 2, False),
    ("datagram_receiver_cpu_us", "receiver CPU per datagram (µs)", 2, False),
    ("datagram_native_msgs_per_s", "datagrams, counted in the library callback (msg/s)", 0, True),
    ("datagram_native_receiver_cpu_us", "its receiver CPU per datagram (µs)", 2, False),
    ("datagram_native_mmap_msgs_per_s",
     "the same, read buffer mmapped per datagram (glibc at start-up) (msg/s)", 0, True),
    ("datagram_native_mmap_receiver_cpu_us", "its receiver CPU per datagram (µs)", 2, False),
    ("latency_idle_p50_ms", "message latency, idle connection, p50 (ms)", 2, False),
    ("latency_idle_p99_ms", "message latency, idle connection, p99 (ms)", 2, False),
    ("latency_same_p50_ms", "latency with a 64 KiB stream on the same connection, p50 (ms)", 2,
     False),
    ("latency_same_p99_ms", "latency with a 64 KiB stream on the same connection, p99 (ms)", 2,
     False),
    ("latency_same_bulk_mb_per_s", "that stream meanwhile (MB/s)", 2, True),
    ("latency_other_p50_ms", "latency with a 64 KiB stream on another connection, p50 (ms)", 2,
     False),
    ("latency_other_p99_ms", "latency with a 64 KiB stream on another connection, p99 (ms)", 2,
     False),
    ("latency_other_bulk_mb_per_s", "that stream meanwhile (MB/s)", 2, True),
    ("idle_cpu_percent", "idle CPU, blocked in recv (%)", 4, False),
    ("idle_conn_cpu_percent", "idle CPU per connection, 20 idle (quick: 5), dhtnode counted (%)",
     5, False),
    ("idle_conn_wakeups_per_s", "event-loop wake-ups per idle connection (/s)", 3, False),
    ("idle_conn_helper_cpu_percent", "the dhtnode child meanwhile, whole process (%)", 4, False),
    ("rss_kb_per_connection", "RSS per idle connection (KiB)", 0, False),
)

#: Path MTUs up to this one carry the real-MTU targets (Ethernet).
REAL_MTU = 1500
#: Rows where a ratio means nothing (a loss of 0 % is not "0x better").
NO_RATIO = frozenset({"datagram_loss_percent", "idle_conn_helper_cpu_percent"})


def write_json(path: Path, results: JsonDict) -> None:
    """Write results.json (stable key order, trailing newline)."""
    path.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")


def load_json(path: Path) -> JsonDict:
    """Previous results (so a run of some systems keeps the others), or {}."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _fmt(value: Any, digits: int) -> str:
    if not isinstance(value, int | float):
        return "-"
    return f"{value:,.{digits}f}"


def _cell(results: JsonDict, system: str, key: str, digits: int) -> str:
    """A figure as "median (min–max)", or the bare value if it has no spread."""
    value = _get(results, system, key)
    spread = _get(results, system, key + "_spread")
    if not isinstance(value, int | float):
        return "-"
    if isinstance(spread, list) and len(spread) == 2:
        return f"{_fmt(value, digits)} ({_fmt(spread[0], digits)}–{_fmt(spread[1], digits)})"
    return _fmt(value, digits)


def _ratio(a: Any, b: Any) -> str:
    if not isinstance(a, int | float) or not isinstance(b, int | float) or b == 0:
        return "-"
    return f"{a / b:.2f}x"


def _get(results: JsonDict, system: str, key: str) -> Any:
    entry = results.get(system)
    return entry.get(key) if isinstance(entry, dict) else None


def targets(results: JsonDict) -> list[tuple[str, str, str]]:
    """(target, measured, PASS/FAIL/not measured) for each goal of tierlink."""
    t1k = _get(results, "tierlink", "reliable_1k_msgs_per_s")
    raw1k = _get(results, "aioice_raw", "reliable_1k_msgs_per_s")
    rtc1k = _get(results, "aiortc_datachannel", "reliable_1k_msgs_per_s")
    tcon = _get(results, "tierlink", "connect_ms_median")
    rtccon = _get(results, "aiortc_datachannel", "connect_ms_median")
    idle = _get(results, "tierlink", "idle_cpu_percent")
    tconn = _get(results, "tierlink", "idle_conn_cpu_percent")
    rtcconn = _get(results, "aiortc_datachannel", "idle_conn_cpu_percent")

    def check(a: Any, b: Any, want: float, at_least: bool) -> tuple[str, str]:
        if not isinstance(a, int | float) or not isinstance(b, int | float) or b == 0:
            return "-", "not measured"
        r = a / b
        ok = r >= want if at_least else r <= want
        return f"{r:.2f}x", "PASS" if ok else "FAIL"

    rows = [
        ("reliable 1 KiB msg/s >= 0.5x raw aioice", *check(t1k, raw1k, 0.5, True)),
        ("reliable 1 KiB msg/s >= 3x aiortc data channel", *check(t1k, rtc1k, 3.0, True)),
        ("connect median <= 0.5x aiortc's", *check(tcon, rtccon, 0.5, False)),
        ("idle CPU per connection <= aiortc's", *check(tconn, rtcconn, 1.0, False)),
    ]
    mtu = results.get("mtu")
    if isinstance(mtu, int) and mtu <= REAL_MTU:  # the real-MTU targets
        t64 = _get(results, "tierlink", "reliable_64k_mb_per_s")
        rows.append(("reliable 1 KiB msg/s >= 0.8x raw aioice, at MTU 1500",
                     *check(t1k, raw1k, 0.8, True)))
        rows.append(("reliable 64 KiB >= 100 MB/s, at MTU 1500",
                     *check(t64, 100.0, 1.0, True)))
    opened = _get(results, "tierlink", "connections_opened")
    asked = _get(results, "tierlink", "connections_asked")
    if isinstance(opened, int) and isinstance(asked, int):
        rows.append(("1000 connections to one node", f"{opened} of {asked}",
                     "PASS" if opened >= 1000 else "FAIL" if asked >= 1000 else "quick run"))
    if isinstance(idle, int | float):
        rows.append(("idle CPU < 0.1 %", f"{idle:.4f} %", "PASS" if idle < 0.1 else "FAIL"))
    else:
        rows.append(("idle CPU < 0.1 %", "-", "not measured"))
    return rows


METHOD = """\
## How it is measured

`tierlink bench` (code: `src/tierlink/bench/`) runs every system on loopback. The two sides of
every measurement are two separate worker processes (`python -m tierlink.bench.worker SYSTEM
ROLE`, fresh interpreters) started by the parent, which relays their signaling (offers,
answers, timestamps) over pipes; one event loop for both sides would starve and mislead.
Times are CLOCK_MONOTONIC, shared by the processes, so "dialer started" and "callee got it"
can be subtracted. Every step is bounded in count and time.

**Rounds.** Every measurement runs in 3 rounds (`--rounds N`, at least 3), interleaved:
round 1 of each measurement for every system in turn, then round 2, ..., so a change in the
machine's load hits all systems alike. Each figure is the median of its rounds with the
lowest and highest round beside it ("median (min–max)"; in the JSON `<key>` and
`<key>_spread` = `[min, max]`, all round values in `round_values`); a ratio is of the
medians. A figure from one round means little here: aiortc's 1 KiB rate was 932 and 15,983
msg/s in two back-to-back runs. Details (datagram trials, counts) are those of the median
round. A failed round is listed under the run's notes; its figure is the median of the
rounds that succeeded (`rounds` in the JSON says how many). Idle CPU is measured for all
systems at once, once per round.

**Two path MTUs.** Loopback carries 64 KiB packets, which no real path does. `tierlink bench
--mtu 1500` (root) runs the same bench inside a network namespace it creates (`ip netns add`,
`ip -n NS link set lo mtu 1500 up`; removed afterwards, also on failure or Ctrl-C), so every
packet of every system is limited to 1,500 bytes as on Ethernet; its results go to
`bench/results-mtu1500.json`. `make bench` runs both; the JSON's top-level `mtu` is the
loopback MTU the run measured on.

- **connect**: N sequential new connections on one process pair (N=20): dialer starts
  dialing -> first message delivered to the callee's application. tierlink: dial by
  fingerprint (DHT lookup through a fresh local `dhtnode` proxy, offer/answer, ICE, QUIC);
  aiortc: createOffer (full gathering) -> SDP over the pipe -> ICE, DTLS, SCTP, channels
  open -> first message; raw aioice: gather -> candidates over the pipe -> ICE -> first
  datagram. Process start-up and node start-up are not included. A round's figures are
  the median and p95 of its N connects.
- **reliable throughput**: one connection, 20,000 x 1 KiB and 400 x 64 KiB messages (bounded
  by 20 s), from the dialer's first send to the callee's last delivery; a run where any
  message is missing is reported as an error, not as a rate. tierlink keeps 64 sends
  pending (`Connection.submit`: a future per message that resolves on the peer's ack; the
  channel bounds the bytes in flight); aiortc pauses above 1 MiB `bufferedAmount`.
  tierlink probes the path MTU once a channel is open and sends QUIC packets as large as
  the path carries: on loopback 16,383 bytes (aioquic's largest), on 1500-byte Ethernet
  1,452; relayed paths keep 1,200. The row "packets capped at 1200 B" repeats the 1 KiB run
  with the sender capped at 1,200-byte packets (`Connection.limit_packet_size(1200)`): what
  a path without larger packets gets. aiortc's SCTP packets are at most ~1,200 bytes.
  Raw aioice has no reliable mode: its reliable 1 KiB figure is its paced 1 KiB datagram
  ceiling (an upper bound for anything reliable on top of it); it has no 64 KiB figure (a
  64 KiB message does not fit one UDP datagram).
- **datagrams**: 1024-byte datagrams paced at a fixed rate for 1 s per trial; the rate is
  doubled from 2,000/s until a trial fails, then bisected (geometric, 3 steps); a failed
  trial is retried up to twice (shared machine). A trial passes with < 1 % loss and a
  receiver that kept up (delivered rate >= 85 % of the paced rate). Reported: delivered
  msg/s and MB/s of the best passing trial of the round. For every system the receiver is an
  application loop awaiting `recv_datagram` (aioice, aiortc: a queue fed by their
  callbacks, as `aioice.Connection.recv()` does); for raw aioice the search is repeated
  counting inside aioice's datagram callback itself (no queue, no await): the transport's
  own ceiling. A datagram offered while more than 64 KiB of datagrams wait in the sender's
  own queue is dropped by the pacer and counted lost (aiortc's unreliable channel queues
  without bound). aiortc uses an unordered channel with maxRetransmits=0.
- **idle CPU**: both processes idle with one task blocked in recv on an open connection for
  60 s (a minute, so periodic work such as keep-alives, ICE consent checks and tierlink's
  record re-publication every 200 s counts at its rate, not by chance of the window); CPU
  seconds (getrusage) / wall seconds of each process; the larger is reported.
- **idle CPU per connection**: after the rounds, each system's process pair opens idle
  connections until it holds 20 (`--quick`: 5), each with a task blocked in recv, and all
  systems idle together for 5 minutes (`--quick`: 6 s), in 3 consecutive windows (the
  "rounds" of these rows). Per window: CPU seconds of both worker processes plus the
  system's helper processes (tierlink: the dhtnode child its nodes use, read from
  `/proc/<pid>/stat`), / wall seconds / connections; so node-wide work (DHT listens,
  re-publication, the dhtnode's own maintenance) is shared by the connections, as in a
  node that holds them. The bench's two tierlink nodes share one dhtnode (a node on its
  own embeds one: count its row twice for that). Wake-ups: passes of each worker's event
  loop through its selector (a timer or a socket woke it), both workers, per second and
  connection.
- **memory**: RSS (/proc/self/statm) of each process before and after opening 100 more idle
  connections, delta / 100; the larger side is reported. The connections of one round stay
  open through the next (100, 200, 300 open), so a round does not reuse the memory the one
  before freed; all are closed after the last round.
- **latency**: the dialer hands a 100-byte timestamped probe over every 10 ms (200 per
  round, `--quick` 50) without waiting for flow control (tierlink `Connection.submit`,
  aiortc `send` into its buffer); the callee takes delivery time minus send time; p50 and
  p99 of the round. Three modes: idle; with a stream of 64 KiB messages on the same
  connection (sent as the reliable rows send them); with that stream on a second
  connection. The stream's rate meanwhile is beside them. Raw aioice has no reliable mode.
- **through a TURN relay** (tierlink, plain loopback run only): a local coturn on 127.0.0.1
  (TURN over UDP, a static user), both nodes `relay_only`, the pair checked to be relayed;
  reliable 1 KiB and 64 KiB and the idle and same-connection latency, 3 rounds, beside the
  direct figures.
- **many connections to one node** (tierlink, plain loopback run only, one round): one
  callee Node, 4 dialer processes with 4 dials in flight each, all through 2 local
  dhtnodes (callee on one, dialers on both); 1000 connections (`--quick`: 40). Dial rate
  = connections / (first dial start -> last dial end); the callee's RSS, fds and tasks
  before and with all held (per connection, including the bench's echo task); an echo on
  every connection at once; callee CPU over 20 s idle per connection, the dhtnodes'
  apart; dialers close all -> the callee's last connection seen closed; its fds and tasks
  again after 2 s. The callee raises its own RLIMIT_NOFILE and sets
  `AdmissionLimits(max_sessions=64)` (see README "At scale").
- **per-packet budget**: `python -m tierlink.bench.packet_cost` (run by `make bench`).
- **time**: the `--mtu` run skips the relay, the crowd and the 5-minute many-connection
  idle phase (none depends on the path MTU: the loopback run has them). Measured here
  (2 shared cores, load 0.3-2.0), `make bench` on a fresh clone, end to end: 1750 s
  (29 min): set-up and the budget 27 s, loopback run 957 s, `--mtu 1500` run 527 s,
  `--dht-many 100` 239 s. `tierlink bench --quick` 165 s.
- **event loop**: every worker runs asyncio's default loop, as shipped;
  `TIERLINK_BENCH_LOOP=uvloop` runs them on uvloop into `results*-uvloop.json`.
- **allocator**: glibc mmaps asyncio's 256 KiB datagram read buffer per datagram until a
  free raises its mmap threshold (~28 against ~9 µs of receiver CPU per datagram); workers
  pin it above (`TIERLINK_BENCH_MALLOC=heap`, default; `mmap`: glibc's start-up state) and
  raw aioice's callback ceiling is measured in both (tierlink's own sockets read into a
  64 KiB buffer, never mapped). Receiver CPU: least of a search's trials.
- Loopback only (in the `--mtu` namespace too, whose only link is its loopback): raw aioice
  and tierlink gather on 127.0.0.1 through
  `tierlink.transport.aioice_adapter.IceConnection(host_addresses=["127.0.0.1"])`; aiortc
  runs with `iceServers=[]` and, in its worker processes only,
  `aioice.ice.get_host_addresses` patched to return `["127.0.0.1"]`.

Caveat: the machine is small and shared with other sessions; figures are noisy (see the
spreads), so read ratios within one run, not across runs.
"""


#: tierlink through a TURN relay beside its direct figures: (key, label, digits).
RELAY_ROWS: tuple[tuple[str, str, int], ...] = (
    ("reliable_1k_msgs_per_s", "reliable 1 KiB (msg/s)", 0),
    ("reliable_64k_mb_per_s", "reliable 64 KiB (MB/s)", 2),
    ("latency_idle_p50_ms", "message latency, idle, p50 (ms)", 2),
    ("latency_idle_p99_ms", "message latency, idle, p99 (ms)", 2),
    ("latency_same_p50_ms", "latency with a 64 KiB stream on the connection, p50 (ms)", 2),
    ("latency_same_p99_ms", "latency with a 64 KiB stream on the connection, p99 (ms)", 2),
    ("latency_same_bulk_mb_per_s", "that stream meanwhile (MB/s)", 2),
)
#: The many-connection phase: (key, label, digits).
CROWD_ROWS: tuple[tuple[str, str, int], ...] = (
    ("connections_opened", "connections opened (of connections_asked)", 0),
    ("crowd_dial_per_s", "dial rate, all dialers (connections/s)", 1),
    ("rss_kb_per_connection_at_1000", "callee RSS per connection (KiB)", 1),
    ("crowd_fds_per_connection", "callee fds per connection", 2),
    ("crowd_tasks_per_connection", "callee asyncio tasks per connection (incl. the echo task)",
     2),
    ("crowd_idle_cpu_percent_per_connection", "callee idle CPU per connection (%)", 5),
    ("crowd_idle_dht_cpu_percent", "the dhtnodes meanwhile, all (%)", 3),
    ("crowd_echo_mixed", "echo on every connection at once: wrong replies", 0),
    ("crowd_echo_lost", "echo on every connection at once: no reply", 0),
    ("crowd_close_all_s", "dialers close all -> callee saw all closed (s)", 2),
    ("crowd_fds_left_after_close", "callee fds left after close (vs. before)", 0),
    ("crowd_tasks_left_after_close", "callee tasks left after close (vs. before)", 0),
)


def render_relay(results: JsonDict) -> list[str]:
    """tierlink through a local coturn beside its direct figures (empty if not run)."""
    entry = results.get("tierlink")
    if not isinstance(entry, dict) or not any(k.startswith("relay_") for k in entry):
        return []
    lines = ["", "tierlink through a TURN relay (local coturn, TURN over UDP, both nodes "
             "relay-only) beside its direct figures above:", "",
             "| metric | direct | through the relay | relay / direct |", "|---|---:|---:|---:|"]
    for key, label, digits in RELAY_ROWS:
        direct, relayed = entry.get(key), entry.get("relay_" + key)
        lines.append(f"| {label} | {_cell(results, 'tierlink', key, digits)} | "
                     f"{_cell(results, 'tierlink', 'relay_' + key, digits)} | "
                     f"{_ratio(relayed, direct)} |")
    return lines


def render_crowd(results: JsonDict) -> list[str]:
    """The many-connection row block (empty if not run)."""
    entry = results.get("tierlink")
    if not isinstance(entry, dict) or "connections_asked" not in entry:
        return []
    e = entry
    lines = ["", f"Many connections to one node: {e.get('connections_asked')} connections from "
             f"{e.get('crowd_dialers')} dialer processes ({e.get('crowd_dials_in_flight')} "
             f"dials in flight) through {e.get('crowd_dht_nodes')} dhtnodes, one round:", "",
             "| metric | tierlink |", "|---|---:|"]
    lines += [f"| {label} | {_fmt(e.get(key), digits)} |" for key, label, digits in CROWD_ROWS]
    return lines


def run_title(results: JsonDict) -> str:
    """The heading of one run: plain loopback, or the ``--mtu`` namespace."""
    mtu = results.get("mtu", "?")
    loop = results.get("machine", {}).get("loop", "asyncio")
    tail = "" if loop == "asyncio" else f", every worker on {loop}"
    if results.get("netns"):
        return f"MTU {mtu}: inside a network namespace whose loopback has MTU {mtu}{tail}"
    return f"Loopback (MTU {mtu}){tail}"


def render_run(results: JsonDict) -> list[str]:
    """One run's section: machine, the table, the targets, the notes."""
    machine = results.get("machine", {})
    rounds = results.get("plan", {}).get("rounds", "?")
    lines = [
        f"## {run_title(results)}",
        "",
        f"Machine: {machine.get('cores', '?')} cores, Python {machine.get('python', '?')}, "
        f"{machine.get('platform', '?')}; run {machine.get('date', '?')}"
        f"{' (QUICK mode: small counts, not representative)' if results.get('quick') else ''}.",
        f"Versions: {', '.join(f'{k} {v}' for k, v in machine.get('versions', {}).items())}.",
        f"Load average (1/5/15 min) at start {machine.get('loadavg_at_start', '?')}, "
        f"at end {machine.get('loadavg_at_end', '?')}: the machine is shared, figures are noisy.",
        "",
        f"Each figure: the median of {rounds} interleaved rounds, (min–max) of the rounds beside "
        "it; ratios are of the medians.",
        "",
        "| metric | tierlink | raw aioice | aiortc data channel | tierlink / raw aioice "
        "| tierlink / aiortc |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key, label, digits, _ in METRICS:
        vals = [_get(results, s, key) for s in SYSTEMS]
        ratios = (
            ("-", "-") if key in NO_RATIO else (_ratio(vals[0], vals[1]), _ratio(vals[0], vals[2]))
        )
        cells = " | ".join(_cell(results, s, key, digits) for s in SYSTEMS)
        lines.append(f"| {label} | {cells} | {ratios[0]} | {ratios[1]} |")
    lines += render_relay(results)
    lines += render_crowd(results)
    lines += [
        "",
        "Targets (tierlink):",
        "",
        "| target | measured ratio | status |",
        "|---|---:|---|",
    ]
    lines += [f"| {t} | {m} | {s} |" for t, m, s in targets(results)]
    notes = []
    for s in SYSTEMS:
        entry = results.get(s)
        if not isinstance(entry, dict):
            notes.append(f"- `{s}`: not run.")
            continue
        if "error" in entry:
            notes.append(f"- `{s}`: not measured: {entry['error']}")
        for step, err in entry.get("errors", {}).items():
            notes.append(f"- `{s}` {step}: {err}")
        if "reliable_note" in entry:
            notes.append(f"- `{s}`: {entry['reliable_note']}.")
    if notes:
        lines += ["", "Notes of this run:", "", *notes]
    return lines


def render_markdown(runs: list[JsonDict], packet_cost: JsonDict | None = None) -> str:
    """BENCHMARKS.md: one section per run (loopback, then each MTU), the per-packet budget
    (if measured), then the method."""
    lines = [
        "# Benchmarks",
        "",
        "Generated by `tierlink bench` from `bench/results*.json`; do not edit by hand.",
    ]
    for results in runs:
        lines += ["", *render_run(results)]
    for results in runs:
        if isinstance(results.get("dht_many"), dict):
            lines += ["", *render_dht_many(results["dht_many"])]
    if packet_cost:
        lines += packet_cost_lines(packet_cost)
    lines += ["", METHOD]
    return "\n".join(lines)
