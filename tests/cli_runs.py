"""The ``tierlink`` command as tests run it: separate processes, their output and exit codes,
and stopping the ones a test started."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterable

from tierlink.hostport import parse_hostport

TIERLINK = [sys.executable, "-m", "tierlink.cli"]
"""The command line of ``tierlink`` in this interpreter."""


def run(*args: str, env: dict[str, str] | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``tierlink ARGS`` to its end (no standard input), its output captured."""
    return subprocess.run([*TIERLINK, *args], capture_output=True, text=True, timeout=timeout,
                          env=env, stdin=subprocess.DEVNULL)


def one_line_error(proc: subprocess.CompletedProcess[str], code: int) -> str:
    """The one stderr line of a failed command (asserting its exit code and no traceback)."""
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("tierlink"), lines
    return lines[0]


def start_serve(*args: str) -> tuple[subprocess.Popen[str], int, str, int]:
    """``tierlink dht serve ARGS``: the process, its printed UDP port, proxy URL and pid."""
    proc = subprocess.Popen([*TIERLINK, "dht", "serve", "--no-rate-limit", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    lines = [proc.stdout.readline() for _ in range(3)]
    assert lines[0].startswith("dht: udp 0.0.0.0:"), lines
    assert lines[1].startswith("proxy: http://127.0.0.1:"), lines
    port = parse_hostport(lines[0].split()[-1])[1]
    return proc, port, lines[1].split()[1], int(lines[2].split()[1])


def interrupt(procs: Iterable[subprocess.Popen[str]], timeout: float = 15) -> None:
    """Stop processes a test started as Ctrl-C would (SIGINT), killing any that outlives
    ``timeout`` seconds."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
