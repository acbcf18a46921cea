"""Network namespaces, veth links and processes of one lab run, and their guaranteed removal.

Every namespace name starts with the run's prefix (``tl`` + 4 hex digits). Before the first
namespace is created, a state file ``/run/tierlink-lab/<prefix>.json`` records the owner's pid,
so :func:`cleanup_stale` can later remove the leftovers of a run whose owner died (SIGKILL,
power loss) without touching a run that is still alive. Links are created straight inside the
namespaces (``ip -n NS link add ... peer ... netns NS2``), so the root namespace never holds
anything of ours and deleting the namespaces removes every link.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import IO, Any

from tierlink import namespaces
from tierlink.errors import TierlinkError

STATE_DIR = Path("/run/tierlink-lab")
PREFIX_HEAD = "tl"

#: Only these ranges may be configured inside lab namespaces (contributor network rules):
#: LANs, a carrier-grade NAT's inside (shared address space), the simulated internet, IPv6.
ALLOWED_NETWORKS = tuple(ipaddress.ip_network(n) for n in (
    "198.18.0.0/15", "100.64.0.0/10", "203.0.113.0/24", "198.51.100.0/24", "2001:db8::/32"))


class LabError(TierlinkError):
    """The NAT lab could not be built, verified or run (a command failed, a probe disagreed)."""


class LabUnavailable(LabError):
    """This machine cannot run the lab: not root, or ip/nft/turnserver/dhtnode missing."""


def missing_requirements() -> list[str]:
    """What prevents running the lab here (empty list: the lab can run)."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root privileges")
    for tool in ("ip", "nft", "turnserver", "dhtnode"):
        if shutil.which(tool) is None:
            missing.append(f"`{tool}` not installed")
    return missing


def check_address(address: str) -> str:
    """Refuse any address outside the lab's allowed ranges (``addr/len`` or a plain address)."""
    try:
        net = ipaddress.ip_network(address, strict=False)
    except ValueError:
        raise LabError(f"address {address!r} is not an IP address") from None
    if not any(net.version == a.version and net.subnet_of(a)  # type: ignore[arg-type]
               for a in ALLOWED_NETWORKS):
        allowed = ", ".join(str(a) for a in ALLOWED_NETWORKS)
        raise LabError(f"address {address} is outside the lab ranges {allowed}")
    return address


def run(args: Sequence[str], *, input_text: str | None = None, check: bool = True) -> str:
    """Run a command, return its stdout; raise LabError with its stderr when it fails."""
    proc = subprocess.run(
        list(args), input=input_text, capture_output=True, text=True, timeout=30, check=False
    )
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def ns_cmd(ns: str, *args: str) -> list[str]:
    """The argv that runs ``args`` inside namespace ``ns``."""
    return ["ip", "netns", "exec", ns, *args]


def _delete_namespaces(names: Sequence[str]) -> None:
    existing = namespaces.existing()
    for ns in names:
        if ns in existing:
            namespaces.kill_processes(ns)
    for ns in names:
        if ns in existing:
            run(["ip", "netns", "del", ns], check=False)


def cleanup_stale() -> list[str]:
    """Remove namespaces and processes of lab runs whose owner process is dead.

    Returns the namespace names removed. Runs whose owner is alive are left alone.
    """
    removed: list[str] = []
    if not STATE_DIR.is_dir():
        return removed
    existing = namespaces.existing()
    for state_file in sorted(STATE_DIR.glob(f"{PREFIX_HEAD}*.json")):
        try:
            state = json.loads(state_file.read_text())
            owner = int(state["owner_pid"])
            start = float(state.get("owner_start", 0.0))
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if namespaces.pid_alive(owner) and _process_start(owner) == start:
            continue
        prefix = state_file.stem
        names = [ns for ns in existing if ns.startswith(prefix + "-")]
        _delete_namespaces(names)
        removed += names
        workdir = str(state.get("workdir", ""))
        if workdir.startswith("/tmp/tierlink-lab-"):
            shutil.rmtree(workdir, ignore_errors=True)
        state_file.unlink(missing_ok=True)
    return removed


def _process_start(pid: int) -> float:
    """Start time (clock ticks since boot) of a process, to tell a reused pid from its owner."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return float(fields[19])
    except (OSError, IndexError, ValueError):
        return -1.0


class Run:
    """One lab run: its prefix, namespaces, processes, and a cleanup that always happens.

    Use as a context manager. Cleanup also runs at interpreter exit (atexit) and on SIGTERM /
    SIGHUP (turned into SystemExit so the ``with`` block unwinds); Ctrl-C unwinds as
    KeyboardInterrupt.
    """

    def __init__(self) -> None:
        self.prefix = PREFIX_HEAD + secrets.token_hex(2)
        while (STATE_DIR / f"{self.prefix}.json").exists():
            self.prefix = PREFIX_HEAD + secrets.token_hex(2)
        self.workdir = Path(f"/tmp/tierlink-lab-{self.prefix}")
        self.namespaces: list[str] = []
        self.processes: list[subprocess.Popen[Any]] = []
        self._lock = threading.Lock()
        self._closed = False
        self._old_handlers: dict[int, Any] = {}

    # -- lifecycle ------------------------------------------------------------------------
    def __enter__(self) -> Run:
        missing = missing_requirements()
        if missing:
            raise LabUnavailable("NAT lab needs " + ", ".join(missing))
        cleanup_stale()
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        self.workdir.mkdir(mode=0o700, parents=True, exist_ok=False)
        state = {
            "owner_pid": os.getpid(),
            "owner_start": _process_start(os.getpid()),
            "workdir": str(self.workdir),
            "created": time.time(),
        }
        (STATE_DIR / f"{self.prefix}.json").write_text(json.dumps(state))
        atexit.register(self.close)
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGHUP):
                self._old_handlers[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.close()
        raise SystemExit(128 + signum)

    def close(self) -> None:
        """Stop every process and delete every namespace of this run (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for proc in reversed(self.processes):
            _stop(proc)
        _delete_namespaces(list(reversed(self.namespaces)))
        shutil.rmtree(self.workdir, ignore_errors=True)
        (STATE_DIR / f"{self.prefix}.json").unlink(missing_ok=True)
        atexit.unregister(self.close)
        if threading.current_thread() is threading.main_thread():
            for sig, old in self._old_handlers.items():
                signal.signal(sig, old)

    # -- namespaces and links -------------------------------------------------------------
    def add_namespace(self, role: str) -> str:
        """Create namespace ``<prefix>-<role>`` with loopback up; returns its name."""
        if self._closed:
            raise LabError("lab run already closed")
        name = f"{self.prefix}-{role}"
        self.namespaces.append(name)  # recorded first: a half-made namespace is removed too
        run(["ip", "netns", "add", name])
        run(["ip", "-n", name, "link", "set", "lo", "up"])
        return name

    def remove_namespaces(self, names: Sequence[str]) -> None:
        """Delete some namespaces of this run early (their processes are killed first)."""
        for proc in list(self.processes):
            if proc.poll() is None and getattr(proc, "tl_ns", None) in names:
                _stop(proc)
        _delete_namespaces(list(names))
        self.namespaces = [ns for ns in self.namespaces if ns not in names]
        self.processes = [p for p in self.processes if p.poll() is None]

    def veth(self, ns_a: str, name_a: str, ns_b: str, name_b: str) -> None:
        """Create a veth pair ``name_a``@``ns_a`` <-> ``name_b``@``ns_b`` and bring both up."""
        run(["ip", "-n", ns_a, "link", "add", name_a, "type", "veth",
             "peer", "name", name_b, "netns", ns_b])
        run(["ip", "-n", ns_a, "link", "set", name_a, "up"])
        run(["ip", "-n", ns_b, "link", "set", name_b, "up"])

    def address(self, ns: str, dev: str, cidr: str) -> None:
        """Add an address (must be in the lab ranges) to a device."""
        run(["ip", "-n", ns, "addr", "add", check_address(cidr), "dev", dev])

    def route_default(self, ns: str, via: str) -> None:
        run(["ip", "-n", ns, "route", "add", "default", "via", check_address(via)])

    def sysctl(self, ns: str, key: str, value: str) -> None:
        run(ns_cmd(ns, "sysctl", "-qw", f"{key}={value}"))

    def nft(self, ns: str, ruleset: str) -> None:
        """Load an nftables ruleset into a namespace."""
        run(ns_cmd(ns, "nft", "-f", "-"), input_text=ruleset)

    # -- processes ------------------------------------------------------------------------
    def spawn(
        self,
        ns: str,
        args: Sequence[str],
        *,
        stdin: int | IO[Any] | None = subprocess.DEVNULL,
        stdout: int | IO[Any] | None = subprocess.PIPE,
        stderr: int | IO[Any] | None = subprocess.PIPE,
    ) -> subprocess.Popen[str]:
        """Start ``args`` inside ``ns``; the process is stopped by :meth:`close` at the latest."""
        if self._closed:
            raise LabError("lab run already closed")
        proc = subprocess.Popen(
            ns_cmd(ns, *args), stdin=stdin, stdout=stdout, stderr=stderr, text=True,
            start_new_session=True,  # a Ctrl-C to the runner reaches us, not the children
        )
        proc.tl_ns = ns  # type: ignore[attr-defined]
        self.processes.append(proc)
        return proc


def _stop(proc: subprocess.Popen[Any]) -> None:
    """Terminate one process we started (by pid), then kill it if it lingers."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=2)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def python_argv(module: str, *args: str) -> list[str]:
    """argv running ``python -m module args`` with this interpreter (the project venv)."""
    return [sys.executable, "-u", "-m", module, *args]


def run_module(run: Run, ns: str, module: str, *args: str, timeout: float, what: str) -> str:
    """Run ``python -m module args`` in ``ns`` to its end; its stdout. LabError (naming
    ``what``) if it times out (it is killed) or fails (with the end of its stderr)."""
    proc = run.spawn(ns, python_argv(module, *args))
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        proc.kill()
        raise LabError(f"{what} {args} in {ns} timed out") from exc
    if proc.returncode != 0:
        raise LabError(f"{what} {args} in {ns} failed: {err.strip()[-300:]}")
    return str(out)
