"""The CLI as a user runs it: separate processes, exit codes, no tracebacks."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from pathlib import Path

import psutil
import pytest

from tests.cli_runs import TIERLINK, interrupt, run, start_serve
from tests.waiting import eventually
from tierlink.cli.output import message_line
from tierlink.dht import DhtClient, DhtNodeProcess


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


@pytest.mark.parametrize("content", [
    b"[" * 100_000 + b"]" * 100_000,  # nested past the JSON decoder's recursion limit
    b" " * (1 << 20) + b"{}",  # far larger than a key file
    b"[1, 2, 3]",
], ids=["nested", "huge", "not-an-object"])
def test_hostile_key_file_is_one_line_error(tmp_path: Path, content: bytes) -> None:
    key = tmp_path / "bad.json"
    key.write_bytes(content)
    key.chmod(0o600)
    proc = run("id", "show", str(key))
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("tierlink: ") and proc.stderr.count("\n") == 1
    no_traceback(proc)


@pytest.mark.parametrize(("text", "shown"), [
    ("hello", "hello"),
    ("\x1b[2J\x1b[31mred", "\\x1b[2J\\x1b[31mred"),  # clear screen, colour
    ("a\nconnection from evil", "a\\nconnection from evil"),  # no forged second line
    ("bell\x07 back\x08 del\x7f csi\x9b31m", "bell\\x07 back\\x08 del\\x7f csi\\x9b31m"),
    ("cr\rtab\t", "cr\\rtab\\t"),
    ("\\x1b literal", "\\\\x1b literal"),  # an escaped-looking text stays distinguishable
    ("rtl \u202e evil", "rtl \\u202e evil"),
    ("héllo ✓ 😀", "héllo ✓ 😀"),
])
def test_run_output_escapes_control_characters(text: str, shown: str) -> None:
    sender = "ab" * 64
    line = message_line(sender, text, "offline")
    assert line == f"{sender[:16]}… [offline]: {shown}"
    assert message_line(sender, text) == f"{sender[:16]}…: {shown}"
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in line)


@pytest.mark.parametrize("argv", [
    ("dht", "serve", "--bootstrap", "host:notaport"),
    ("dht", "serve", "--bootstrap", "::1:4222"),
    ("dht", "serve", "--port", "70000"),
    ("dht", "serve", "--proxy-port", "0"),
    ("send", "ab" * 64, "hi", "--stun", "stun.example:"),
    ("send", "ab" * 64, "hi", "--turn", "nouser@127.0.0.1:3478"),
    ("send", "ab" * 64, "hi", "--turn", "u:p@[::1:3478"),
    ("lab", "--attempts", "0"),
    ("lab", "--nat", "no-such-nat"),
    ("lab", "--ice-timeout", "-1"),
    ("bench", "--system", "no-such-system"),
    ("frobnicate",),
])
def test_bad_arguments_are_one_line_usage_errors(argv: tuple[str, ...]) -> None:
    bad = run(*argv)
    assert bad.returncode == 2, bad.stderr
    no_traceback(bad)
    last = bad.stderr.strip().splitlines()[-1]
    assert "error: " in last and last.startswith("tierlink"), bad.stderr


def test_bad_port_messages_name_the_problem() -> None:
    assert "port must be a number" in run("dht", "serve", "--bootstrap", "h:x").stderr
    assert "needs brackets" in run("dht", "serve", "--bootstrap", "::1:4222").stderr
    assert "between 0 and 65535" in run("dht", "serve", "--port", "70000").stderr


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_dht_serve_stops_cleanly(sig: signal.Signals) -> None:
    proc, _, _, child = start_serve("--port", "0")
    try:
        assert psutil.pid_exists(child)
        proc.send_signal(sig)
        assert await asyncio.to_thread(proc.wait, 15) == 0
        await eventually(lambda: _gone(child), 10, "the dhtnode child to exit")
    finally:
        if proc.poll() is None:
            proc.kill()


async def test_dht_serve_port_zero_prints_the_bound_port() -> None:
    """``--port 0``: the printed port is the dhtnode's UDP socket, and a node bootstraps to it."""
    proc, port, proxy, child = start_serve("--port", "0")
    try:
        assert port != 0
        assert port in {c.laddr.port for c in psutil.Process(child).net_connections("udp")}
        async with (DhtNodeProcess(no_rate_limit=True, bootstrap=[("127.0.0.1", port)]),
                    DhtClient(proxy) as served):

            async def joined() -> bool:
                info = await served.info()
                return bool(info["ipv4"]["good"] or info["ipv4"]["dubious"])

            await eventually(joined, 10, "a node bootstrapped to the printed port")
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 15)


def test_demo_json() -> None:
    proc = run("demo", "--json", "--messages", "20")
    assert proc.returncode == 0, proc.stderr
    obj = json.loads(proc.stdout)
    assert obj["connected"] is True and obj["ok"] is True
    assert obj["sent"] == 40 and obj["received"] == 40 and obj["dropped"] == 0
    assert obj["selected_pair"] == {"local": "host", "remote": "host"}
    assert isinstance(obj["connect_ms"], float)


def test_send_rejects_bad_fingerprint_and_missing_identity(tmp_path: Path) -> None:
    bad = run("send", "abc", "hi")
    assert bad.returncode == 2 and "not a fingerprint" in bad.stderr
    no_traceback(bad)
    env = dict(os.environ, XDG_DATA_HOME=str(tmp_path))
    missing = run("send", "ab" * 64, "hi", env=env)
    assert missing.returncode == 1 and "tierlink id new" in missing.stderr
    no_traceback(missing)


def test_run_send_outbox_lookup_end_to_end(tmp_path: Path) -> None:
    """Two terminals as in the README: live delivery, then offline delivery."""
    a_key, b_key = tmp_path / "a.json", tmp_path / "b.json"
    a_fp = run("id", "new", "--out", str(a_key)).stdout.strip()
    b_fp = run("id", "new", "--out", str(b_key)).stdout.strip()
    dht, port, _, _ = start_serve("--port", "0")
    common = ["--bootstrap", f"127.0.0.1:{port}", "--no-rate-limit",
              "--host-address", "127.0.0.1"]
    procs = [dht]
    try:

        def start_b() -> subprocess.Popen[str]:
            b = subprocess.Popen(
                [*TIERLINK, "run", "--identity", str(b_key), "--data-dir",
                 str(tmp_path / "b"), "--json", *common],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            procs.append(b)
            assert b.stdout is not None
            assert json.loads(b.stdout.readline())["event"] == "online"
            return b

        b = start_b()
        send = [*TIERLINK, "send", b_fp, "--identity", str(a_key), "--data-dir",
                str(tmp_path / "a"), "--json", *common]
        live = subprocess.run([*send, "hello live"], capture_output=True, text=True, timeout=60)
        assert live.returncode == 0, live.stderr
        assert json.loads(live.stdout)["tier"] == "direct"
        assert b.stdout is not None
        path = json.loads(b.stdout.readline())  # the answered link's path, then the message
        assert (path["event"], path["peer"], path["tier"]) == ("path", a_fp, "direct")
        assert path["ice"]["nominated_ms"] is not None and path["selected_pair"]
        got = json.loads(b.stdout.readline())
        assert got["text"] == "hello live" and got["tier"] == "direct"

        look = run("lookup", b_fp, "--json", "--identity", str(a_key), *common)
        assert look.returncode == 0, look.stderr
        rec = json.loads(look.stdout)
        assert rec["fingerprint"] == b_fp and rec["mode"] == "private" and not rec["candidates"]

        b.send_signal(signal.SIGINT)
        assert b.wait(15) == 0
        queued = subprocess.run([*send, "--timeout", "2", "--wait", "0", "hello offline"],
                                capture_output=True, text=True, timeout=60)
        assert queued.returncode == 0, queued.stderr
        assert json.loads(queued.stdout)["state"] == "queued"
        box = run("outbox", "--data-dir", str(tmp_path / "a"), "--json")
        pending = json.loads(box.stdout)
        assert [e["state"] for e in pending] == ["queued_dht"]

        b = start_b()
        assert b.stdout is not None
        got = json.loads(b.stdout.readline())
        assert got["text"] == "hello offline" and got["tier"] == "offline"
    finally:
        interrupt(procs)
