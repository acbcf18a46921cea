"""The DHT lab at scale (``tierlink bench --dht-many``), small: 8 dhtnodes in network
namespaces, two of them leaving and fresh ones joining while peers dial; and the pieces of the
measurement that need no root."""

from __future__ import annotations

import asyncio
import os
import shutil

import pytest

from tierlink import namespaces
from tierlink.bench import dht_lab, dht_many
from tierlink.bench.dht_lab import AccessLink, DhtLab, DhtLabError, lab_hosts
from tierlink.bench.dht_many import ManyPlan, step_times, summary
from tierlink.lab.profiles import PROFILES
from tierlink.wire.dhtkeys import offers_key

FP = "ab" * 64
NEEDS_ROOT = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("dhtnode") is None,
    reason="the DHT lab needs root (network namespaces), `ip` and `dhtnode`",
)


def _ours() -> set[str]:
    head = f"{dht_lab.LAB_HEAD}{os.getpid()}-"
    return {ns for ns in namespaces.existing() if ns.startswith(head)}


@NEEDS_ROOT
def test_dials_succeed_and_records_are_found_through_churn() -> None:
    plan = ManyPlan(nodes=8, dialers=2, dials=4, churn_per_min=30.0, churn_share=0.5,
                    down_s=1.0, settle_s=2.0, churn_warmup_s=4.0, dial_interval_s=0.5)
    result = asyncio.run(asyncio.wait_for(dht_many.measure(plan), 300))
    quiet, churn = result["phases"]["quiet"], result["phases"]["churn"]
    assert quiet["dials_ok"] == quiet["dials_tried"] == 4, quiet["dials"]
    assert churn["left"] >= 2 and churn["joined"] >= 2 and not churn["failed_joins"]
    assert churn["dials_ok"] == 4, churn["dials"]
    assert all(d["lookup"] is not None for d in churn["dials"]), "a record was not found"
    assert all(d["offer"] is not None and d["answer"] is not None for d in churn["dials"])
    for key in ("nodes", "churn_per_min", "lookup_ms_p50", "lookup_ms_p95", "dial_ms_p50",
                "dial_ms_p95"):
        assert result[key] is not None, key
    assert not _ours(), "the lab's namespaces were removed"


def _mobile() -> AccessLink:
    p = PROFILES["mobile"]
    return AccessLink(p.name, p.link_delay_ms, p.link_jitter_ms, p.link_loss, p.rate_mbit)


@NEEDS_ROOT
def test_peers_on_the_mobile_profile_dial_through_their_link_emulators() -> None:
    plan = ManyPlan(nodes=6, dialers=2, dials=3, churn_per_min=30.0, churn_share=0.5,
                    down_s=1.0, settle_s=2.0, churn_warmup_s=3.0, dial_interval_s=0.5,
                    access=_mobile())
    result = asyncio.run(asyncio.wait_for(dht_many.measure(plan), 300))
    assert result["profile"] == "mobile"
    for name in ("quiet", "churn"):
        phase = result["phases"][name]
        assert phase["dials_ok"] == phase["dials_tried"] == 3, phase["dials"]
        assert phase["emulator"]["links"] == 3, "the callee's and both dialers' links"
    assert result["phases"]["churn"]["emulator"]["moved"] > 0
    assert not _ours(), "the lab's namespaces were removed"


@NEEDS_ROOT
def test_link_emulators_end_with_the_lab_on_an_error() -> None:
    pids: list[int] = []
    with pytest.raises(RuntimeError, match="boom"), lab_hosts() as hosts:
        hosts.create([("p", 1), ("p", 2)], _mobile())
        pids = [proc.pid for proc, _ in hosts.links.values()]
        assert len(pids) == 2 and all(namespaces.pid_alive(pid) for pid in pids)
        raise RuntimeError("boom")
    assert pids and not any(namespaces.pid_alive(pid) for pid in pids)
    assert not _ours()


@NEEDS_ROOT
def test_namespaces_are_removed_when_the_lab_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(*args: object, **kwargs: object) -> list[object]:
        assert _ours(), "the namespaces exist while nodes start"
        raise DhtLabError("a node did not start")

    monkeypatch.setattr(dht_lab, "start_nodes", broken)

    async def run() -> None:
        with lab_hosts() as hosts:
            async with DhtLab(hosts, 3):
                pass

    with pytest.raises(DhtLabError, match="did not start"):
        asyncio.run(run())
    assert not _ours()


def test_the_lab_needs_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(DhtLabError, match="needs root"), lab_hosts():
        pass


def _ev(ev: str, key: str, h: str, t: float) -> dict[str, object]:
    return {"ev": ev, "key": key, "h": h, "t": t}


def test_step_times_match_the_two_peers_events() -> None:
    answer_key = "c" * 40
    reply = {"ok": True, "dial_ms": 40.0, "lookup_ms": 5, "events": [
        _ev("put", offers_key(FP), "o1", 10.000),
        _ev("listen", answer_key, "", 10.001),
        _ev("value", answer_key, "a1", 10.030),
    ]}
    callee = [
        _ev("value", offers_key(FP), "o0", 1.0),  # an earlier dial's offer
        _ev("value", offers_key(FP), "o1", 10.004),
        _ev("put", answer_key, "a1", 10.010),
    ]
    steps = step_times(reply, callee, FP)
    assert steps == {"ok": True, "lookup": 5, "offer": 4.0, "callee": 6.0, "answer": 20.0,
                     "dial": 40.0, "error": None, "t0": None, "answer_key": answer_key,
                     "answer_via": "answer"}


def test_step_times_of_an_answer_first_delivered_under_the_offers_key() -> None:
    answer_key = "c" * 40
    reply = {"ok": True, "dial_ms": 30.0, "lookup_ms": 5, "events": [
        _ev("put", offers_key(FP), "o1", 10.000),
        _ev("value", offers_key(FP), "a0", 10.001),  # an earlier dial's answer, still stored
        _ev("value", offers_key(FP), "o1", 10.002),  # the dialer's own offer, listened back
        _ev("value", offers_key(FP), "a1", 10.015),
        _ev("value", answer_key, "a1", 11.100),
    ]}
    callee = [
        _ev("put", offers_key(FP), "a0", 2.0),
        _ev("value", offers_key(FP), "o1", 10.004),
        _ev("put", offers_key(FP), "a1", 10.010),
        _ev("put", answer_key, "a1", 10.011),
    ]
    steps = step_times(reply, callee, FP)
    assert (steps["offer"], steps["callee"], steps["answer"]) == (4.0, 6.0, 5.0)
    assert steps["answer_key"] == answer_key and steps["answer_via"] == "offers"


def test_step_times_of_a_failed_dial_are_missing_not_made_up() -> None:
    steps = step_times({"ok": False, "error": "DialTimeout: x", "events": []}, [], FP)
    assert steps["offer"] is None and steps["answer"] is None and steps["dial"] is None


def test_summary_percentiles() -> None:
    assert summary([None, None]) == {"n": 0}
    s = summary([float(v) for v in range(1, 21)] + [None])
    assert s == {"n": 20, "p50": 10.5, "p95": 19.0, "max": 20.0}
