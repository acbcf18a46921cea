"""Network namespaces a run of ours created: which exist, whether their owner lives, and
how to empty and delete them. Shared by the NAT lab and the bench's ``--mtu`` mode (both
put every process they start inside their own namespaces, so killing a namespace's
processes never touches anyone else's)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess


def _ip(*args: str) -> str:
    """``ip ARGS``'s output; empty when it fails (a namespace already gone)."""
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30,
                          check=False)
    return proc.stdout if proc.returncode == 0 else ""


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (owned by anyone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def existing() -> set[str]:
    """The names of every network namespace on this machine."""
    return {line.split()[0] for line in _ip("netns", "list").splitlines() if line.strip()}


def kill_processes(ns: str) -> None:
    """SIGKILL every process living in namespace ``ns``."""
    for word in _ip("netns", "pids", ns).split():
        with contextlib.suppress(ValueError, ProcessLookupError):
            os.kill(int(word), signal.SIGKILL)


def remove(ns: str) -> None:
    """Kill every process in ``ns``, then delete it (no error if it is gone)."""
    kill_processes(ns)
    _ip("netns", "del", ns)
