"""One node holding 100 concurrent connections from several dialers: traffic on all of them
at once never mixes, and closing them all gives every fd and task back.

The callee raises its answering sessions in flight (``AdmissionLimits.max_sessions``) for
the dials it expects; the limits themselves (and their refusals) are covered by
tests/test_offer_admission.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter

import pytest

from tests.nodes import config_for, released, resources
from tierlink.errors import ConnectionClosed, RecordError
from tierlink.node import Node, NodeConfig
from tierlink.node.admission import RESERVED, Admission, AdmissionLimits
from tierlink.transport.connection import Connection

DIALERS = 4
PER_DIALER = 25
IN_FLIGHT = 4  # per dialer: half the callee's per-dialer burst (AdmissionLimits.dialer_burst)
MESSAGES = 5
BOUND_S = 240.0


async def echo(conn: Connection, mismatched: Counter[str]) -> None:
    """Send every message back; count one whose tag names another dialer."""
    with contextlib.suppress(ConnectionClosed):
        while True:
            data = await conn.recv()
            assert data is not None
            if not conn.remote_fingerprint.startswith(data.split(b"/")[0].decode()):
                mismatched["foreign"] += 1
            await conn.send(data)


async def dial_share(dialer: Node, callee: str) -> list[Connection]:
    sem = asyncio.Semaphore(IN_FLIGHT)

    async def one() -> Connection:
        async with sem:
            return await dialer.connect(callee, timeout=30.0)

    return list(await asyncio.gather(*(one() for _ in range(PER_DIALER))))


async def exchange(conn: Connection, tag: str) -> list[bytes]:
    """MESSAGES tagged messages out, their echoes back, in order."""
    sent = [f"{tag}/{j}".encode() for j in range(MESSAGES)]
    for msg in sent:
        await conn.send(msg)
    return [got for _ in sent if (got := await conn.recv(30.0)) is not None]


async def test_hundred_concurrent_connections_carry_traffic_and_release(dht_cluster) -> None:
    limits = AdmissionLimits(max_sessions=4 * DIALERS * IN_FLIGHT)
    callee = Node(config_for(dht_cluster[0], admission=limits))
    dialers = [Node(config_for(dht_cluster[1 + i % 2])) for i in range(DIALERS)]
    mismatched: Counter[str] = Counter()
    accepted: list[Connection] = []
    echoers: list[asyncio.Task[None]] = []
    async with asyncio.timeout(BOUND_S):
        await callee.start()
        for d in dialers:
            await d.start()
        try:
            await callee.lookup(callee.fingerprint)  # the HTTP keep-alive pools are warm
            base = resources()

            async def accept_all() -> None:
                async for conn in callee.incoming():
                    accepted.append(conn)
                    echoers.append(asyncio.create_task(echo(conn, mismatched)))
                    if len(accepted) == DIALERS * PER_DIALER:
                        return

            acceptor = asyncio.create_task(accept_all())
            shares = await asyncio.gather(*(dial_share(d, callee.fingerprint) for d in dialers))
            await acceptor
            assert len({id(c) for c in accepted}) == DIALERS * PER_DIALER
            assert Counter(c.remote_fingerprint for c in accepted) == {
                d.fingerprint: PER_DIALER for d in dialers
            }

            tags = [(f"{d.fingerprint[:16]}/{i}", conn)
                    for d, conns in zip(dialers, shares, strict=True)
                    for i, conn in enumerate(conns)]
            got = await asyncio.gather(*(exchange(conn, tag) for tag, conn in tags))
            for (tag, _), echoes in zip(tags, got, strict=True):
                assert echoes == [f"{tag}/{j}".encode() for j in range(MESSAGES)]
            assert not mismatched

            for conns in shares:
                await asyncio.gather(*(c.close() for c in conns))
            await asyncio.gather(*echoers)  # each ends when its peer's close arrives
            await asyncio.gather(*(c.close() for c in accepted))
            await released(base, "fds", "tasks", timeout=60.0)
        finally:
            for d in dialers:
                await d.close()
            await callee.close()


@pytest.mark.parametrize("field", ["incoming_backlog", "dht_connections"])
def test_limits_below_one_are_refused_with_the_field_named(field: str) -> None:
    from tierlink.identity import Identity

    config = NodeConfig(identity=Identity.generate(), **{field: 0})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=field):
        Node(config)


def test_raised_session_limit_still_bounds_a_flood_of_fresh_identities() -> None:
    """The attacker's offers from fresh identities beside a friend's: raising max_sessions
    for many legitimate dials (whose completed sessions refund their tokens) leaves a flood
    bounded by the answer burst in the general pool; the friend's lane stays, and one
    identity still gets no more than its burst of sessions that lead nowhere."""
    limits = AdmissionLimits(max_sessions=64)
    admission = Admission(limits, now=0.0)
    tickets = []
    with pytest.raises(RecordError) as refused:
        for i in range(limits.max_sessions + 1):
            tickets.append(admission.admit(f"fresh-{i}", 0.0))
    assert refused.value.reason == "busy" and admission.refused["busy"] == 1
    assert len(tickets) == min(limits.max_sessions, limits.answer_burst)
    assert admission.admit("friend", 0.0, allow_listed=True).lane == RESERVED
    for t in tickets:
        admission.finish(t, 0.0, connected=False)  # the flood's sessions lead nowhere
    later = 10.0  # the answer bucket has refilled
    one = [admission.admit("attacker", later) for _ in range(limits.dialer_burst)]
    with pytest.raises(RecordError) as limited:
        admission.admit("attacker", later)
    assert limited.value.reason == "rate-limited" and len(one) == limits.dialer_burst
