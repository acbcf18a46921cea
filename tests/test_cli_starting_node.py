"""``send`` while a ``run`` of the same identity is still joining the DHT (its control socket
claimed, not yet answering) waits for that node and hands it the message: one node of the
identity, the message stored once."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import socket
import subprocess
from pathlib import Path

from tests.cli_runs import TIERLINK, interrupt, run, start_serve
from tests.waiting import eventually
from tierlink import control
from tierlink.identity import Identity

FP = "ab" * 64


def _claimed(lock: Path) -> bool:
    """Whether a process holds the control socket's claim (its ``flock``)."""
    if not lock.exists():
        return False
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _silent_udp_port() -> int:
    """A loopback UDP port nothing listens on (a bootstrap that never answers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_send_waits_for_the_starting_node_and_hands_it_the_message(
    tmp_path: Path,
) -> None:
    key = tmp_path / "a.json"
    assert run("id", "new", "--out", str(key)).returncode == 0
    fp = Identity.load(key).fingerprint
    lock = control.socket_path(fp).with_name(control.socket_path(fp).name + ".lock")
    dht, port, _, _ = start_serve("--port", "0")
    node = ["--identity", str(key), "--data-dir", str(tmp_path / "a"), "--no-rate-limit",
            "--host-address", "127.0.0.1", "--timeout", "1"]
    # the first bootstrap never answers: the node stays in its join (10 s) before the second
    slow = subprocess.Popen(
        [*TIERLINK, "run", *node, "--json", "--bootstrap", f"127.0.0.1:{_silent_udp_port()}",
         "--bootstrap", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    send: subprocess.Popen[str] | None = None
    try:
        await eventually(lambda: _claimed(lock) or slow.poll() is not None, 30,
                         "the run's claim of its control socket")
        assert slow.poll() is None, slow.communicate()
        send = subprocess.Popen(
            [*TIERLINK, "send", FP, "once", *node, "--json", "--wait", "0", "--bootstrap",
             f"127.0.0.1:{port}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = await asyncio.to_thread(send.communicate, timeout=120)
        assert "Traceback" not in err, err
        assert "no running node" not in err, err  # it started no node of its own
        assert "is starting (joining the DHT): waiting up to 120 s" in err, err
        result = json.loads(out)
        assert (result["event"], result["node"], result["state"]) == (
            "sent", "running", "pending"), result  # the recipient does not exist
        assert send.returncode == 1  # "pending": stuck, as for any unreachable recipient
        assert slow.stdout is not None
        assert json.loads(slow.stdout.readline())["event"] == "online"
        by_run = json.loads(slow.stdout.readline())
        assert (by_run["event"], by_run["via"], by_run["message_id"]) == (
            "sent", "control", result["message_id"])
        box = run("outbox", "--all", "--json", "--identity", str(key))
        assert [e["message_id"] for e in json.loads(box.stdout)] == [result["message_id"]]
    finally:
        interrupt([p for p in (send, slow, dht) if p is not None])


async def test_a_run_is_refused_while_a_send_runs_its_own_node(tmp_path: Path) -> None:
    """``send``'s own node holds the identity's claim while it joins: a ``run`` started
    meanwhile is refused, not a second node of the identity."""
    key = tmp_path / "a.json"
    assert run("id", "new", "--out", str(key)).returncode == 0
    fp = Identity.load(key).fingerprint
    lock = control.socket_path(fp).with_name(control.socket_path(fp).name + ".lock")
    node = ["--identity", str(key), "--data-dir", str(tmp_path / "a"), "--no-rate-limit",
            "--host-address", "127.0.0.1", "--timeout", "1",
            "--bootstrap", f"127.0.0.1:{_silent_udp_port()}"]  # its join fails after 10 s
    send = subprocess.Popen([*TIERLINK, "send", FP, "once", *node],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        await eventually(lambda: _claimed(lock) or send.poll() is not None, 30,
                         "the send's claim of the control socket")
        assert send.poll() is None, send.communicate()
        second = await asyncio.to_thread(run, "run", *node, timeout=60)
        assert second.returncode == 1, second.stderr
        assert "a node of this identity already runs" in second.stderr, second.stderr
    finally:
        interrupt([send])


async def test_send_takes_over_when_the_starting_node_gives_up(tmp_path: Path) -> None:
    """The claim's holder ends without ever answering (a node whose join failed): the
    waiting ``send`` then starts its own node, once."""
    key = tmp_path / "a.json"
    assert run("id", "new", "--out", str(key)).returncode == 0
    fp = Identity.load(key).fingerprint
    path = control.socket_path(fp)
    control.make_private_dir(path.parent)
    lock = path.with_name(path.name + ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a node of the identity that is starting
    send = subprocess.Popen(
        [*TIERLINK, "send", FP, "once", "--identity", str(key), "--data-dir",
         str(tmp_path / "a"), "--no-rate-limit", "--host-address", "127.0.0.1", "--timeout",
         "1", "--wait", "0", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert send.stderr is not None
        waiting = await asyncio.to_thread(send.stderr.readline)
        assert "is starting (joining the DHT): waiting up to 120 s" in waiting, waiting
        os.close(fd)  # it stopped: the kernel drops its claim
        fd = -1
        out, err = await asyncio.to_thread(send.communicate, timeout=120)
        assert f"no running node for {fp[:16]}…: starting one" in err, err
        assert json.loads(out)["node"] == "own"
    finally:
        if fd >= 0:
            os.close(fd)
        interrupt([send])
