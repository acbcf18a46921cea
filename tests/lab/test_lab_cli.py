"""``tierlink lab`` (the one parser, and :func:`tierlink.lab.command.run_lab_cli` behind it):
exit statuses, stdout/stderr."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tierlink.lab.command import EXIT_OK, EXIT_UNAVAILABLE, run_lab_cli

_AS_NOBODY = """
import sys
from pathlib import Path
from tierlink.lab.command import run_lab_cli
sys.exit(run_lab_cli(None, 1, None, False, Path("/tmp/never-written")))
"""


def test_without_root_exits_2_with_one_line() -> None:
    """Not root: status 2, one clear line on stderr, nothing on stdout, no traceback."""
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root and setpriv is missing: cannot drop privileges")
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                sys.executable, "-c", _AS_NOBODY]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                              cwd="/", check=False)
        rc, out, err = proc.returncode, proc.stdout, proc.stderr
    else:
        import contextlib
        import io

        out_buf, err_buf = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out_buf), contextlib.redirect_stderr(err_buf):
            rc = run_lab_cli(None, 1, None, False, None)
        out, err = out_buf.getvalue(), err_buf.getvalue()
    assert rc == EXIT_UNAVAILABLE, err
    assert out == ""
    assert err.count("\n") == 1 and "root privileges" in err and "Traceback" not in err
    assert not Path("/tmp/never-written").exists()


def test_unknown_profile_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_lab_cli(["open"], 1, False, False, None, profiles=["dialup"]) == EXIT_UNAVAILABLE
    out, err = capsys.readouterr()
    assert out == "" and "unknown profile dialup" in err and err.count("\n") == 1


@pytest.mark.parametrize(("nat", "attempts", "needle"), [
    (["open", "no-such-nat"], 1, "unknown NAT type no-such-nat"),
    (["open"], 0, "--attempts must be at least 1"),
])
def test_bad_arguments_exit_2(
    nat: list[str], attempts: int, needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_lab_cli(nat, attempts, False, False, None) == EXIT_UNAVAILABLE
    out, err = capsys.readouterr()
    assert out == "" and needle in err and err.count("\n") == 1


def tierlink(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tierlink.cli", *args], capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.mark.parametrize(("argv", "needle"), [
    (("lab", "--driver", "raw"), "invalid choice: 'raw'"),
    (("lab", "--nat", "open", "--reduced"), "no pair of the reduced list among open"),
    (("lab", "--turn", "--no-turn"), "not allowed with argument"),
])
def test_cli_bad_arguments_exit_2_in_one_line(argv: tuple[str, ...], needle: str) -> None:
    proc = tierlink(*argv)
    assert proc.returncode == EXIT_UNAVAILABLE, proc.stderr
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    assert needle in proc.stderr.strip().splitlines()[-1]


def test_python_m_tierlink_lab_is_gone() -> None:
    """One lab command line: ``tierlink lab``."""
    proc = subprocess.run([sys.executable, "-m", "tierlink.lab"], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode != 0 and "No module named tierlink.lab.__main__" in proc.stderr


@pytest.mark.lab
def test_cli_cleanup_stale_prints_what_it_removed() -> None:
    proc = tierlink("lab", "--cleanup-stale")
    assert proc.returncode == EXIT_OK, proc.stderr
    assert isinstance(json.loads(proc.stdout)["removed"], list)


@pytest.mark.lab
def test_unusable_report_directory_exits_2_before_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a-file").write_text("")
    assert run_lab_cli(["open"], 1, False, False, tmp_path / "a-file" / "r") == EXIT_UNAVAILABLE
    out, err = capsys.readouterr()
    assert out == "" and "cannot create the report directory" in err and err.count("\n") == 1


@pytest.mark.lab
def test_one_preset_both_turn_modes_as_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``tierlink lab --nat open --attempts 1 --json --report DIR``: stdout is exactly the
    JSON matrix, progress goes to stderr, the reports are written, status 0."""
    report = tmp_path / "report"
    assert run_lab_cli(["open"], 1, None, True, report) == EXIT_OK
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert set(result) == {"cells", "presets", "profiles", "emulator"}
    assert set(result["presets"]) == {"open"} and result["profiles"] == {}
    assert [(c["a"], c["b"], c["turn"]) for c in result["cells"]] == [
        ("open", "open", False), ("open", "open", True)]
    for cell in result["cells"]:
        assert cell["as_expected"] and cell["delivered"] == 1, cell
        assert cell["tier"] in (["direct"] if not cell["turn"] else ["direct", "relay"]), cell
    assert err.count("open <-> open") == 2 and "wrote" in err
    assert {p.name for p in report.iterdir()} == {"matrix.json", "matrix.md", "matrix.png"}
