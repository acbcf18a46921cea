"""What a new user trips on, as separate ``tierlink`` processes: every bad input is one line on
stderr with a non-zero exit, nothing half-sent, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TIERLINK = [sys.executable, "-m", "tierlink.cli"]
FP = "ab" * 64


def run(*args: str, env: dict[str, str] | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
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


@pytest.mark.parametrize("argv", [
    ("send", "abc", "hi"),
    ("send", FP),
    ("lookup", "zz" * 64),
    ("run", "--bootstrap", "127.0.0.1:99999"),
    ("mailbox", "serve", "--quota-mb", "lots"),
    ("demo", "--messages", "x"),
])
def test_a_bad_argument_is_one_line_not_a_usage_dump(argv: tuple[str, ...]) -> None:
    """The README: every failure is one line on stderr, exit 2 for bad arguments; the usage
    (nine lines for ``send``) is one ``--help`` away instead of burying the error."""
    line = one_line_error(run(*argv), 2)
    assert "error: " in line and "--help" in line, line
