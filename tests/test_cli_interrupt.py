"""Ctrl-C at any moment of the ``tierlink`` command's start (while its modules load, before
the command line is read) ends it as a later Ctrl-C does: exit 130 and one line, no
traceback."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from tests.cli_runs import TIERLINK

#: Starts of the command, each interrupted a little later than the one before (bounded).
STARTS = 20
STEP_S = 0.01


def _outcome(delay_s: float) -> tuple[int, str]:
    """Start ``tierlink --help``, send SIGINT ``delay_s`` seconds later: exit status, stderr."""
    proc = subprocess.Popen([*TIERLINK, "--help"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(delay_s)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


def _before_main(err: str) -> bool:
    """A KeyboardInterrupt raised while the console script (made by pip) imports the
    package, before the first line of :func:`tierlink.cli.main` runs: nothing can defer it
    yet."""
    return (err.startswith("Traceback") and ", in main" not in err
            and err.rstrip().endswith("KeyboardInterrupt"))


def test_ctrl_c_while_the_modules_load_is_one_line_and_130() -> None:
    """The interpreter's own first milliseconds (its site and runpy modules, and the console
    script's import of the package, before the entry point's first line runs) are outside
    any program's reach: a SIGINT there ends it by the signal or
    with status 1, its output naming no tierlink file. Every later one is ours: 130 and
    "interrupted", or the command's normal end if it had finished."""
    interrupted = 0
    for i in range(STARTS):
        code, err = _outcome(i * STEP_S)
        if code in (-signal.SIGINT, 1) and ("tierlink" not in err or _before_main(err)):
            continue  # the interpreter was still starting: no tierlink code ran yet
        assert "Traceback" not in err, (i, code, err)
        assert (code, err) in ((130, "interrupted\n"), (0, "")), (i, code, err)
        interrupted += code == 130
    assert interrupted >= STARTS // 2, interrupted  # the starts were interrupted, not finished


def test_an_in_process_call_keeps_the_callers_ctrl_c_handling(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Only the console script (no argv) ignores Ctrl-C after its command; a program that
    runs a command in-process keeps its SIGINT handler."""
    from tierlink.cli import main

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(SystemExit):
        main(["--help"])
    capsys.readouterr()
    assert signal.getsignal(signal.SIGINT) is before


def test_the_entry_point_stays_a_function_once_the_commands_are_loaded() -> None:
    """Loading the command modules must not replace ``tierlink.cli.main`` (the console
    script's target) with a submodule of that name."""
    import importlib

    import tierlink.cli

    for name in ("dispatch", "node_commands", "mailbox_commands", "tool_commands"):
        importlib.import_module(f"tierlink.cli.{name}")
    assert callable(tierlink.cli.main)
    assert tierlink.cli.main.__module__ == "tierlink.cli"
