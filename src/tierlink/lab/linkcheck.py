"""How well the link emulator does what a profile asks: accuracy and packet-rate capacity.

* :func:`check_profile`: two ``open`` sites on the profile (so the path crosses two emulated
  links each way, as between two lab peers), ``count`` numbered UDP echoes one per
  ``interval`` from one host to the other; requested vs measured median RTT, RTT standard
  deviation and one-way loss (``1 - sqrt(replies / requests)``), and whether each is within
  :func:`tolerances`.
* :func:`measure_capacity`: one site on a zero-delay copy of the emulator, a flood of 100-byte
  datagrams from the host to the internet at rising rates; the capacity is the highest rate of
  which at least 99 % arrived.

Both build their own :class:`~tierlink.lab.topology.Lab` unless given one.
"""

from __future__ import annotations

import json
import math
import signal
import statistics
from collections.abc import Sequence
from typing import Any

from tierlink.lab.netns import LabError, python_argv
from tierlink.lab.profiles import PROFILES, LinkProfile
from tierlink.lab.topology import INTERNET_IP, Lab

ECHO_PORT = 7000
SINK_PORT = 7001
#: Rates (datagrams/s) tried by :func:`measure_capacity`, one second each.
CAPACITY_RATES = (1000, 2000, 4000, 8000, 16000, 32000)
#: A rate counts as carried when this share of it arrived.
CARRIED = 0.99


def tolerances(profile: LinkProfile, count: int) -> dict[str, float]:
    """Allowed |measured - requested| for median RTT (ms), RTT stdev (ms) and one-way loss.

    RTT: 10 % or 3 ms (scheduling on a shared 2-core machine adds a little to every hop);
    RTT standard deviation (from the IQR, :func:`robust_sigma`): half the expected value plus
    2 ms; loss: four binomial standard deviations of the
    round-trip loss over ``count`` echoes, plus 0.2 %.
    """
    p = profile.round_trip_loss
    return {
        "rtt_ms": max(3.0, 0.1 * profile.rtt_ms),
        "stdev_ms": 0.5 * profile.rtt_stdev_ms + 2.0,
        "loss": 4 * math.sqrt(max(p * (1 - p), 1e-6) / count) + 0.002,
    }


def check_profile(
    profile: LinkProfile, *, count: int = 400, interval: float = 0.02, lab: Lab | None = None
) -> dict[str, Any]:
    """Measure one profile end to end (see the module doc); returns a row of the table."""
    if lab is None:
        with Lab(turn=False, dht=False) as own:
            return check_profile(profile, count=count, interval=interval, lab=own)
    sites = [lab.add_site("open", profile) for _ in range(2)]
    try:
        (ns_a, _), (ns_b, addr_b) = sites[0].hosts[0], sites[1].hosts[0]
        echo = lab.run.spawn(ns_b, python_argv("tierlink.lab.linkprobe", "echo", "--bind",
                                               f"{addr_b}:{ECHO_PORT}", "--duration", "300"))
        assert echo.stdout is not None
        if "ready" not in echo.stdout.readline():
            raise LabError("echo server did not start")
        wait = 2.0 + 3 * profile.rtt_ms / 1000
        client = lab.run.spawn(ns_a, python_argv(
            "tierlink.lab.linkprobe", "rtt", "--to", f"{addr_b}:{ECHO_PORT}",
            "--count", str(count), "--interval", str(interval), "--wait", str(wait)))
        out, err = client.communicate(timeout=count * interval + wait + 30)
        if client.returncode != 0:
            raise LabError(f"rtt probe failed: {err.strip()[-300:]}")
        raw = json.loads(out)
    finally:
        for site in sites:
            lab.remove_site(site)
    return {**summarize(profile, raw["sent"], raw["rtt_ms"]), "reordered": raw["reordered"]}


def summarize(profile: LinkProfile, sent: int, rtts: Sequence[float]) -> dict[str, Any]:
    """Requested vs measured figures of one profile from its echo RTTs."""
    tol = tolerances(profile, max(sent, 1))
    got = len(rtts)
    median = statistics.median(rtts) if rtts else None
    stdev = statistics.pstdev(rtts) if len(rtts) > 1 else None
    sigma = robust_sigma(rtts)
    one_way_loss = 1 - math.sqrt(got / sent) if sent else None
    rt_loss = 1 - got / sent if sent else None
    ok = {
        "rtt": median is not None and abs(median - profile.rtt_ms) <= tol["rtt_ms"],
        "jitter": sigma is not None and abs(sigma - profile.rtt_stdev_ms) <= tol["stdev_ms"],
        "loss": rt_loss is not None and abs(rt_loss - profile.round_trip_loss) <= tol["loss"],
    }
    return {
        "profile": profile.name, "sent": sent, "received": got,
        "rtt_ms": {"requested": profile.rtt_ms, "measured": _r(median)},
        "rtt_stdev_ms": {"requested": round(profile.rtt_stdev_ms, 2), "measured": _r(sigma),
                         "plain_stdev": _r(stdev)},
        "loss": {"requested": profile.loss, "measured": _r(one_way_loss, 4)},
        "rtt_p5_p95_ms": _spread(rtts),
        "tolerance": {k: round(v, 4) for k, v in tol.items()},
        "within": ok, "ok": all(ok.values()),
    }


def robust_sigma(rtts: Sequence[float]) -> float | None:
    """Standard deviation estimated from the interquartile range (IQR / 1.349): the jitter
    the emulator adds, without the rare scheduling stalls of a busy shared machine."""
    if len(rtts) < 8:
        return None
    q = statistics.quantiles(rtts, n=4)
    return (q[2] - q[0]) / 1.349


def _r(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def _spread(rtts: Sequence[float]) -> list[float] | None:
    if len(rtts) < 20:
        return None
    q = statistics.quantiles(rtts, n=20)
    return [round(q[0], 2), round(q[-1], 2)]


def measure_capacity(
    *, rates: Sequence[int] = CAPACITY_RATES, lab: Lab | None = None
) -> dict[str, Any]:
    """Datagrams/s the emulator carries (see the module doc): ``capacity_pps`` and per-rate
    delivery."""
    if lab is None:
        with Lab(turn=False, dht=False) as own:
            return measure_capacity(rates=rates, lab=own)
    flat = LinkProfile("capacity", 0.0, 0.0, 0.0, None, "no delay, no loss, no rate")
    site = lab.add_site("open", flat)
    try:
        ns, _ = site.hosts[0]
        sink = lab.run.spawn(lab.internet, python_argv(
            "tierlink.lab.linkprobe", "sink", "--bind", f"{INTERNET_IP}:{SINK_PORT}",
            "--duration", str(len(rates) * 2 + 30)))
        assert sink.stdout is not None
        if "ready" not in sink.stdout.readline():
            raise LabError("sink did not start")
        flood = lab.run.spawn(ns, python_argv(
            "tierlink.lab.linkprobe", "flood", "--to", f"{INTERNET_IP}:{SINK_PORT}",
            "--rates", ",".join(str(r) for r in rates)))
        out, err = flood.communicate(timeout=len(rates) * 3 + 30)
        if flood.returncode != 0:
            raise LabError(f"flood failed: {err.strip()[-300:]}")
        sent = json.loads(out)["sent"]
        sink.send_signal(signal.SIGTERM)
        got = json.loads(sink.communicate(timeout=10)[0].strip().splitlines()[-1])["received"]
    finally:
        lab.remove_site(site)
    steps = [{"rate": rate, "sent": s, "received": int(got.get(str(i), 0))}
             for i, (rate, s) in enumerate(zip(rates, sent, strict=True))]
    carried = [st["rate"] for st in steps if st["sent"] and st["received"] >= CARRIED * st["sent"]]
    return {"capacity_pps": max(carried, default=0), "steps": steps,
            "note": "lower bound: the Python flood and sink may saturate first"}


def emulator_check(names: Sequence[str] | None = None, *, count: int = 400) -> dict[str, Any]:
    """Accuracy of each named profile (default all) and the emulator's capacity, one lab."""
    with Lab(turn=False, dht=False) as lab:
        rows = [check_profile(PROFILES[n], count=count, lab=lab) for n in names or PROFILES]
        capacity = measure_capacity(lab=lab)
    return {"profiles": rows, "capacity": capacity}


def format_check(result: dict[str, Any]) -> str:
    """The check as a markdown table (requested vs measured) plus the capacity line."""
    lines = ["RTT sd: standard deviation of the RTT (measured: IQR / 1.349).", "",
             "| profile | RTT req | RTT meas | RTT sd req | RTT sd meas | loss req "
             "| loss meas | p5-p95 | ok |", "|---|---|---|---|---|---|---|---|---|"]
    for row in result["profiles"]:
        spread = row["rtt_p5_p95_ms"]
        lines.append(
            f"| {row['profile']} | {row['rtt_ms']['requested']} ms "
            f"| {row['rtt_ms']['measured']} ms | {row['rtt_stdev_ms']['requested']} ms "
            f"| {row['rtt_stdev_ms']['measured']} ms | {row['loss']['requested']:.2%} "
            f"| {(row['loss']['measured'] or 0):.2%} "
            f"| {'-' if spread is None else f'{spread[0]}-{spread[1]} ms'} "
            f"| {'yes' if row['ok'] else '**NO**'} |")
    cap = result.get("capacity")
    if cap:
        lines += ["", f"capacity: {cap['capacity_pps']} datagrams/s carried with >= "
                  f"{CARRIED:.0%} delivery ({cap['note']})"]
    return "\n".join(lines)
