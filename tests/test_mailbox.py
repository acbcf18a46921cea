"""Mailboxes: a message arrives although sender and recipient are never online together.

Real dhtnode processes (behind a forwarder, so the whole DHT can be replaced by an empty one)
and real nodes on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

from tests.dht_switch import DhtSwitch, in_dht
from tests.nodes import config_for
from tests.waiting import eventually
from tierlink.identity import Identity
from tierlink.mailbox import MailboxSettings
from tierlink.node import Node
from tierlink.node.incoming_messages import Message
from tierlink.offline.outbox import DELIVERED, EXPIRED, IN_MAILBOX
from tierlink.wire.dhtkeys import ice_candidates_key, mailboxes_key
from tierlink.wire.records import now_ms


def mailbox_config(sw: DhtSwitch, **kw: Any) -> Any:
    """A mailbox node: republishes its record every second, descriptors twice a second."""
    kw.setdefault("mailbox_serve", MailboxSettings(descriptor_interval=0.5, expiry_interval=0.5))
    return config_for(sw, record_lifetime=3.0, **kw)  # type: ignore[arg-type]


def peer_config(sw: DhtSwitch, **kw: Any) -> Any:
    kw.setdefault("send_budget", 2.0)
    kw.setdefault("mailbox_poll_interval", 0.5)
    return config_for(sw, **kw)  # type: ignore[arg-type]


async def collect(node: Node, into: list[Message]) -> None:
    async for msg in node.messages():
        into.append(msg)


def registered(m: Node, fp: str) -> bool:
    assert m.mailbox_server is not None
    return any(r["recipient"] == fp for r in m.mailbox_server.store.status())


async def test_never_online_together_delivered_once_and_sender_sees_delivered(
    switch: DhtSwitch,
) -> None:
    ia, ib = Identity.generate(), Identity.generate()
    a_dir, b_dir = (Path(tempfile.mkdtemp(prefix="tierlink-test-")) for _ in range(2))
    async with Node(mailbox_config(switch)) as m:
        assert m.mailbox_server is not None
        b_conf = peer_config(switch, identity=ib, data_dir=b_dir, mailboxes=[m.fingerprint])
        async with Node(b_conf):
            await eventually(lambda: registered(m, ib.fingerprint), 30, "B registered")
        await switch.replace()  # B's record (and everything else) is gone
        await in_dht(switch, ice_candidates_key(m.fingerprint), mailboxes_key(ib.fingerprint))

        async with Node(peer_config(switch, identity=ia, data_dir=a_dir)) as a:
            assert a.messenger is not None
            mid = await a.send(ib.fingerprint, b"through the mailbox")
            assert await a.messenger.wait_settled(mid, 60) == IN_MAILBOX
            assert m.mailbox_server.deposits == 1
        await switch.replace()
        await in_dht(switch, ice_candidates_key(m.fingerprint))

        got: list[Message] = []
        async with Node(b_conf) as b:
            reader = asyncio.create_task(collect(b, got))
            await eventually(lambda: got, 30, "B received the message")
            await eventually(lambda: m.mailbox_server.store.status()[0]["messages"] == 0, 30,
                             "the mailbox deleted it")
            async with Node(peer_config(switch, identity=ia, data_dir=a_dir)) as a:
                assert a.messenger is not None
                d = await a.wait_delivered(mid, 60)
                assert d is not None and d.recipient == ib.fingerprint
                entry = a.messenger.outbox.get(mid)
                assert entry is not None and entry.state == DELIVERED
            reader.cancel()
        assert [(g.payload, g.sender, g.tier) for g in got] == [
            (b"through the mailbox", ia.fingerprint, "mailbox")]


async def test_a_dead_mailbox_is_skipped_for_another(switch: DhtSwitch) -> None:
    ia, ib, dead = Identity.generate(), Identity.generate(), Identity.generate()
    a_dir = Path(tempfile.mkdtemp(prefix="tierlink-test-"))
    async with Node(mailbox_config(switch)) as m:
        assert m.mailbox_server is not None
        b_conf = peer_config(switch, identity=ib, mailboxes=[dead.fingerprint, m.fingerprint])
        async with Node(b_conf):
            await eventually(lambda: registered(m, ib.fingerprint), 30, "B registered")
        async with Node(peer_config(switch, identity=ia, data_dir=a_dir)) as a:
            assert a.messenger is not None and a.messenger.mailbox is not None
            mid = await a.send(ib.fingerprint, b"one mailbox is down")
            assert await a.messenger.wait_settled(mid, 60) == IN_MAILBOX
            assert a.messenger.mailboxes_holding(mid) == [m.fingerprint]
            got: list[Message] = []
            async with Node(b_conf) as b:
                reader = asyncio.create_task(collect(b, got))
                d = await a.wait_delivered(mid, 60)
                assert d is not None
                await eventually(lambda: m.mailbox_server.store.status()[0]["messages"] == 0,
                                 30, "the mailbox deleted it")
                await eventually(lambda: not a.messenger.mailbox.client.store.holding(), 30,
                                 "the sender took its receipt")
                reader.cancel()
            assert [g.payload for g in got] == [b"one mailbox is down"]


async def test_a_returning_sender_learns_delivery_from_the_mailbox_alone(
    switch: DhtSwitch,
) -> None:
    ia, ib = Identity.generate(), Identity.generate()
    a_dir = Path(tempfile.mkdtemp(prefix="tierlink-test-"))
    async with Node(mailbox_config(switch)) as m:
        assert m.mailbox_server is not None
        b_conf = peer_config(switch, identity=ib, mailboxes=[m.fingerprint])
        async with Node(b_conf):
            await eventually(lambda: registered(m, ib.fingerprint), 30, "B registered")
        async with Node(peer_config(switch, identity=ia, data_dir=a_dir)) as a:
            assert a.messenger is not None
            mid = await a.send(ib.fingerprint, b"ack held for me")
            assert await a.messenger.wait_settled(mid, 60) == IN_MAILBOX
        got: list[Message] = []
        async with Node(b_conf) as b:
            reader = asyncio.create_task(collect(b, got))
            await eventually(lambda: m.mailbox_server.store.receipts(ia.fingerprint, 8), 30,
                             "the mailbox holds A's receipt")
            reader.cancel()
        await switch.replace()  # B's DHT ack is gone: only the mailbox can tell A
        await in_dht(switch, ice_candidates_key(m.fingerprint))
        async with Node(peer_config(switch, identity=ia, data_dir=a_dir)) as a:
            assert a.messenger is not None
            d = await a.wait_delivered(mid, 60)
            assert d is not None
            await eventually(lambda: not m.mailbox_server.store.receipts(ia.fingerprint, 8),
                             30, "the mailbox forgot the receipt")
        assert len(got) == 1


async def test_a_mailbox_down_at_send_time_gets_the_message_when_it_is_back(
    switch: DhtSwitch,
) -> None:
    ia, ib, im = Identity.generate(), Identity.generate(), Identity.generate()
    m_dir = Path(tempfile.mkdtemp(prefix="tierlink-test-"))
    m_conf = mailbox_config(switch, identity=im, data_dir=m_dir)
    b_conf = peer_config(switch, identity=ib, mailboxes=[im.fingerprint])
    async with Node(m_conf) as m, Node(b_conf):
        await eventually(lambda: registered(m, ib.fingerprint), 30, "B registered")
    async with Node(peer_config(switch, identity=ia)) as a:
        assert a.messenger is not None
        mid = await a.send(ib.fingerprint, b"the mailbox was down")
        assert await a.messenger.wait_settled(mid, 60) == "queued"  # in the DHT only
        async with Node(m_conf) as m:  # the mailbox is back, with what it had on disk
            assert m.mailbox_server is not None and registered(m, ib.fingerprint)
            await eventually(lambda: a.messenger.outbox.get(mid).state == IN_MAILBOX, 30,
                             "A's retry deposited it")
            assert m.mailbox_server.deposits == 1
            got: list[Message] = []
            async with Node(b_conf) as b:
                reader = asyncio.create_task(collect(b, got))
                assert await a.wait_delivered(mid, 60) is not None
                reader.cancel()
            assert [g.payload for g in got] == [b"the mailbox was down"]


async def test_an_envelope_expiring_in_the_mailbox_is_reported_to_its_sender(
    switch: DhtSwitch,
) -> None:
    ia, ib = Identity.generate(), Identity.generate()
    offset = [0]

    def clock() -> int:
        return now_ms() + offset[0]

    settings = MailboxSettings(retention_s=60, descriptor_interval=0.5, expiry_interval=3600,
                               clock=clock)
    async with Node(mailbox_config(switch, mailbox_serve=settings)) as m:
        assert m.mailbox_server is not None
        async with Node(peer_config(switch, identity=ib, mailboxes=[m.fingerprint])):
            await eventually(lambda: registered(m, ib.fingerprint), 30, "B registered")
        async with Node(peer_config(switch, identity=ia)) as a:
            assert a.messenger is not None
            mid = await a.send(ib.fingerprint, b"too late")
            assert await a.messenger.wait_settled(mid, 60) == IN_MAILBOX
            offset[0] = 61_000  # past the mailbox's retention, not the message's own TTL
            assert m.mailbox_server.expire_now() == 1
            await eventually(lambda: a.messenger.outbox.get(mid).state == EXPIRED, 30,
                             "A told the message expired")


async def test_a_full_mailbox_refuses_and_the_sender_tries_the_next_or_keeps_the_message(
    switch: DhtSwitch,
) -> None:
    """An open mailbox at its total quota refuses (``full``): the sender deposits with the
    recipient's next mailbox, and while none takes it the message stays in its outbox."""
    ia, ib, im2 = Identity.generate(), Identity.generate(), Identity.generate()
    full = MailboxSettings(total_quota=1, descriptor_interval=0.5, expiry_interval=0.5)
    m2_conf = mailbox_config(switch, identity=im2,
                             data_dir=Path(tempfile.mkdtemp(prefix="tierlink-test-")))
    async with Node(mailbox_config(switch, mailbox_serve=full)) as m1:
        assert m1.mailbox_server is not None
        b_conf = peer_config(switch, identity=ib, mailboxes=[m1.fingerprint, im2.fingerprint])
        async with Node(m2_conf) as m2, Node(b_conf):
            await eventually(lambda: registered(m1, ib.fingerprint)
                             and registered(m2, ib.fingerprint), 30, "B registered with both")
        async with Node(peer_config(switch, identity=ia)) as a:  # the second mailbox is down
            assert a.messenger is not None and a.messenger.mailbox is not None
            client = a.messenger.mailbox.client
            mid = await a.send(ib.fingerprint, b"the first mailbox is full")
            assert await a.messenger.wait_settled(mid, 60) == "queued"  # kept in the outbox
            assert client.refusals["full"] >= 1 and m1.mailbox_server.refusals["full"] >= 1
            assert a.messenger.mailboxes_holding(mid) == []
            async with Node(m2_conf) as m2:
                assert m2.mailbox_server is not None
                await eventually(lambda: a.messenger.outbox.get(mid).state == IN_MAILBOX, 30,
                                 "A's retry deposited it with the next mailbox")
                assert a.messenger.mailboxes_holding(mid) == [im2.fingerprint]
                assert m2.mailbox_server.deposits == 1
                assert m1.mailbox_server.store.held_bytes() == 0
