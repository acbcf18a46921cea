"""The README's mailbox scenario from the CLI, as separate processes: a mailbox, B and A, never
online together; the whole DHT replaced twice; the mailbox SIGKILLed and restarted between."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from pathlib import Path
from typing import Any

from tests.cli_runs import TIERLINK
from tests.dht_switch import DhtSwitch, in_dht
from tests.waiting import eventually
from tierlink.wire.dhtkeys import ice_candidates_key, mailboxes_key


async def run(*args: str) -> subprocess.CompletedProcess[str]:
    """A CLI command to its end (in a thread: the DHT forwarder runs on this loop)."""
    return await asyncio.to_thread(
        subprocess.run, [*TIERLINK, *args], capture_output=True, text=True, timeout=90)


class Proc:
    """A long-running CLI process whose JSON stdout lines are read one at a time."""

    def __init__(self, *args: str) -> None:
        self.p = subprocess.Popen([*TIERLINK, *args], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)

    async def line(self) -> dict[str, Any]:
        """The next JSON line other than a path event (``run`` prints one per link)."""
        assert self.p.stdout is not None
        while True:
            text = await asyncio.wait_for(asyncio.to_thread(self.p.stdout.readline), 60)
            assert text, self.p.stderr.read() if self.p.stderr else "no output"
            obj: dict[str, Any] = json.loads(text)
            if obj.get("event") != "path":
                return obj

    async def stop(self, sig: signal.Signals = signal.SIGINT) -> int:
        if self.p.poll() is None:
            self.p.send_signal(sig)
        return await asyncio.to_thread(self.p.wait, 30)


async def test_mailbox_scenario_from_the_cli(switch: DhtSwitch, tmp_path: Path) -> None:
    keys = {n: tmp_path / f"{n}.json" for n in "mab"}
    fps = {n: (await run("id", "new", "--out", str(k))).stdout.strip() for n, k in keys.items()}
    common = ["--dht-proxy", switch.proxy_url, "--host-address", "127.0.0.1", "--json"]

    def node(n: str) -> list[str]:
        return ["--identity", str(keys[n]), "--data-dir", str(tmp_path / n), *common]

    serve = ["mailbox", "serve", *node("m"), "--record-lifetime", "3",
             "--descriptor-interval", "1"]
    procs: list[Proc] = []
    try:
        m = Proc(*serve)
        procs.append(m)
        assert (await m.line())["fingerprint"] == fps["m"]
        b = Proc("run", *node("b"), "--mailbox", fps["m"])
        procs.append(b)
        assert (await b.line())["event"] == "online"

        async def holds(count: int | None) -> bool:
            st = await run("mailbox", "status", "--data-dir", str(tmp_path / "m"), "--json")
            rows = json.loads(st.stdout or "[]")
            return any(r["recipient"] == fps["b"] and (count is None or r["messages"] == count)
                       for r in rows)

        await eventually(lambda: holds(None), 60, "B registered with the mailbox")
        assert await b.stop() == 0
        await switch.replace()  # B's record is gone, as after days away
        await in_dht(switch, ice_candidates_key(fps["m"]), mailboxes_key(fps["b"]))

        sent = await run("send", fps["b"], "hello via the mailbox", *node("a"),
                         "--timeout", "2", "--wait", "0")
        assert sent.returncode == 0, sent.stderr
        result = json.loads(sent.stdout)
        assert result["state"] == "in_mailbox" and result["mailboxes"] == [fps["m"]]
        box = await run("outbox", "--data-dir", str(tmp_path / "a"), "--json")
        assert [e["state"] for e in json.loads(box.stdout)] == ["in_mailbox"]
        assert await holds(1)

        await m.stop(signal.SIGKILL)  # the mailbox dies; what it acknowledged is on disk
        m = Proc(*serve)
        procs.append(m)
        await m.line()
        assert await holds(1)
        await switch.replace()
        await in_dht(switch, ice_candidates_key(fps["m"]))

        b = Proc("run", *node("b"), "--mailbox", fps["m"])
        procs.append(b)
        assert (await b.line())["event"] == "online"
        got = await b.line()
        assert (got["text"], got["from"], got["tier"]) == (
            "hello via the mailbox", fps["a"], "mailbox")
        await eventually(lambda: holds(0), 60, "the mailbox deleted the message")
        assert await b.stop() == 0
        assert b.p.stdout is not None
        rest = [json.loads(line) for line in b.p.stdout.read().splitlines()]
        assert all(e["event"] == "path" for e in rest), rest  # the message exactly once

        a = Proc("run", *node("a"))  # A returns; B is gone again
        procs.append(a)
        await a.line()

        async def delivered() -> bool:
            out = await run("outbox", "--all", "--data-dir", str(tmp_path / "a"), "--json")
            return [e["state"] for e in json.loads(out.stdout)] == ["delivered"]

        await eventually(delivered, 60, "A's outbox shows delivered")
    finally:
        for p in procs:
            if p.p.poll() is None:
                await p.stop(signal.SIGKILL)


async def test_a_recipient_unregisters_from_the_cli(switch: DhtSwitch, tmp_path: Path) -> None:
    """``tierlink mailbox unregister``: B's node withdraws B's registration; the mailbox drops
    what it held for B and A, when it returns, sees its message ``expired`` (never silent)."""
    keys = {n: tmp_path / f"{n}.json" for n in "mab"}
    fps = {n: (await run("id", "new", "--out", str(k))).stdout.strip() for n, k in keys.items()}
    common = ["--dht-proxy", switch.proxy_url, "--host-address", "127.0.0.1", "--json"]

    def node(n: str) -> list[str]:
        return ["--identity", str(keys[n]), "--data-dir", str(tmp_path / n), *common]

    async def status() -> list[dict[str, Any]]:
        st = await run("mailbox", "status", "--data-dir", str(tmp_path / "m"), "--json")
        assert st.returncode == 0, st.stderr
        rows: list[dict[str, Any]] = json.loads(st.stdout)
        return rows

    procs: list[Proc] = []
    try:
        m = Proc("mailbox", "serve", *node("m"), "--record-lifetime", "3")
        procs.append(m)
        await m.line()
        b = Proc("run", *node("b"), "--mailbox", fps["m"])
        procs.append(b)
        await b.line()
        await eventually(status, 60, "B registered with the mailbox")
        busy = await run("mailbox", "unregister", fps["m"], *node("b"))
        assert busy.returncode == 1 and "already runs" in busy.stderr, busy.stderr
        assert "Traceback" not in busy.stderr
        assert await b.stop() == 0

        sent = await run("send", fps["b"], "held, then dropped", *node("a"), "--timeout", "2",
                         "--wait", "0")
        assert json.loads(sent.stdout)["state"] == "in_mailbox", sent.stderr
        assert [r["messages"] for r in await status()] == [1]

        out = await run("mailbox", "unregister", fps["m"], *node("b"))
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == {"event": "unregistered", "mailbox": fps["m"],
                                          "dropped": 1}
        assert await status() == []
        nobody = await run("mailbox", "unregister", "cd" * 64, *node("b"), "--timeout", "2")
        assert nobody.returncode == 1 and nobody.stderr.startswith("tierlink: "), nobody.stderr
        assert "Traceback" not in nobody.stderr
        again = await run("send", fps["b"], "after the revocation", *node("a"), "--timeout",
                          "2", "--wait", "0")
        assert json.loads(again.stdout)["state"] == "queued"  # refused: not-registered

        async def told() -> bool:
            box = await run("outbox", "--all", "--data-dir", str(tmp_path / "a"), "--json")
            return sorted(e["state"] for e in json.loads(box.stdout)) == ["expired",
                                                                           "queued_dht"]

        a = Proc("run", *node("a"))  # A returns and takes the mailbox's notice
        procs.append(a)
        await a.line()
        await eventually(told, 60, "A's outbox shows the dropped message expired")
    finally:
        for p in procs:
            if p.p.poll() is None:
                await p.stop(signal.SIGKILL)


async def test_bad_mailbox_commands_fail_clearly(tmp_path: Path) -> None:
    """Bad input: one clear line and a non-zero status, never a traceback."""
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "mailbox.db").write_text("not a database")
    fp = "ab" * 64
    key = tmp_path / "m.json"
    await run("id", "new", "--out", str(key))
    cases = [
        (["mailbox", "unregister", "not-a-fingerprint"], 2, "fingerprint"),
        (["mailbox", "revoke", fp, "--data-dir", str(tmp_path / "none")], 1,
         "no mailbox database"),
        (["mailbox", "status", "--data-dir", str(junk)], 1, "not a usable tierlink store"),
        (["mailbox", "revoke", fp, "--data-dir", str(junk)], 1, "not a usable tierlink store"),
        (["mailbox", "serve", "--quota-mb", "-1", "--identity", str(key)], 2,
         "expected MiB from 0"),
        (["mailbox", "serve", "--quota-mb", "lots"], 2, "invalid value 'lots'"),
    ]
    for argv, code, needle in cases:
        res = await run(*argv)
        assert res.returncode == code, (argv, res.stderr)
        assert needle in res.stderr and "Traceback" not in res.stderr, (argv, res.stderr)
