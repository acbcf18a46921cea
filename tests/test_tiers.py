"""Never lose a message: tiered send, the DHT offline queue, the durable outbox."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.nodes import config_for
from tests.waiting import eventually
from tierlink.dht import DhtClient
from tierlink.errors import DialTimeout
from tierlink.identity import Identity
from tierlink.node import Node
from tierlink.node.incoming_messages import Message
from tierlink.offline import create_envelope
from tierlink.offline.outbox import DELIVERED
from tierlink.transport.connection import Connection
from tierlink.wire.dhtkeys import offline_acks_key, offline_queue_key
from tierlink.wire.envelope import ack_token


async def collect(node: Node, into: list[Message]) -> None:
    async for msg in node.messages():
        into.append(msg)


def queued_in_dht(node: Node, mids: list[bytes]) -> bool:
    """Whether every message in ``mids`` went to the DHT's offline queue."""
    assert node.messenger is not None
    return all(node.messenger.outbox.get(m).state == "queued_dht"  # type: ignore[union-attr]
               for m in mids)


async def test_live_delivery_reports_direct_tier(dht_cluster) -> None:
    async with Node(config_for(dht_cluster[0])) as a, Node(config_for(dht_cluster[1])) as b:
        got: list[Message] = []
        reader = asyncio.create_task(collect(b, got))
        mids = [await a.send(b.fingerprint, f"m{i}".encode()) for i in range(5)]
        for mid in mids:
            d = await a.wait_delivered(mid, 15)
            assert d is not None and d.tier == "direct" and d.recipient == b.fingerprint
        assert [m.payload for m in got] == [f"m{i}".encode() for i in range(5)]
        assert {m.sender for m in got} == {a.fingerprint} and {m.tier for m in got} == {"direct"}
        assert a.messenger is not None and a.messenger.outbox.pending() == []
        reader.cancel()
        with pytest.raises(ValueError):
            await a.send("nope", b"x")
        with pytest.raises(ValueError):
            await a.send(b.fingerprint, b"")


async def test_offline_maintenance_does_not_steal_a_live_delivery(dht_cluster) -> None:
    async with Node(config_for(dht_cluster[0])) as a, Node(config_for(dht_cluster[1])) as b:
        assert a.messenger is not None
        got: list[Message] = []
        reader = asyncio.create_task(collect(b, got))
        mid = await a.send(b.fingerprint, b"race me")
        assert await a.messenger.offline.reput_due() == 0  # the live tier holds it
        d = await a.wait_delivered(mid, 15)
        reader.cancel()
        assert d is not None and d.tier == "direct" and [m.tier for m in got] == ["direct"]


async def test_recipient_offline_then_online_receives_once(dht_cluster) -> None:
    ib = Identity.generate()
    b_dir = config_for(dht_cluster[1]).data_dir
    async with Node(config_for(dht_cluster[1], identity=ib, data_dir=b_dir)):
        pass  # B was online once: its record (with its KEM key) is in the DHT
    async with Node(config_for(dht_cluster[0], send_budget=2.0)) as a:
        assert a.messenger is not None
        mids = [await a.send(ib.fingerprint, f"while away {i}".encode()) for i in range(3)]
        await eventually(lambda: queued_in_dht(a, mids), what="all three queued in the DHT")
        # One failed dial; the next messages skip the wait.
        assert (a.stats()["dials"], a.stats()["dials_failed"]) == (1, 1)
        async with Node(config_for(dht_cluster[2], identity=ib, data_dir=b_dir)) as b:
            got: list[Message] = []
            reader = asyncio.create_task(collect(b, got))
            for mid in mids:
                d = await a.wait_delivered(mid, 30)
                assert d is not None and d.tier == "offline"
            reader.cancel()
        assert sorted(m.payload for m in got) == [f"while away {i}".encode() for i in range(3)]
        assert all(m.tier == "offline" for m in got)
        assert a.messenger.outbox.pending() == []
    print(f"\noffline: sent 3, delivered {len(got)}, duplicates 0, lost 0")


SENDER = """
import asyncio, sys
from pathlib import Path
from tierlink.identity import Identity
from tierlink.node import Node, NodeConfig
async def main():
    proxy, key, data, to = sys.argv[1:5]
    cfg = NodeConfig(identity=Identity.load(Path(key)), dht_proxy=proxy,
                     host_addresses=["127.0.0.1"], data_dir=Path(data), send_budget=5.0)
    async with Node(cfg) as node:
        if len(sys.argv) > 5:
            mid = await node.send(to, sys.argv[5].encode())
            print(mid.hex(), flush=True)
            await asyncio.sleep(60)  # killed here
        else:
            pending = node.messenger.outbox.pending()
            print(len(pending), flush=True)
            for e in pending:
                d = await node.wait_delivered(e.message_id, 30)
                print(d.tier if d else "undelivered", flush=True)
asyncio.run(main())
"""


async def test_sender_killed_after_send_delivers_on_restart(dht_cluster, tmp_path: Path) -> None:
    ia = Identity.generate()
    key = tmp_path / "a.json"
    ia.save(key)
    data = tmp_path / "a-state"
    ib = Identity.generate()
    b_cfg = config_for(dht_cluster[1], identity=ib)
    async with Node(b_cfg):
        pass  # B was online once: its record (with its KEM key) is in the DHT
    argv = [sys.executable, "-c", SENDER, dht_cluster[0].proxy_url, str(key), str(data),
            ib.fingerprint]
    proc = await asyncio.create_subprocess_exec(*argv, "survive me", stdout=subprocess.PIPE)
    assert proc.stdout is not None
    mid = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode().strip()
    proc.send_signal(signal.SIGKILL)  # right after send() returned
    await proc.wait()
    async with Node(b_cfg) as b:  # now B is online: the restarted sender delivers
        got: list[Message] = []
        reader = asyncio.create_task(collect(b, got))
        again = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.PIPE)
        out, _ = await asyncio.wait_for(again.communicate(), 90)
        lines = out.decode().split()
        await eventually(lambda: got, what="the message at B")
        reader.cancel()
    assert lines[0] == "1" and lines[1] in ("direct", "offline")
    assert [m.payload for m in got] == [b"survive me"] and got[0].message_id.hex() == mid
    print(f"\nkilled sender: delivered after restart via {lines[1]}")


async def test_lost_ack_is_resent_but_delivered_once(dht_cluster, monkeypatch) -> None:
    async with (
        Node(config_for(dht_cluster[0], ack_timeout=2.0, send_budget=3.0)) as a,
        Node(config_for(dht_cluster[1])) as b,
    ):
        assert b.messenger is not None
        real_ack = b.messenger.incoming.ack
        dropped = []

        async def lossy_ack(conn, mid):
            if not dropped:
                dropped.append(mid)  # the first acknowledgement is lost on the way
                return
            await real_ack(conn, mid)

        monkeypatch.setattr(b.messenger.incoming, "ack", lossy_ack)
        got: list[Message] = []
        reader = asyncio.create_task(collect(b, got))
        mid = await a.send(b.fingerprint, b"only once please")
        d = await a.wait_delivered(mid, 40)
        reader.cancel()
        assert dropped == [mid]
        assert d is not None and d.tier == "offline"  # re-sent through the DHT, re-acked
        assert [m.payload for m in got] == [b"only once please"]
    print(f"\nlost ack: sent 1, delivered {len(got)}, re-sent 1, duplicates suppressed 1")


async def test_forged_and_misaddressed_envelopes_deliver_nothing(dht_cluster) -> None:
    async with Node(config_for(dht_cluster[1])) as b:
        got: list[Message] = []
        reader = asyncio.create_task(collect(b, got))
        mallory, alice, carol = Identity.generate(), Identity.generate(), Identity.generate()
        good, _ = create_envelope(alice, b.fingerprint, b.identity.kem_public_key, b"hi", 60)
        forged = bytearray(good)
        forged[-10] ^= 1  # the AEAD tag no longer verifies
        other, _ = create_envelope(mallory, carol.fingerprint, carol.kem_public_key, b"x", 60)
        async with DhtClient(dht_cluster[0].proxy_url) as dht:
            for value in (bytes(forged), other, b"\x01\x04garbage"):
                await dht.put(offline_queue_key(b.fingerprint), value)
            await dht.put(offline_queue_key(b.fingerprint), good)
        assert b.messenger is not None
        rejected = b.messenger.offline.inbox.rejected
        await eventually(lambda: got and rejected["decrypt"] >= 2,
                         what="the good envelope delivered, the bad ones rejected")
        reader.cancel()
        assert [m.payload for m in got] == [b"hi"] and got[0].sender == alice.fingerprint


async def test_dht_observer_cannot_read_payloads(dht_cluster) -> None:
    ib = Identity.generate()
    async with Node(config_for(dht_cluster[1], identity=ib)):
        pass
    secret = b"the eagle lands at dawn " + os.urandom(8).hex().encode()
    async with Node(config_for(dht_cluster[0], send_budget=1.0)) as a:
        mid = await a.send(ib.fingerprint, secret)
        await eventually(lambda: queued_in_dht(a, [mid]), what="the message queued in the DHT")
        async with DhtClient(dht_cluster[2].proxy_url) as spy:
            values: list[bytes] = await eventually(
                lambda: spy.get(offline_queue_key(ib.fingerprint)), 10,
                "the envelope readable from a third node", interval=0.1,
            )
    assert all(secret not in v and secret[:16] not in v for v in values)
    assert all(bytes.fromhex(a.fingerprint) not in v for v in values)  # nor the sender


async def refuse(fingerprint: str, timeout: float) -> Connection:
    """A dial that always fails, as when the peer stopped answering."""
    raise DialTimeout(f"{fingerprint[:16]}… does not answer")


async def test_live_path_failing_midstream_falls_back_to_dht(dht_cluster, monkeypatch) -> None:
    n = 20
    async with (
        Node(config_for(dht_cluster[0], ack_timeout=3.0, send_budget=2.0)) as a,
        Node(config_for(dht_cluster[1])) as b,
    ):
        assert a.messenger is not None and b.messenger is not None
        got: list[Message] = []
        reader = asyncio.create_task(collect(b, got))
        mids = []
        for i in range(n):
            mids.append(await a.send(b.fingerprint, f"msg {i}".encode()))
            if i == n // 2:
                await eventually(lambda: len(got) >= 3, what="three messages at B")
                monkeypatch.setattr(a.messenger, "dial", refuse)  # no new live links to B
                link = await eventually(lambda: a.messenger.link(b.fingerprint),
                                        what="A's message link to B")
                await link.close()  # the live path fails underneath
        tiers = []
        for mid in mids:
            d = await a.wait_delivered(mid, 60)
            assert d is not None
            tiers.append(d.tier)
        reader.cancel()
        payloads = sorted(m.payload for m in got)
        assert payloads == sorted(f"msg {i}".encode() for i in range(n))  # each exactly once
        assert "direct" in tiers and "offline" in tiers
        assert all(a.messenger.outbox.get(m).state == DELIVERED for m in mids)
        dups = b.messenger.incoming.duplicates_suppressed
    print(f"\nmid-stream failure: sent {n}, delivered {len(got)} "
          f"(direct {tiers.count('direct')}, offline {tiers.count('offline')}), "
          f"duplicates suppressed {dups}, lost 0")


async def test_allow_listed_node_drops_strangers_offline_messages(dht_cluster) -> None:
    friend, stranger = Identity.generate(), Identity.generate()
    async with Node(config_for(dht_cluster[1], allow={friend.fingerprint})) as b:
        assert b.messenger is not None
        got: list[Message] = []
        reader = asyncio.create_task(collect(b, got))
        kem = b.identity.kem_public_key
        spam, _ = create_envelope(stranger, b.fingerprint, kem, b"buy now", 60)
        hello, _ = create_envelope(friend, b.fingerprint, kem, b"hello", 60)
        async with DhtClient(dht_cluster[0].proxy_url) as dht:
            await dht.put(offline_queue_key(b.fingerprint), spam)
            await dht.put(offline_queue_key(b.fingerprint), hello)
            rejected = b.messenger.offline.inbox.rejected
            await eventually(lambda: got and rejected["not-allowed"],
                             what="the friend's message delivered, the stranger's refused")
            await eventually(lambda: dht.get(offline_acks_key(ack_token(friend, b.fingerprint))),
                             what="the friend's ack")
            stranger_acks = await dht.get(offline_acks_key(ack_token(stranger, b.fingerprint)))
        reader.cancel()
        assert [(m.sender, m.payload) for m in got] == [(friend.fingerprint, b"hello")]
        assert rejected["not-allowed"] == 1 and stranger_acks == []


async def test_full_delivered_log_holds_live_messages_back_then_delivers_once(
    dht_cluster,
) -> None:
    """A receiver whose delivered log is full takes no new message from a live link (no ack,
    counted), so the sender keeps it; once the log has room it arrives, once."""
    async with (
        Node(config_for(dht_cluster[0], ack_timeout=2.0, send_budget=3.0)) as a,
        Node(config_for(dht_cluster[1])) as b,
    ):
        assert b.messenger is not None
        log = b.messenger.delivered_log
        got: list[Message] = []
        reader = asyncio.create_task(collect(b, got))
        first = await a.send(b.fingerprint, b"fills the log")
        assert await a.wait_delivered(first, 15) is not None
        log.capacity = len(log)  # full: no entry may be added
        held = await a.send(b.fingerprint, b"held back")
        await eventually(lambda: b.stats()["messages_held_back"] >= 1, 20,
                         "the live message held back")
        assert [m.payload for m in got] == [b"fills the log"]
        log.capacity = len(log) + 1
        d = await a.wait_delivered(held, 60)
        reader.cancel()
        assert d is not None
        assert [m.payload for m in got] == [b"fills the log", b"held back"]
