"""The control socket: a running node answers its own user's commands, and nothing else.

Requests are checked as an attacker would send them (each hostile value beside a good one);
the CLI tests run ``tierlink run`` and ``tierlink send`` as separate processes, as a user does.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cli_runs import TIERLINK, interrupt, start_serve
from tests.nodes import config_for
from tests.waiting import eventually
from tierlink import control
from tierlink.control import (
    MAX_MESSAGES,
    MAX_REQUEST,
    ControlError,
    LookupRequest,
    NoRunningNode,
    OutboxRequest,
    SendRequest,
    StatsRequest,
    check_peer,
    encode_request,
    parse_request,
)
from tierlink.dht import DhtNodeProcess
from tierlink.identity import Identity
from tierlink.node import Node
from tierlink.node.control_server import MAX_CLIENTS, ControlServer

FP = "ab" * 64
B64 = base64.b64encode(b"hi").decode()


def line(obj: object) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def send(**kw: Any) -> bytes:
    return line({"v": 1, "op": "send", "to": FP, "messages": [B64], "wait": 1, **kw})


# -- requests, parsed ----------------------------------------------------------------------
GOOD = {
    "send": (send(), SendRequest(FP, (b"hi",), 1.0)),
    "outbox": (line({"v": 1, "op": "outbox", "all": True}), OutboxRequest(True)),
    "lookup": (line({"v": 1, "op": "lookup", "fingerprint": FP}), LookupRequest(FP)),
    "stats": (line({"v": 1, "op": "stats"}), StatsRequest()),
}

HOSTILE = [
    ("oversized", b"{" + b" " * MAX_REQUEST + b"}\n", "too_long"),
    ("not-json", b"send hi\n", "bad_json"),
    ("bad-utf8", b'{"v": 1, "op": "st\xffats"}\n', "bad_json"),
    ("deep-nesting", b"[" * 100_000 + b"]" * 100_000 + b"\n", "bad_json"),
    ("not-an-object", line([1, 2]), "bad_json"),
    ("no-version", line({"op": "stats"}), "bad_version"),
    ("version-2", line({"v": 2, "op": "stats"}), "bad_version"),
    ("version-true", line({"v": True, "op": "stats"}), "bad_version"),
    ("unknown-op", line({"v": 1, "op": "shutdown"}), "unknown_op"),
    ("op-not-a-string", line({"v": 1, "op": ["stats"]}), "unknown_op"),
    ("unknown-field", line({"v": 1, "op": "stats", "exec": "rm -rf /"}), "unknown_field"),
    ("to-short", send(to="ab" * 10), "bad_field"),
    ("to-uppercase", send(to="AB" * 64), "bad_field"),
    ("to-number", send(to=12), "bad_field"),
    ("messages-not-list", send(messages=B64), "bad_field"),
    ("messages-empty", send(messages=[]), "bad_field"),
    ("messages-too-many", send(messages=[B64] * (MAX_MESSAGES + 1)), "bad_field"),
    ("message-not-string", send(messages=[[1]]), "bad_field"),
    ("message-bad-base64", send(messages=["not base64!"]), "bad_field"),
    ("message-empty", send(messages=[""]), "bad_field"),
    ("wait-negative", send(wait=-1), "bad_field"),
    ("wait-huge", send(wait=1e9), "bad_field"),
    ("wait-bool", send(wait=True), "bad_field"),
    ("wait-string", send(wait="5"), "bad_field"),
    ("wait-nan", send(wait=float("nan")), "bad_field"),
    ("outbox-all-string", line({"v": 1, "op": "outbox", "all": "yes"}), "bad_field"),
    ("lookup-no-fingerprint", line({"v": 1, "op": "lookup"}), "bad_field"),
]


@pytest.mark.parametrize(("raw", "reason"), [(r, why) for _, r, why in HOSTILE],
                         ids=[name for name, _, _ in HOSTILE])
def test_hostile_requests_are_refused_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(ControlError) as caught:
        parse_request(raw)
    assert caught.value.reason == reason and str(caught.value)


@pytest.mark.parametrize("op", sorted(GOOD))
def test_good_requests_parse_and_round_trip(op: str) -> None:
    raw, want = GOOD[op]
    assert parse_request(raw) == want
    assert parse_request(encode_request(want)) == want


def test_a_request_past_the_limit_is_refused_before_it_is_sent() -> None:
    big = SendRequest(FP, (b"x" * MAX_REQUEST,))
    with pytest.raises(ControlError) as caught:
        encode_request(big)
    assert caught.value.reason == "too_long"


def test_check_peer_refuses_another_uid() -> None:
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        check_peer(a, os.geteuid())
        with pytest.raises(ControlError) as caught:
            check_peer(a, os.geteuid() + 1)
        assert caught.value.reason == "peer_uid"


# -- the server, in this process -----------------------------------------------------------
@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A private directory with a short path (a socket path holds at most 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="tlc", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def node(dht_node: DhtNodeProcess) -> AsyncIterator[Node]:
    async with Node(config_for(dht_node)) as running:
        yield running


async def ask(path: Path, raw: bytes, *, eof: bool = False) -> dict[str, Any]:
    """Send raw bytes (then end the stream if ``eof``), read one reply line (the server
    may close right after it)."""
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        writer.write(raw)
        if eof:
            writer.write_eof()
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        answer = await reader.readline()
        assert answer.endswith(b"\n"), answer[:80]
        reply: dict[str, Any] = json.loads(answer)
        return reply
    finally:
        writer.close()


async def test_server_answers_every_hostile_request_and_keeps_serving(
    node: Node, short_dir: Path
) -> None:
    path = control.socket_path(node.fingerprint, short_dir)
    async with ControlServer(path) as server:
        await server.serve(node)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(short_dir.stat().st_mode) == 0o700
        reader, writer = await asyncio.open_unix_connection(path)
        for name, raw, reason in HOSTILE:
            if name == "oversized":
                continue  # ends the connection: below
            writer.write(raw)
            reply = json.loads(await reader.readline())
            assert reply == {"ok": False, "reason": reason, "error": reply["error"]}, name
        writer.write(GOOD["stats"][0])  # the same connection still serves
        reply = json.loads(await reader.readline())
        assert reply["ok"] is True and reply["node"]["pid"] == os.getpid()
        writer.close()

        too_long = await ask(path, HOSTILE[0][1])
        assert too_long["reason"] == "too_long"
        no_newline = await ask(path, b'{"v": 1, "op": "stats"}', eof=True)
        assert no_newline["reason"] == "incomplete"

        stats = (await control.request(path, StatsRequest()))["control"]
        assert stats["rejections"]["too_long"] == 1
        assert stats["rejections"]["bad_field"] == sum(r == "bad_field" for *_, r in HOSTILE)
        assert stats["requests"] == {"stats": 1}  # this one is counted once answered
        assert node.stats()["connections"] == 0  # nothing reached the node's peers


async def test_server_refuses_a_peer_of_another_uid(node: Node, short_dir: Path) -> None:
    path = control.socket_path(node.fingerprint, short_dir)
    async with ControlServer(path, uid=os.geteuid() + 1) as server:
        await server.serve(node)
        reply = await ask(path, GOOD["stats"][0])
        assert reply["ok"] is False and reply["reason"] == "peer_uid"
        assert server.rejections["peer_uid"] == 1 and not server.requests


async def test_server_serves_a_bounded_number_of_clients(node: Node, short_dir: Path) -> None:
    path = control.socket_path(node.fingerprint, short_dir)
    async with ControlServer(path) as server:
        await server.serve(node)
        idle = [await asyncio.open_unix_connection(path) for _ in range(MAX_CLIENTS)]
        try:
            await eventually(lambda: server.stats()["clients"] == MAX_CLIENTS, 10,
                             "every idle client accepted")
            reply = await ask(path, GOOD["stats"][0])
            assert reply["reason"] == "busy"
        finally:
            for _, writer in idle:
                writer.close()
        await eventually(lambda: server.stats()["clients"] == 0, 10, "idle clients gone")
        assert (await control.request(path, StatsRequest()))["ok"] is True


async def test_lookup_and_outbox_through_the_socket(node: Node, short_dir: Path) -> None:
    path = control.socket_path(node.fingerprint, short_dir)
    async with ControlServer(path) as server:
        await server.serve(node)
        record = control.lookup_record(
            await control.request(path, LookupRequest(node.fingerprint)))
        assert record["fingerprint"] == node.fingerprint
        assert control.outbox_entries(await control.request(path, OutboxRequest(True))) == []
        with pytest.raises(ControlError) as missing:  # no record: the node's error, one line
            await control.request(path, LookupRequest(Identity.generate().fingerprint))
        assert missing.value.reason == "failed" and server.rejections["failed"] == 1


# -- claiming the socket -------------------------------------------------------------------
def leave_stale_socket(path: Path) -> None:
    """What a killed node leaves: a socket file nothing accepts on."""
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(os.fspath(path))
    sock.close()


async def test_claim_replaces_a_stale_socket_and_refuses_a_second_node(
    node: Node, short_dir: Path
) -> None:
    path = control.socket_path(node.fingerprint, short_dir)
    leave_stale_socket(path)
    with pytest.raises(NoRunningNode):
        await control.request(path, StatsRequest())
    async with ControlServer(path) as first:
        assert first.stale_replaced == 1 and not path.exists()
        await first.serve(node)
        second = ControlServer(path)
        with pytest.raises(ControlError) as caught:
            second.claim()
        assert caught.value.reason == "already_running" and str(path) in str(caught.value)
        assert (await control.request(path, StatsRequest()))["ok"] is True
    assert not path.exists()  # removed on close
    with pytest.raises(NoRunningNode):
        await control.request(path, StatsRequest())


async def test_claim_refuses_a_file_that_is_not_a_socket(short_dir: Path) -> None:
    path = control.socket_path(FP, short_dir)
    path.write_text("mine")
    with pytest.raises(ControlError) as caught:
        ControlServer(path).claim()
    assert caught.value.reason == "not_a_socket" and path.read_text() == "mine"


async def test_client_refuses_an_unsafe_directory_or_planted_file(short_dir: Path) -> None:
    path = control.socket_path(FP, short_dir)
    path.write_text("not a socket")
    with pytest.raises(ControlError) as planted:
        await control.request(path, StatsRequest())
    assert planted.value.reason == "unsafe_socket"
    path.unlink()
    short_dir.chmod(0o755)  # another user could have planted a socket here
    with pytest.raises(ControlError) as loose:
        await control.request(path, StatsRequest())
    assert loose.value.reason == "unsafe_dir"
    if os.geteuid() == 0:  # a directory owned by someone else
        short_dir.chmod(0o700)
        os.chown(short_dir, 65534, 65534)
        with pytest.raises(ControlError) as foreign:
            await control.request(path, StatsRequest())
        assert foreign.value.reason == "unsafe_dir"


# -- the CLI: tierlink run + tierlink send as separate processes ---------------------------
class Cli:
    """Processes of one test: every one is stopped at the end, also on failure."""

    def __init__(self, tmp: Path, runtime: Path, port: int) -> None:
        self.tmp = tmp
        self.env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime))
        self.common = ["--bootstrap", f"127.0.0.1:{port}", "--no-rate-limit",
                       "--host-address", "127.0.0.1"]
        self.procs: list[subprocess.Popen[str]] = []

    def identity(self, name: str) -> tuple[Path, str]:
        key = self.tmp / f"{name}.json"
        new = subprocess.run([*TIERLINK, "id", "new", "--out", str(key)], capture_output=True,
                             text=True, timeout=60, check=True)
        return key, new.stdout.strip()

    def start_run(self, key: Path, name: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [*TIERLINK, "run", "--identity", str(key), "--data-dir", str(self.tmp / name),
             "--json", *self.common],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env)
        self.procs.append(proc)
        return proc

    async def online(self, key: Path, name: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
        proc = self.start_run(key, name)
        event = await self.event(proc)
        assert event["event"] == "online", event
        return proc, event

    async def event(self, proc: subprocess.Popen[str]) -> dict[str, Any]:
        assert proc.stdout is not None
        text = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 60)
        assert text, proc.stderr.read() if proc.stderr else "no output"
        obj: dict[str, Any] = json.loads(text)
        return obj

    async def command(self, *args: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(
            subprocess.run, [*TIERLINK, *args], capture_output=True, text=True, timeout=60,
            env=self.env)

    def stop_all(self) -> None:
        interrupt(self.procs)


@pytest.fixture
async def cli(tmp_path: Path, short_dir: Path) -> AsyncIterator[Cli]:
    if shutil.which("dhtnode") is None:
        pytest.skip("dhtnode not installed")
    dht, port, _, _ = start_serve("--port", "0")
    session = Cli(tmp_path, short_dir, port)
    session.procs.append(dht)
    try:
        yield session
    finally:
        session.stop_all()


async def test_send_outbox_lookup_use_the_running_node(cli: Cli) -> None:
    a_key, a_fp = cli.identity("a")
    b_key, b_fp = cli.identity("b")
    b, _ = await cli.online(b_key, "b")
    a, online = await cli.online(a_key, "a")
    sock = Path(online["control_socket"])
    assert sock.parent.parent == Path(cli.env["XDG_RUNTIME_DIR"])
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700

    sent = await cli.command("send", b_fp, "through the running node", "--identity",
                             str(a_key), "--json")
    assert sent.returncode == 0, sent.stderr
    assert "starting one" not in sent.stderr
    result = json.loads(sent.stdout)
    assert result["node"] == "running" and result["state"] == "delivered"
    assert result["tier"] == "direct"
    for proc, peer in ((a, b_fp), (b, a_fp)):  # each run prints the link's path first
        path = await cli.event(proc)
        assert (path["event"], path["peer"], path["tier"]) == ("path", peer, "direct"), path
    by_request = await cli.event(a)  # the sender's run prints the delivery
    assert by_request == {"event": "sent", "to": b_fp, "message_id": result["message_id"],
                          "bytes": 24, "state": "delivered", "tier": "direct",
                          "via": "control"}
    got = await cli.event(b)
    assert got["text"] == "through the running node" and got["from"] == a_fp

    stats = await control.request(sock, StatsRequest())
    assert stats["node"]["fingerprint"] == a_fp
    assert stats["control"]["requests"] == {"send": 1}
    assert stats["stats"]["dials"] == 1  # the running node dialed: no other node did

    box = await cli.command("outbox", "--all", "--json", "--identity", str(a_key))
    assert box.returncode == 0, box.stderr
    assert [(e["message_id"], e["state"]) for e in json.loads(box.stdout)] == [
        (result["message_id"], "delivered")]
    look = await cli.command("lookup", b_fp, "--json", "--identity", str(a_key))
    assert look.returncode == 0 and "starting one" not in look.stderr, look.stderr
    assert json.loads(look.stdout)["fingerprint"] == b_fp
    missing = await cli.command("lookup", "cd" * 64, "--identity", str(a_key))
    assert missing.returncode == 1 and missing.stderr.startswith("tierlink: ")
    assert "Traceback" not in missing.stderr
    stats = await control.request(sock, StatsRequest())
    assert stats["control"]["requests"] == {"send": 1, "outbox": 1, "lookup": 1, "stats": 1}

    twice = await cli.command("run", "--identity", str(a_key), "--json", *cli.common)
    assert twice.returncode == 1 and "already runs" in twice.stderr, twice.stderr
    assert "Traceback" not in twice.stderr and twice.stdout == ""

    a.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(a.wait, 15) == 0
    assert not sock.exists()  # removed on shutdown


async def test_without_a_running_node_a_command_starts_its_own(cli: Cli) -> None:
    a_key, a_fp = cli.identity("a")
    a, online = await cli.online(a_key, "a")
    sock = Path(online["control_socket"])
    a.kill()  # no clean shutdown: the socket file stays behind
    await asyncio.to_thread(a.wait, 15)
    assert sock.exists()

    look = await cli.command("lookup", a_fp, "--json", "--identity", str(a_key), *cli.common)
    assert look.returncode == 0, look.stderr
    assert f"no running node for {a_fp[:16]}…: starting one" in look.stderr
    assert not sock.exists()  # its own node's claim replaced the dead node's socket
    own = await cli.command("lookup", a_fp, "--identity", str(a_key), "--own-node",
                            *cli.common)
    assert own.returncode == 0 and "starting one" not in own.stderr, own.stderr

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(sock))  # a killed node's socket file once more, for the next run
    again = cli.start_run(a_key, "a")
    assert (await cli.event(again))["event"] == "online"
    stats = await control.request(sock, StatsRequest())
    assert stats["control"]["stale_replaced"] == 1
    again.send_signal(signal.SIGINT)
    assert await asyncio.to_thread(again.wait, 15) == 0
    assert not sock.exists()
    assert again.stderr is not None
    assert "removed the control socket a stopped node left" in again.stderr.read()


def test_many_or_large_messages_are_split_into_requests_that_fit() -> None:
    many = [b"m%d" % i for i in range(MAX_MESSAGES * 2 + 1)]
    batches = control.send_requests(FP, many)
    assert [len(b.payloads) for b in batches] == [MAX_MESSAGES, MAX_MESSAGES, 1]
    large = [b"x" * (MAX_REQUEST // 3)] * 4  # base64 makes each 4/9 of the limit
    batches = control.send_requests(FP, large)
    assert [len(b.payloads) for b in batches] == [2, 2]
    for batch in [*batches, *control.send_requests(FP, many)]:
        assert parse_request(encode_request(batch)) == batch  # each one fits and parses
    assert [p for b in control.send_requests(FP, many) for p in b.payloads] == many
