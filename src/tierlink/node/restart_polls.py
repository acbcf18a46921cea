"""The polling loops of a path restart (:mod:`tierlink.node.migration`).

Before gathering, a restart waits for a route to the DHT proxy (:func:`route_ready`). While
its offer waits, it asks the DHT for the answer directly (:func:`poll_answer`), beside the
offers listen, and reads the peer's signed record (:func:`watch_peer`) to tell a peer that
restarted from a slow one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from tierlink.dht import DhtClient
from tierlink.dht.record_book import PeerLookup
from tierlink.dht.route import source_address
from tierlink.errors import RecordError, TierlinkError
from tierlink.protocol.path_restart import PeerRestartCheck
from tierlink.transport.connection import Connection
from tierlink.wire.signaling import (
    MAX_RESTART_SIZE,
    RESTART_ANSWER,
    OfferSecret,
    Restart,
    decode_restart,
    is_restart,
)

log = logging.getLogger(__name__)

#: How often, and how long at most, a restart waits for a route to the DHT proxy before
#: gathering: an address change removes the old address before the new one and its
#: default route exist, and an agent gathered in between has no reflexive or relayed
#: candidate (and its offer cannot be put).
ROUTE_POLL_S = 0.05
ROUTE_WAIT_S = 5.0
#: How often an offer in progress asks the DHT for its answer (see :func:`poll_answer`).
ANSWER_POLL_S = 0.5
#: Longest wait for one of those requests (a connection that died with the path hangs).
ANSWER_GET_S = 2.0
#: How often an offer in progress looks the peer's record up, until one shows that the peer
#: published again (see :func:`watch_peer`), and the longest wait for one lookup
#: (a get completes once the DHT's search does, which can take a second or more).
RECORD_POLL_S = 1.0
RECORD_GET_S = 5.0


async def route_ready(proxy_url: str) -> None:
    """Return once this host has a route to the DHT proxy (at most :data:`ROUTE_WAIT_S`)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ROUTE_WAIT_S
    while source_address(proxy_url) is None and loop.time() < deadline:
        await asyncio.sleep(ROUTE_POLL_S)


async def poll_answer(
    dht: DhtClient, key: str, secret: OfferSecret, inbound: int, seq: int
) -> Restart:
    """Ask the DHT for the answer to our offer ``seq`` under ``key`` every
    :data:`ANSWER_POLL_S` until it is there: what killed the path (NAT mappings lost) can
    leave the offers listen's long-lived connection silently dead, while a fresh request
    gets through."""

    def ours(value: bytes) -> bool:
        return is_restart(value) and len(value) <= MAX_RESTART_SIZE

    while True:
        await asyncio.sleep(ANSWER_POLL_S)
        try:
            async with asyncio.timeout(ANSWER_GET_S):
                values = await dht.get(key, keep=ours)
        except (TierlinkError, TimeoutError, OSError) as exc:
            log.info("path restart %d: asking the DHT for the answer: %r", seq, exc)
            continue
        for value in values:
            if not ours(value):
                continue
            try:
                restart = decode_restart(value, secret, inbound)
            except RecordError:
                continue  # another session's, or an older value
            if restart.kind == RESTART_ANSWER and restart.seq == seq:
                return restart


async def watch_peer(
    lookup: PeerLookup | None, check: PeerRestartCheck, conn: Connection, offered_at: float,
    signaling_s: float, newer_record: Callable[[], None],
) -> str:
    """While our offer to ``conn``'s peer (out since ``offered_at``; its gathering and put
    took ``signaling_s``) waits: read the peer's record until it shows a new publish (then
    call ``newer_record``), and return the reason once ``check`` takes the peer for
    restarted."""
    loop = asyncio.get_running_loop()
    peer = conn.remote_fingerprint
    lookup_s = 0.0
    while True:
        if lookup is not None and check.evidence_seq is None:
            asked = loop.time()
            try:
                async with asyncio.timeout(RECORD_GET_S):
                    record = await lookup.lookup(peer)
            except (TierlinkError, TimeoutError, OSError) as exc:
                log.info("path restart: looking up the record of %s…: %r", peer[:16], exc)
            else:
                lookup_s = loop.time() - asked
                if check.record(record.seq, record.issued_at_ms, loop.time()):
                    newer_record()
        now = loop.time()
        spent = signaling_s + lookup_s
        if check.gone(now, offered_at, spent, conn.migration.last_suspect_at):
            return (f"peer restarted: record {check.evidence_seq} (this connection's: "
                    f"{check.baseline_seq}), the path restart unanswered for "
                    f"{now - offered_at:.1f} s")
        deadline = check.deadline(offered_at, spent)
        wait = RECORD_POLL_S if deadline is None else deadline - now
        await asyncio.sleep(min(max(wait, ROUTE_POLL_S), RECORD_POLL_S))
