"""The lab's topology: every preset passes its probes, and every run cleans up after itself."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tierlink.lab.nat import CLASSIC, PRESETS
from tierlink.lab.netns import STATE_DIR, cleanup_stale, run
from tierlink.lab.topology import Lab, PresetMismatch

pytestmark = pytest.mark.lab


def _namespaces(prefix: str) -> list[str]:
    out = run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in out.splitlines() if line.startswith(prefix + "-")]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] != "Z"


def test_every_preset_passes_its_probes() -> None:
    """The classic presets (the real-world ones: tests/lab/test_lab_worlds.py)."""
    with Lab(dht=False) as lab:
        for preset in CLASSIC:
            site = lab.add_site(preset)
            result = lab.verify(site)  # raises PresetMismatch if the preset lies
            spec = PRESETS[preset]
            assert (result["mapping"], result["filtering"]) == (spec.mapping, spec.filtering)
            if spec.hairpin:
                assert result["hairpin"]["received"]
            lab.remove_site(site)
            assert not any(ns in _namespaces(lab.prefix) for ns in site.namespaces)


def test_probe_catches_a_preset_that_lies() -> None:
    with Lab(dht=False, turn=False) as lab:
        site = lab.add_site("port-restricted")
        site.preset = "full-cone"  # the rules are port-restricted: the probe must notice
        with pytest.raises(PresetMismatch) as info:
            lab.verify(site)
        assert info.value.result["filtering"] == "address-and-port-dependent"


def test_cleanup_after_exception() -> None:
    with pytest.raises(RuntimeError), Lab(dht=True) as lab:
        prefix = lab.prefix
        lab.add_site("symmetric")
        pids = [p.pid for p in lab.run.processes]
        assert len(_namespaces(prefix)) == 3
        raise RuntimeError("boom")
    assert _namespaces(prefix) == []
    assert not (STATE_DIR / f"{prefix}.json").exists()
    assert not any(_alive(pid) for pid in pids)


_CHILD = """
import json, sys, time
from tierlink.lab.topology import Lab
with Lab(dht=False) as lab:
    lab.add_site("port-restricted")
    print(json.dumps({"prefix": lab.prefix, "pids": [p.pid for p in lab.run.processes]}),
          flush=True)
    time.sleep(60)
"""


def _start_child() -> tuple[subprocess.Popen[str], str, list[int]]:
    child = subprocess.Popen([sys.executable, "-c", _CHILD], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    info = json.loads(child.stdout.readline())
    assert len(_namespaces(info["prefix"])) == 3
    return child, info["prefix"], info["pids"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cleanup_on_signal(sig: signal.Signals) -> None:
    child, prefix, pids = _start_child()
    child.send_signal(sig)
    child.wait(timeout=20)
    assert _namespaces(prefix) == []
    assert not (STATE_DIR / f"{prefix}.json").exists()
    assert not any(_alive(pid) for pid in pids)


def test_cleanup_stale_removes_a_killed_run() -> None:
    child, prefix, pids = _start_child()
    child.kill()  # SIGKILL: no chance to clean up
    child.wait(timeout=10)
    assert len(_namespaces(prefix)) == 3  # leftovers, including coturn still running
    removed = cleanup_stale()
    assert sorted(removed) == sorted(f"{prefix}-{r}" for r in ("i", "r1", "h1"))
    assert _namespaces(prefix) == []
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in pids)


def test_cleanup_stale_leaves_a_live_run_alone() -> None:
    with Lab(dht=False, turn=False) as lab:
        assert lab.prefix + "-i" not in cleanup_stale()
        assert _namespaces(lab.prefix) == [lab.prefix + "-i"]


def test_forward_drop_is_what_keeps_the_lan_unreachable() -> None:
    """Measured trap: the input-hook drop fixes EIM but does not stop a neighbour that routes
    the LAN prefix via the router's WAN; the forward-hook drop does."""
    with Lab(dht=False, turn=False) as lab:
        site = lab.add_site("port-restricted")
        assert lab.verify(site)["lan_exposed"] is False
        router = next(ns for ns in site.namespaces if ns.endswith(f"-r{site.index}"))
        run(["ip", "netns", "exec", router, "nft", "flush", "chain", "ip", "lab", "c_forward"])
        result = lab.probe(site)
        assert result["lan_exposed"] is True and not result["ok"]
