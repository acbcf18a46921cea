"""The CLI as a user runs it: separate processes, exit codes, no tracebacks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tierlink.dht.process import free_port

TIERLINK = [sys.executable, "-m", "tierlink.cli"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TIERLINK, *args], capture_output=True, text=True, timeout=60, env=env
    )


def no_traceback(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout


def test_id_new_and_show_json(tmp_path: Path) -> None:
    key = tmp_path / "me.json"
    new = run("id", "new", "--out", str(key))
    assert new.returncode == 0, new.stderr
    fp = new.stdout.strip()
    assert len(fp) == 128
    assert (key.stat().st_mode & 0o777) == 0o600
    show = run("id", "show", str(key), "--json")
    assert show.returncode == 0
    obj = json.loads(show.stdout)
    assert obj["fingerprint"] == fp and obj["algorithm"] == "ML-DSA-87"
    assert len(bytes.fromhex(obj["public_key"])) == 2592


def test_id_new_default_path_uses_xdg(tmp_path: Path) -> None:
    env = dict(os.environ, XDG_DATA_HOME=str(tmp_path))
    new = run("id", "new", env=env)
    assert new.returncode == 0, new.stderr
    assert (tmp_path / "tierlink" / "identity.json").exists()
    show = run("id", "show", "--json", env=env)
    assert json.loads(show.stdout)["fingerprint"] == new.stdout.strip()


def test_id_new_refuses_overwrite(tmp_path: Path) -> None:
    key = tmp_path / "me.json"
    first = run("id", "new", "--out", str(key)).stdout.strip()
    again = run("id", "new", "--out", str(key))
    assert again.returncode == 1 and "--force" in again.stderr
    no_traceback(again)
    assert run("id", "show", str(key), "--json").stdout.count(first) == 1
    forced = run("id", "new", "--out", str(key), "--force")
    assert forced.returncode == 0 and forced.stdout.strip() != first


def test_unreadable_and_corrupt_key_files(tmp_path: Path) -> None:
    key = tmp_path / "me.json"
    run("id", "new", "--out", str(key))
    key.chmod(0o644)
    loose = run("id", "show", str(key))
    assert loose.returncode == 1 and "chmod 600" in loose.stderr
    no_traceback(loose)
    key.chmod(0o600)
    key.write_text("{not json")
    corrupt = run("id", "show", str(key))
    assert corrupt.returncode == 1 and "not a readable identity" in corrupt.stderr
    no_traceback(corrupt)
    missing = run("id", "show", str(tmp_path / "nope.json"))
    assert missing.returncode == 1 and "tierlink id new" in missing.stderr
    if os.geteuid() != 0:  # root reads anything
        key.chmod(0o000)
        unreadable = run("id", "show", str(key))
        assert unreadable.returncode == 1
        no_traceback(unreadable)


def test_bad_arguments_are_usage_errors() -> None:
    bad = run("dht", "serve", "--bootstrap", "host:notaport")
    assert bad.returncode == 2 and "port must be a number" in bad.stderr
    no_traceback(bad)
    assert run("frobnicate").returncode == 2


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_dht_serve_stops_cleanly(sig: signal.Signals) -> None:
    port = free_port(__import__("socket").SOCK_DGRAM, "0.0.0.0")
    proc = subprocess.Popen(
        [*TIERLINK, "dht", "serve", "--port", str(port), "--no-rate-limit"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(3)]
        assert lines[0].startswith("dht: udp") and str(port) in lines[0]
        assert lines[1].startswith("proxy: http://127.0.0.1:")
        child = int(lines[2].split()[1])
        assert psutil.pid_exists(child)
        proc.send_signal(sig)
        assert proc.wait(15) == 0
        deadline = time.monotonic() + 5
        while psutil.pid_exists(child) and time.monotonic() < deadline:
            if psutil.Process(child).status() == psutil.STATUS_ZOMBIE:
                break
            time.sleep(0.05)
        assert not psutil.pid_exists(child) or psutil.Process(child).status() == "zombie"
    finally:
        if proc.poll() is None:
            proc.kill()
