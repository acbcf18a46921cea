"""A mailbox process SIGKILLed while a deposit is in flight, then restarted: the sender
retries, nothing is lost, the mailbox stores each message once and the recipient gets each
exactly once.

The mailbox is a real ``tierlink mailbox serve`` process on loopback (killed with SIGKILL,
restarted on the same identity and database); the sender A and the recipient B are real
nodes in this process. A's mailbox client dials through a wrapper that lets the test see the
moment A starts sending a DEPOSIT frame (the public ``MailboxClient.dial`` hook); nothing in
the mailbox is instrumented.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from tests.dht_switch import DhtSwitch, in_dht
from tests.nodes import config_for
from tests.waiting import eventually
from tierlink.identity import Identity
from tierlink.mailbox import MailboxStore
from tierlink.mailbox.codec import DEPOSIT, decode_frame
from tierlink.node import Node
from tierlink.node.incoming_messages import Message
from tierlink.offline.outbox import IN_MAILBOX
from tierlink.transport.connection import Connection
from tierlink.wire.dhtkeys import ice_candidates_key

#: A deposit of this size takes many QUIC packets: the frame is still on its way when the
#: mailbox, frozen as A's connection to it comes up, is killed.
LARGE = 48_000


class MailboxProcess:
    """``tierlink mailbox serve`` as a child process, restartable on its identity and data."""

    def __init__(self, switch: DhtSwitch, root: Path) -> None:
        self.identity = Identity.generate()
        self.fingerprint = self.identity.fingerprint
        self.key, self.data = root / "m.json", root / "m"
        self.key.write_text(self.identity.to_json())
        self.key.chmod(0o600)
        self.log = root / "m.log"
        self.argv = [sys.executable, "-m", "tierlink.cli", "mailbox", "serve",
                     "--identity", str(self.key), "--data-dir", str(self.data),
                     "--dht-proxy", switch.proxy_url, "--host-address", "127.0.0.1", "--json",
                     "--record-lifetime", "3", "--descriptor-interval", "1"]
        self.proc: subprocess.Popen[str] | None = None
        self.starts = 0

    async def start(self) -> None:
        """Start it and wait for its ``mailbox`` line (its record is published by then)."""
        with self.log.open("a") as err:
            self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=err,
                                         text=True)
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(self.proc.stdout.readline), 60)
        assert json.loads(line)["fingerprint"] == self.fingerprint, self.log.read_text()
        self.starts += 1

    def freeze(self) -> None:
        """SIGSTOP: it reads nothing more (what is sent to it stays in flight)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def kill(self) -> None:
        """SIGKILL (also when frozen) and reap it (from any thread)."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(30)

    def dead(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def held(self, recipient: str) -> int:
        """Envelopes its database holds for ``recipient`` (read beside it: WAL)."""
        with MailboxStore(self.data / "mailbox.db") as store:
            return sum(int(str(r["messages"])) for r in store.status()
                       if r["recipient"] == recipient)

    def holds(self, depositor: str, mid: bytes) -> bool:
        with MailboxStore(self.data / "mailbox.db") as store:
            return store.has(depositor, mid)

    def registered(self, recipient: str) -> bool:
        if not (self.data / "mailbox.db").exists():
            return False
        with MailboxStore(self.data / "mailbox.db") as store:
            return any(r["recipient"] == recipient for r in store.status())

    def duplicates_logged(self) -> int:
        return self.log.read_text().count("stored once")


class Watched:
    """A mailbox connection of A whose DEPOSIT the test sees leave and be answered."""

    def __init__(self, conn: Connection, on_deposit: asyncio.Event,
                 at_deposit: Callable[[], None] | None) -> None:
        self.conn = conn
        self.remote_fingerprint = conn.remote_fingerprint
        self.on_deposit = on_deposit
        self.at_deposit = at_deposit
        self.depositing = False
        self.deposit_sent = False
        self.answered = False
        self.span = 0.0
        """Seconds from handing the DEPOSIT to the connection to reading its answer."""
        self._t0 = 0.0

    async def send(self, data: bytes) -> int:
        if decode_frame(data).type != DEPOSIT:
            return await self.conn.send(data)
        self.depositing = True
        self._t0 = time.monotonic()
        if self.at_deposit is not None:
            self.at_deposit()
        self.on_deposit.set()
        n = await self.conn.send(data)
        self.deposit_sent = True
        return n

    async def recv(self, timeout: float | None = None) -> bytes | None:
        data = await self.conn.recv(timeout)
        if data is not None and self.depositing:
            self.answered = True
            self.span = time.monotonic() - self._t0
        return data

    async def close(self) -> None:
        await self.conn.close()


class DepositWatch:
    """Routes A's mailbox dials (``MailboxClient.dial``) through :class:`Watched` while
    armed; ``before`` runs once an armed connection is up, before A sends on it, and
    ``at_deposit`` as A hands it a DEPOSIT frame."""

    def __init__(self, a: Node) -> None:
        assert a.messenger is not None and a.messenger.mailbox is not None
        client = a.messenger.mailbox.client
        self.real = client.dial
        client.dial = self.dial
        self.on_deposit = asyncio.Event()
        self.seen: list[Watched] = []
        self.armed = 0
        self.before: Callable[[], None] | None = None
        self.at_deposit: Callable[[], None] | None = None

    def arm(self, count: int = 1_000, before: Callable[[], None] | None = None,
            at_deposit: Callable[[], None] | None = None) -> None:
        """Watch the next ``count`` connections."""
        self.on_deposit, self.seen, self.armed = asyncio.Event(), [], count
        self.before, self.at_deposit = before, at_deposit

    def deposit(self) -> Watched:
        """The watched connection that carried a DEPOSIT."""
        return next(w for w in self.seen if w.depositing)

    async def dial(self, fingerprint: str, timeout: float) -> Connection:
        conn = await self.real(fingerprint, timeout)
        if self.armed <= 0:
            return conn
        self.armed -= 1
        watched = Watched(conn, self.on_deposit, self.at_deposit)
        self.seen.append(watched)
        if self.before is not None:
            self.before()
        return cast(Connection, watched)


def node_config(switch: DhtSwitch, ident: Identity, data_dir: Path, **kw: Any) -> Any:
    kw.setdefault("send_budget", 2.0)
    kw.setdefault("mailbox_poll_interval", 0.5)
    kw.setdefault("dial_timeout", 5.0)
    kw.setdefault("ice_timeout", 5.0)
    return config_for(switch, identity=ident, data_dir=data_dir, **kw)  # type: ignore[arg-type]


async def collect(node: Node, into: list[Message]) -> None:
    async for msg in node.messages():
        into.append(msg)


async def test_mailbox_killed_with_a_large_deposit_in_flight_loses_nothing(
    switch: DhtSwitch, tmp_path: Path
) -> None:
    ia, ib = Identity.generate(), Identity.generate()
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    m = MailboxProcess(switch, tmp_path)
    b_conf = node_config(switch, ib, b_dir, mailboxes=[m.fingerprint])
    try:
        await m.start()
        async with Node(b_conf):
            await eventually(lambda: m.registered(ib.fingerprint), 60, "B registered")
        payload = os.urandom(LARGE // 2).hex().encode()
        async with Node(node_config(switch, ia, a_dir)) as a:
            assert a.messenger is not None
            watch = DepositWatch(a)
            watch.arm(1, before=m.freeze)  # A's first mailbox connection: its deposit
            mid = await a.send(ib.fingerprint, payload)
            await eventually(watch.on_deposit.is_set, 60, "A's deposit under way")
            m.kill()  # frozen since A's connection came up: the deposit is in flight
            assert not watch.deposit().answered
            assert m.held(ib.fingerprint) == 0 and not m.holds(ia.fingerprint, mid)
            await m.start()  # same identity, same database
            await eventually(lambda: a.messenger.outbox.get(mid).state == IN_MAILBOX, 120,
                             "A's retry deposited it with the restarted mailbox")
            assert m.held(ib.fingerprint) == 1
        await switch.replace()  # the DHT copy of the envelope is gone: only the mailbox has it
        await in_dht(switch, ice_candidates_key(m.fingerprint))
        got: list[Message] = []
        async with Node(b_conf) as b:
            reader = asyncio.create_task(collect(b, got))
            await eventually(lambda: got, 60, "B received the message")
            await eventually(lambda: m.held(ib.fingerprint) == 0, 60, "the mailbox deleted it")
            async with Node(node_config(switch, ia, a_dir)) as a:
                assert await a.wait_delivered(mid, 60) is not None
            reader.cancel()
        assert [(g.payload, g.sender, g.tier) for g in got] == [
            (payload, ia.fingerprint, "mailbox")]
    finally:
        m.kill()


TRIALS = 5


async def test_mailbox_killed_at_random_points_of_deposits_stores_each_once(
    switch: DhtSwitch, tmp_path: Path
) -> None:
    """Bounded trials: each SIGKILLs the mailbox from another thread at a random point of a
    deposit, from the moment A hands the DEPOSIT frame to its connection to 1.5 times as
    long as an undisturbed deposit took to be answered (mid-transfer, mid-commit, or with
    the answer on its way), then restarts it."""
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    ia, ib = Identity.generate(), Identity.generate()
    m = MailboxProcess(switch, tmp_path)
    b_conf = node_config(switch, ib, tmp_path / "b", mailboxes=[m.fingerprint])
    phases: Counter[str] = Counter()
    sent: dict[bytes, bytes] = {}
    try:
        await m.start()
        async with Node(b_conf):
            await eventually(lambda: m.registered(ib.fingerprint), 60, "B registered")
        async with Node(node_config(switch, ia, tmp_path / "a")) as a:
            assert a.messenger is not None
            outbox = a.messenger.outbox

            async def in_mailbox(i: int, mid: bytes) -> None:
                await eventually(lambda: outbox.get(mid).state == IN_MAILBOX,  # type: ignore[union-attr]
                                 120, f"deposit {i}: the message is in the mailbox")

            watch = DepositWatch(a)
            watch.arm()  # deposit 0 is undisturbed: its answer time sets the kill window
            mid = await a.send(ib.fingerprint, b"deposit 0")
            sent[mid] = b"deposit 0"
            await in_mailbox(0, mid)
            window = 1.5 * watch.deposit().span
            for i in range(1, TRIALS + 1):
                delay = rng.uniform(0, window)

                def kill_later(delay: float = delay) -> None:
                    threading.Timer(delay, m.kill).start()

                watch.arm(at_deposit=kill_later)
                payload = f"deposit {i} ".encode() + os.urandom(rng.randrange(100, LARGE // 2))
                mid = await a.send(ib.fingerprint, payload)
                sent[mid] = payload
                await eventually(m.dead, 60, f"deposit {i}: the mailbox was killed")
                w = watch.deposit()
                stored = m.holds(ia.fingerprint, mid)
                phases[f"sent={w.deposit_sent} answered={w.answered} stored={stored}"] += 1
                watch.arm(0)
                await m.start()
                await in_mailbox(i, mid)
            assert m.held(ib.fingerprint) == TRIALS + 1, (seed, phases)  # each stored once
            got: list[Message] = []
            async with Node(b_conf) as b:
                reader = asyncio.create_task(collect(b, got))
                for mid in sent:
                    assert await a.wait_delivered(mid, 60) is not None, (seed, phases)
                await eventually(lambda: m.held(ib.fingerprint) == 0, 60,
                                 "the mailbox deleted every message")
                reader.cancel()
        assert sorted(g.payload for g in got) == sorted(sent.values()), (seed, phases)
        print(f"seed {seed}: kill window {window * 1000:.1f} ms; kill points {dict(phases)}; "
              f"duplicates answered "
              f"{m.duplicates_logged()}; mailbox starts {m.starts}")
    finally:
        m.kill()

