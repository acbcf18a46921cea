"""``tierlink bench --mtu N``: the whole bench inside a network namespace whose loopback
carries N-byte packets, and the namespace's removal whatever happens.

The parent creates ``tlbench-<pid>`` (``ip netns add``; ``ip -n NS link set lo mtu N up``),
runs ``python -m tierlink.bench.runner`` inside it (``ip netns exec``) with
:data:`NETNS_ENV` set, so that process measures instead of creating another namespace, and
removes the namespace (its processes first) on success, failure, Ctrl-C or SIGTERM. A
namespace left by a parent that was killed outright is removed by the next run.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType

from tierlink import namespaces
from tierlink.bench.base import JsonDict
from tierlink.errors import TierlinkError

#: Set (to the namespace's name) in the environment of the run inside the namespace.
NETNS_ENV = "TIERLINK_BENCH_NETNS"
NETNS_HEAD = "tlbench-"
#: How long the run inside may take to stop its workers after Ctrl-C before it is killed.
STOP_GRACE_S = 20.0
SIOCGIFMTU = 0x8921


class BenchError(TierlinkError):
    """The benchmark cannot run as asked (a peer library missing, no root for ``--mtu``)."""


def loopback_mtu() -> int:
    """The MTU of this network namespace's loopback: the path MTU of every bench packet."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = fcntl.ioctl(s.fileno(), SIOCGIFMTU, struct.pack("16si", b"lo", 0))
    return int(struct.unpack("16si", ifreq)[1])


def _ip(*args: str, check: bool = True) -> str:
    proc = subprocess.run(
        ["ip", *args], capture_output=True, text=True, timeout=30, check=False
    )
    if check and proc.returncode != 0:
        raise BenchError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def remove_stale() -> list[str]:
    """Delete bench namespaces whose parent process is gone; returns their names."""
    removed = []
    for name in sorted(namespaces.existing()):
        pid = name.removeprefix(NETNS_HEAD)
        if name.startswith(NETNS_HEAD) and pid.isdigit() and not namespaces.pid_alive(int(pid)):
            namespaces.remove(name)
            removed.append(name)
    return removed


def check_can_create() -> None:
    """BenchError unless this process may create network namespaces."""
    if os.geteuid() != 0:
        raise BenchError(
            "--mtu needs root: it creates a network namespace (ip netns add) whose loopback "
            "has that MTU; run it as root, or without --mtu for plain loopback"
        )
    if shutil.which("ip") is None:
        raise BenchError("--mtu needs the `ip` command (Debian: apt-get install iproute2)")


def _raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def mtu_namespace(mtu: int) -> Iterator[str]:
    """A fresh namespace whose only link is ``lo`` at ``mtu``, removed on exit (SIGTERM too)."""
    check_can_create()
    remove_stale()
    ns = f"{NETNS_HEAD}{os.getpid()}"
    previous = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        _ip("netns", "add", ns)
        _ip("-n", ns, "link", "set", "lo", "mtu", str(mtu), "up")
        yield ns
    finally:
        namespaces.remove(ns)
        signal.signal(signal.SIGTERM, previous)


def run_in_namespace(mtu: int, params: JsonDict, results_path: Path) -> JsonDict:
    """Run the bench with ``params`` inside a fresh ``mtu`` namespace; its results."""
    with mtu_namespace(mtu) as ns:
        argv: Sequence[str] = [
            "ip", "netns", "exec", ns,
            sys.executable, "-m", "tierlink.bench.runner", json.dumps(params),
        ]
        proc = subprocess.Popen(argv, env={**os.environ, NETNS_ENV: ns})
        try:
            code = proc.wait()
        except BaseException:  # Ctrl-C, SIGTERM: let the run stop its workers, then kill it
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
            try:
                proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise
    if code != 0:
        raise BenchError(f"the bench inside namespace {ns} (lo mtu {mtu}) failed (exit {code})")
    try:
        results: JsonDict = json.loads(results_path.read_text())
    except (OSError, ValueError) as exc:
        raise BenchError(f"the bench inside the namespace left no results: {exc}") from None
    return results
