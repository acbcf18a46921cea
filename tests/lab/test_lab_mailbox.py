"""A mailbox, its recipient B and a sender A, each behind its own NAT in the lab, never online
together: B registers and leaves, A deposits and leaves, B returns and receives the message
exactly once, A returns and sees ``delivered``.

Every process is the ``tierlink`` CLI run in a lab host namespace (the lab's DHT proxy and
STUN server on the simulated internet); the mailbox's database, read beside it, shows that
each leg crossed the NATs: A's deposit (held), B's collection (deleted on B's TAKEN over
its mailbox connection) and A's receipt (taken by A). The lab is removed also on failure.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from typing import Any

import pytest

from tests.waiting import eventually
from tierlink.identity import Identity
from tierlink.lab.netns import python_argv
from tierlink.lab.topology import INTERNET_IP, Lab
from tierlink.lab.worlds import world_probe
from tierlink.mailbox import MailboxStore

pytestmark = pytest.mark.lab

NATS = {"m": "port-restricted", "b": "port-restricted", "a": "restricted"}
"""Each party's NAT: every pair can connect directly (no TURN in this lab)."""


class Party:
    """One identity with its data directory and lab host namespace."""

    def __init__(self, lab: Lab, name: str, preset: str) -> None:
        self.lab = lab
        self.site = lab.add_site(preset, profile=None)
        self.ns = self.site.hosts[0][0]
        self.identity = Identity.generate()
        self.fingerprint = self.identity.fingerprint
        self.key = lab.run.workdir / f"{name}.json"
        self.key.write_text(self.identity.to_json())
        self.key.chmod(0o600)
        self.data = lab.run.workdir / name
        self.logs = 0

    def reaches_dht(self) -> bool:
        """The lab's DHT proxy answers this host (through its NAT) on TCP 80."""
        got = world_probe(self.lab.run, self.ns, "http", "--to", f"{INTERNET_IP}:80",
                          "--path", "/key/" + "0" * 40)
        return bool(got["ok"])

    def argv(self, *args: str) -> list[str]:
        """A ``tierlink`` command as this party, on the lab's DHT proxy and STUN server."""
        host, port = self.lab.stun_server
        return python_argv("tierlink.cli", "-v", *args, "--identity", str(self.key), "--data-dir",
                           str(self.data), "--dht-proxy", self.lab.dht_proxy,
                           "--stun", f"stun:{host}:{port}", "--json")

    def spawn(self, *args: str) -> subprocess.Popen[str]:
        """Start a command; its stderr goes to a log printed if the test fails."""
        self.logs += 1
        log = self.lab.run.workdir / f"{self.data.name}-{self.logs}.log"
        with log.open("w") as err:
            return self.lab.run.spawn(self.ns, self.argv(*args), stderr=err)

    def print_logs(self) -> None:
        for log in sorted(self.lab.run.workdir.glob(f"{self.data.name}-*.log")):
            print(f"--- {log.name} ({self.site.preset})\n{log.read_text()[-8000:]}")


async def next_event(proc: subprocess.Popen[str]) -> dict[str, Any]:
    """The next JSON line of a long-running command other than a path event."""
    assert proc.stdout is not None
    while True:
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 120)
        assert line, proc.stderr.read() if proc.stderr else "no output"
        obj: dict[str, Any] = json.loads(line)
        if obj.get("event") != "path":
            return obj


async def stop(proc: subprocess.Popen[str]) -> tuple[int, list[dict[str, Any]]]:
    """SIGINT, then its exit status and the JSON lines it printed meanwhile."""
    proc.send_signal(signal.SIGINT)
    out, _err = await asyncio.to_thread(proc.communicate, timeout=60)
    return proc.returncode, [json.loads(x) for x in out.splitlines() if x.strip()]


def mailbox_rows(m: Party) -> dict[str, int]:
    """Messages the mailbox's database holds, per registered recipient."""
    path = m.data / "mailbox.db"
    if not path.exists():
        return {}
    with MailboxStore(path) as store:
        return {str(r["recipient"]): int(str(r["messages"])) for r in store.status()}


def receipts_for(m: Party, depositor: str) -> int:
    with MailboxStore(m.data / "mailbox.db") as store:
        return len(store.receipts(depositor, 64))


def outbox_states(a: Party) -> list[str]:
    out = subprocess.run([sys.executable, "-m", "tierlink.cli", "outbox", "--all",
                          "--data-dir", str(a.data), "--json"],
                         capture_output=True, text=True, timeout=60, check=True)
    return [e["state"] for e in json.loads(out.stdout)]


async def test_mailbox_scenario_behind_nats() -> None:
    with Lab() as lab:  # coturn is also the lab's STUN server (TURN itself unused)
        m, b, a = (Party(lab, n, NATS[n]) for n in ("m", "b", "a"))
        try:
            await scenario(m, b, a)
        except BaseException:
            for party in (m, b, a):
                party.print_logs()
            raise


async def scenario(m: Party, b: Party, a: Party) -> None:
    """The steps of the module docstring."""
    for party in (m, b, a):
        await eventually(lambda party=party: asyncio.to_thread(party.reaches_dht), 60,
                         f"the DHT proxy answers {party.ns}")
    serve = m.spawn("mailbox", "serve", "--record-lifetime", "60",
                    "--descriptor-interval", "10")
    assert (await next_event(serve))["fingerprint"] == m.fingerprint

    b_run = b.spawn("run", "--mailbox", m.fingerprint)
    assert (await next_event(b_run))["event"] == "online"
    await eventually(lambda: b.fingerprint in mailbox_rows(m), 120,
                     "B registered with the mailbox across both NATs")
    code, _lines = await stop(b_run)
    assert code == 0

    sent = await asyncio.to_thread(
        subprocess.run, ["ip", "netns", "exec", a.ns,
                         *a.argv("send", b.fingerprint, "hello through NATs", "--timeout",
                                 "5", "--wait", "0")],
        capture_output=True, text=True, timeout=180)
    assert sent.returncode == 0, sent.stderr
    result = json.loads(sent.stdout)
    assert (result["state"], result["mailboxes"]) == ("in_mailbox", [m.fingerprint])
    assert mailbox_rows(m) == {b.fingerprint: 1}  # A's deposit crossed A's and M's NATs

    b_run = b.spawn("run", "--mailbox", m.fingerprint)
    assert (await next_event(b_run))["event"] == "online"
    got = await next_event(b_run)
    assert (got["event"], got["text"], got["from"]) == (
        "message", "hello through NATs", a.fingerprint)
    await eventually(lambda: mailbox_rows(m) == {b.fingerprint: 0}, 120,
                     "B took the message from the mailbox")
    code, rest = await stop(b_run)
    assert code == 0
    assert [e for e in rest if e.get("event") == "message"] == []  # exactly once

    a_run = a.spawn("run")
    assert (await next_event(a_run))["event"] == "online"
    await eventually(lambda: outbox_states(a) == ["delivered"], 120,
                     "A's outbox shows delivered")
    await eventually(lambda: receipts_for(m, a.fingerprint) == 0, 120,
                     "A took its receipt from the mailbox")
    code, _lines = await stop(a_run)
    assert code == 0
