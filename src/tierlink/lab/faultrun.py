"""The fault matrix: a steady message stream between two NAT'ed peers, a fault injected
mid-stream (:mod:`tierlink.lab.faults`), and what the application saw once the run settles.

Each run builds two fresh port-restricted sites (the profile's emulated WAN links, if any),
starts a receiver (:mod:`tierlink.lab.faultpeer`) and a sender whose stream goes through
``node.send`` (api ``send``) or one ``Connection`` (api ``connection``), injects the fault
when the sender reports it is midway, waits for the sender's result, stops the receiver and
reads its fsync'ed log of handled messages. A run's record:

* ``sent``: messages the API accepted (``send`` returned; ``Connection.send`` completed);
  ``failed``: sends that raised (the caller saw it);
* ``delivered``: distinct messages the receiving application handled; ``duplicates``: extra
  handlings of a message; ``lost``: accepted but never handled after settling;
* ``recovery_ms``: from the moment the fault took effect to the first handling of a message
  handed to the API after that moment (None: none was handled);
* ``tier_after``: ``send``: the tier of the last acknowledged message; ``connection``: the
  tier of the connection in use at the end; ``path_before`` / ``path_after``: the path of
  the sender's connection to the receiver at the fault and at the end (``none``: no open
  connection); ``redials`` (``connection``): new connections the stream needed;
  ``path_changes``: ICE restarts that moved a sender's connection to a new pair (the same
  connection continued; the path type may stay the same);
* ``facts``: what the fault reported, the receiver's stats, the sender's path migration
  counters (``migration``) and the last lines of both peers' stderr (``logs``).
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tierlink.lab.faults import CONNTRACK_FAULTS, FAULTS, Fault, FaultContext
from tierlink.lab.netns import LabError, LabUnavailable, python_argv
from tierlink.lab.profiles import LinkProfile
from tierlink.lab.runner import LineReader
from tierlink.lab.services import TURN_PORT
from tierlink.lab.site import Site
from tierlink.lab.topology import INTERNET_IP, Lab
from tierlink.lab.worlds import world_probe

APIS = ("send", "connection")
FAULT_PRESET = "port-restricted"
FaultProgress = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class StreamSettings:
    """The stream of one run: ``count`` messages (of ``payload_size`` bytes, at least their
    header) at ``rate`` per second, the fault after message ``fault_at``, then at most
    ``settle`` seconds for acknowledgements (``send``: settled earlier once none came for
    ``settle_idle`` seconds); ``turn``: the peers may use the lab's TURN."""

    count: int = 400
    rate: float = 20.0
    fault_at: int = 60
    settle: float = 180.0
    settle_idle: float = 20.0
    ice_timeout: float = 8.0
    payload_size: int = 0
    turn: bool = True


@dataclass
class _Peers:
    """The processes of one run and how to start the receiver again."""

    lab: Lab
    common: list[str]
    receiver_ns: str
    data: Path
    log: Path
    clock_offset_s: float
    receiver: subprocess.Popen[str] | None = None
    sender: subprocess.Popen[str] | None = None
    fingerprint: str = ""
    events: LineReader | None = None
    receiver_stats: dict[str, Any] = field(default_factory=dict)

    def start_receiver(self) -> None:
        argv = python_argv("tierlink.lab.faultpeer", "receiver", *self.common,
                           "--data-dir", str(self.data / "receiver"), "--log", str(self.log),
                           "--clock-offset", str(self.clock_offset_s))
        with (self.data / "receiver.err").open("a") as err:
            proc = self.lab.run.spawn(self.receiver_ns, argv, stdin=subprocess.PIPE,
                                      stderr=err)
        assert proc.stdout is not None
        self.events = LineReader(proc.stdout)
        ready = self.events.json(timeout=60)
        if ready is None or "fingerprint" not in ready:
            raise LabError("fault run: the receiver did not start")
        self.receiver = proc
        self.fingerprint = str(ready["fingerprint"])

    def restart_receiver(self) -> None:
        """SIGKILL the receiver and start it again (same identity and data directory)."""
        if self.receiver is not None:
            self.receiver.kill()
            self.receiver.wait(timeout=5)
        self.start_receiver()

    def stop(self) -> None:
        """Let the receiver finish (its stats go to :attr:`receiver_stats`), stop both."""
        if self.receiver is not None and self.receiver.stdin is not None:
            with contextlib.suppress(OSError):
                self.receiver.stdin.close()
            while self.events is not None and (event := self.events.json(timeout=15)):
                if event.get("event") == "stats":
                    self.receiver_stats = {k: v for k, v in event.items() if k != "event"}
                    break
        for proc in (self.sender, self.receiver):
            if proc is None:
                continue
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def read_log(path: Path) -> list[dict[str, Any]]:
    """The receiver's handled messages (a torn last line from a SIGKILL is skipped)."""
    import json

    out = []
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
    return out


def summarize_run(
    fault: str, profile: str | None, api: str, result: dict[str, Any],
    handled: list[dict[str, Any]], fault_started: float | None, fault_at: int,
) -> dict[str, Any]:
    """One row of the fault matrix from the sender's result and the receiver's log."""
    seqs = Counter(int(h["seq"]) for h in handled)
    sent = [int(s) for s in result.get("sent", [])]
    after = [float(h["t"]) for h in handled
             if fault_started is not None and (
                 float(h["sent_at"]) >= fault_started if h.get("sent_at")
                 else int(h["seq"]) > fault_at)]
    recovery = (round((min(after) - fault_started) * 1000, 1)
                if after and fault_started is not None else None)
    lost = sorted(s for s in sent if s not in seqs)
    return {
        "fault": fault, "profile": profile, "api": api,
        "sent": len(sent), "failed": len(result.get("failed", [])),
        "delivered": len(seqs), "lost": len(lost),
        "duplicates": sum(n - 1 for n in seqs.values()),
        "recovery_ms": recovery,
        "tier_after": result.get("tier_after", "none"),
        "path_before": result.get("path_before", "none"),
        "path_after": result.get("path_after", "none"),
        "redials": result.get("redials"),
        "path_changes": result.get("path_changes"),
        "delivered_tiers": dict(Counter(str(h.get("tier")) for h in handled)),
        "lost_seqs": lost[:20],
    }


def _common_args(lab: Lab, fault: Fault, settings: StreamSettings) -> list[str]:
    server = f"{INTERNET_IP}:{TURN_PORT}"
    args = ["--dht", lab.dht_proxy, "--stun", server, "--ice-timeout", str(settings.ice_timeout)]
    if settings.turn:
        args += ["--turn", server]
    return [*args, "--relay-only"] if fault.relay_only else args


def fault_run(
    lab: Lab, fault: Fault, profile: LinkProfile | None, api: str,
    settings: StreamSettings = StreamSettings(),
    presets: tuple[str, str] = (FAULT_PRESET, FAULT_PRESET),
) -> dict[str, Any]:
    """One fault x profile x api run on fresh sites of ``presets`` (sender's, receiver's);
    returns its row (``error`` set when the run itself could not be carried out)."""
    sites: list[Site] = []
    tag = secrets.token_hex(3)
    data = lab.run.workdir / f"fault-{tag}"
    data.mkdir()
    peers: _Peers | None = None
    ctx: FaultContext | None = None
    result: dict[str, Any] = {}
    error = None
    record_ms: float | None = None
    try:
        for preset in presets:
            sites.append(lab.add_site(preset, profile))
        (a_ns, a_addr), (b_ns, _) = sites[0].hosts[0], sites[1].hosts[0]
        tries = [wait_reachable(lab, ns) for ns in (a_ns, b_ns)]
        peers = _Peers(lab, _common_args(lab, fault, settings), b_ns, data,
                       data / "handled.jsonl", fault.clock_offset_s)
        peers.start_receiver()
        peers.sender = lab.run.spawn(a_ns, python_argv(
            "tierlink.lab.faultpeer", "sender", *peers.common, "--data-dir",
            str(data / "sender"), "--to", peers.fingerprint, "--api", api,
            "--count", str(settings.count), "--rate", str(settings.rate),
            "--fault-at", str(settings.fault_at), "--settle", str(settings.settle),
            "--settle-idle", str(settings.settle_idle),
            "--payload-size", str(settings.payload_size)),
            stderr=(data / "sender.err").open("w"))
        assert peers.sender.stdout is not None
        events = LineReader(peers.sender.stdout)
        ctx = FaultContext(lab, a_ns, a_addr, f"{lab.prefix}-r{sites[0].index}",
                           sites[0].index, peers.restart_receiver)
        ctx.facts["proxy_probes"] = tries
        wait = settings.count / settings.rate + settings.settle + settings.ice_timeout + 60
        while (event := events.json(timeout=wait)) is not None:
            if event.get("event") == "midway":
                fault.inject(ctx)
                if fault.name == "dht-restart":
                    record_ms = _record_back(lab, b_ns, peers.fingerprint)
            elif event.get("event") == "result":
                result = event
                break
        if not result:
            error = "the sender gave no result"
    except LabError as exc:
        error = str(exc)
    finally:
        if peers is not None:
            peers.stop()
        for site in sites:
            lab.remove_site(site)
    started = ctx.started if ctx is not None and ctx.started else None
    row = summarize_run(fault.name, profile.name if profile else None, api, result,
                        read_log(data / "handled.jsonl"), started, settings.fault_at)
    facts = ctx.facts if ctx is not None else {}
    if peers is not None:
        facts["receiver"] = peers.receiver_stats
    facts["migration"] = result.get("migration")
    facts["logs"] = {name: _log_tail(data / f"{name}.err") for name in ("sender", "receiver")}
    row.update(facts=facts, error=error,
               errors=result.get("errors", []), max_packet_size=result.get("max_packet_size"))
    if fault.name == "dht-restart":
        row["record_back_ms"] = record_ms
    row["ok"] = error is None and row["lost"] == 0 and row["duplicates"] == 0
    return row


#: Lines of each peer's stderr a run's facts keep (the last ones).
LOG_TAIL = 40


def _log_tail(path: Path) -> list[str]:
    """The last :data:`LOG_TAIL` lines of a peer's stderr (its notes and tierlink's log)."""
    with contextlib.suppress(FileNotFoundError):
        return path.read_text(errors="replace").splitlines()[-LOG_TAIL:]
    return []


def wait_reachable(lab: Lab, ns: str, attempts: int = 8) -> int:
    """Wait until a new site's host reaches the lab's DHT proxy (its first packets can meet
    neighbour entries still being resolved); returns the probes it took, LabError if none
    got through."""
    for attempt in range(1, attempts + 1):
        got = world_probe(lab.run, ns, "http", "--to", lab.dht_proxy.removeprefix("http://"),
                          "--path", "/")
        if got.get("ok"):
            return attempt
        time.sleep(0.5)
    raise LabError(f"{ns} does not reach the DHT proxy {lab.dht_proxy}")


def _record_back(lab: Lab, ns: str, fingerprint: str, timeout: float = 60.0) -> float | None:
    """After a DHT restart: ms until the receiver's record is in the DHT again (None: not
    within ``timeout``)."""
    proc = lab.run.spawn(ns, python_argv("tierlink.lab.faultpeer", "record", "--dht",
                                         lab.dht_proxy, "--fingerprint", fingerprint,
                                         "--timeout", str(timeout)))
    assert proc.stdout is not None
    got = LineReader(proc.stdout).json(timeout=timeout + 15)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
    found = got.get("found_ms") if got else None
    return float(found) if found is not None else None


#: No fault at all: the stream alone (used to check what a preset's path carries).
NO_FAULT = Fault("none", "no fault", lambda ctx: None)
#: The channel check across the path-MTU black hole: messages of 4000 bytes, so every
#: message needs full-size packets; no TURN, so the path is direct and probed.
PMTU_SETTINGS = StreamSettings(count=60, fault_at=59, settle=30.0, settle_idle=10.0,
                               payload_size=4000, turn=False)


def pmtu_channel_check(lab: Lab, api: str) -> dict[str, Any]:
    """A stream from behind the ``pmtu-blackhole`` preset (WAN MTU 1280, ICMP dropped) to a
    port-restricted peer; the row's ``max_packet_size`` is the QUIC packet size the
    channel settled on (must fit the 1280 hop) and ``lost`` must stay 0."""
    return fault_run(lab, NO_FAULT, None, api, PMTU_SETTINGS,
                     presets=("pmtu-blackhole", FAULT_PRESET))


def run_faults(
    names: Sequence[str], profiles: Sequence[LinkProfile | None] = (None,),
    apis: Sequence[str] = APIS, progress: FaultProgress | None = None,
    settings: StreamSettings = StreamSettings(),
) -> list[dict[str, Any]]:
    """Every fault x profile x api run, in one lab; returns the rows."""
    unknown = [n for n in names if n not in FAULTS]
    if unknown:
        raise LabError(f"unknown fault {', '.join(unknown)} (choose from {', '.join(FAULTS)})")
    if shutil.which("conntrack") is None and set(names) & set(CONNTRACK_FAULTS):
        raise LabUnavailable("the NAT faults need `conntrack` (apt-get install conntrack)")
    rows = []
    with Lab(dht=True, turn=True) as lab:
        for profile in profiles:
            for name in names:
                for api in apis:
                    start = time.monotonic()
                    row = fault_run(lab, FAULTS[name], profile, api, settings)
                    row["run_s"] = round(time.monotonic() - start, 1)
                    rows.append(row)
                    if progress is not None:
                        progress(row)
    return rows


def fault_line(row: dict[str, Any]) -> str:
    """One progress line per finished run (stderr)."""
    rec = row["recovery_ms"]
    line = (f"[{row['profile'] or 'plain'}] {row['fault']:<16} {row['api']:<10} "
            f"sent {row['sent']:>3} failed {row['failed']:>3} delivered {row['delivered']:>3} "
            f"lost {row['lost']:>3} dup {row['duplicates']:>2} "
            f"recovery {'-' if rec is None else f'{rec:.0f} ms':>9} "
            f"tier {row['tier_after']:<7} path {row['path_before']}->{row['path_after']}")
    if row.get("path_changes"):
        line += f" ({row['path_changes']} path change{'s' if row['path_changes'] > 1 else ''})"
    if row.get("error"):
        line += f"  ERROR {row['error'][:80]}"
    return line + ("  ok" if row["ok"] else "  NOT OK")

