"""Presence in the DHT: this node's signed record (published, kept fresh) and peer lookups.

The record carries the node's keys (and, in public mode, its candidates); it is re-published
before it expires and, in public mode, soon after the host addresses change. Lookups go
through the node's one :class:`~tierlink.dht.record_book.PeerLookup`, shared with the offline
tier.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
from pathlib import Path

from tierlink.backoff import Backoff
from tierlink.dht import DhtClient
from tierlink.dht.record_book import PeerLookup
from tierlink.dht.route import source_address
from tierlink.errors import TierlinkError
from tierlink.identity import Identity, is_fingerprint
from tierlink.node.config import NodeConfig
from tierlink.node.endpoint import Endpoint
from tierlink.transport.address_watch import address_usable, address_watch
from tierlink.transport.aioice_gather import machine_addresses
from tierlink.transport.ice import local_infos
from tierlink.wire.dhtkeys import ice_candidates_key
from tierlink.wire.records import (
    CandidateInfo,
    PeerRecord,
    next_seq,
    now_ms,
    record_times,
    republish_period_s,
)

log = logging.getLogger(__name__)

#: A verified peer record is reused for dialing this long (ms) before it is looked up
#: again: its keys do not change while the peer keeps its identity.
RECORD_CACHE_MS = 60_000
#: The first wait before re-publishing again after a failed attempt (seconds, at most).
REPUBLISH_RETRY_S = 5.0
#: The file in the node's state dir holding the last published record sequence number.
SEQ_FILE = "record-seq"
#: How often the republish loop asks the DHT proxy for its node id (seconds): a new id means
#: the DHT node restarted, likely with empty storage, so the record is put again at once.
DHT_CHECK_S = 10.0


class Presence:
    """Publishes this node's record and looks peers up."""

    def __init__(
        self, dht: DhtClient, identity: Identity, config: NodeConfig, endpoint: Endpoint,
        lookup: PeerLookup,
    ) -> None:
        self.dht = dht
        self.identity = identity
        self.config = config
        self.endpoint = endpoint
        self.peers = lookup
        self.record: PeerRecord | None = None
        self._seq = 0
        #: DHT node restarts noticed (each one re-published the record at once).
        self.dht_restarts_seen = 0
        #: Times the address the DHT proxy is reached from went away (connections renewed).
        self.dht_route_changes = 0
        self._dht_source: str | None = None

    async def publish(self) -> PeerRecord:
        """Sign and put a fresh record (times and sequence by :func:`record_times` and
        :func:`next_seq`; the sequence is saved before the put, so it grows across
        restarts)."""
        candidates: tuple[CandidateInfo, ...] = ()
        if self.config.mode == "public":
            probe = self.endpoint.new_ice(controlling=False)
            try:
                await probe.gather_candidates()
                candidates = tuple(c for c in local_infos(probe) if c.type != "relay")
            finally:
                await probe.close()
        now = now_ms()
        issued, _ = record_times(now, self.config.record_lifetime)
        if self._seq == 0:
            self._seq = self.saved_seq()
        self._seq = next_seq(self._seq, issued)
        record = PeerRecord.create(
            self.identity, self._seq, self.config.record_lifetime, candidates,
            self.config.mode, now=now,
        )
        self.save_seq(self._seq)
        await self.dht.put(ice_candidates_key(self.identity.fingerprint),
                           record.encode(self.identity))
        self.record = record
        return record

    @property
    def seq_path(self) -> Path:
        """Where the last published sequence number is kept (the node's state dir)."""
        return self.config.state_dir() / SEQ_FILE

    def saved_seq(self) -> int:
        """The sequence number last published by this identity here (0: none readable)."""
        try:
            return int(self.seq_path.read_text().strip())
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as exc:
            log.warning("cannot read %s (%s): record sequence restarts", self.seq_path, exc)
            return 0

    def save_seq(self, seq: int) -> None:
        """Remember ``seq`` for the next start (atomically; a failure is logged: records
        still order by period, only a second publish within one period may repeat)."""
        path = self.seq_path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(f"{seq}\n")
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("cannot save the record sequence to %s: %s", path, exc)

    async def republish_loop(self) -> None:
        """Re-publish before expiry; in public mode also soon after the addresses change.

        Also at once when the DHT proxy's node id changes (its node restarted and may have
        lost every stored value). A failed attempt is retried with backoff (never later than
        the regular period); the node's supervisor runs this again (with
        :meth:`restart_backoff`) if anything else fails.
        """
        period = republish_period_s(self.config.record_lifetime)
        check = min(period, DHT_CHECK_S)
        if self.config.mode == "public":
            check = min(check, self.config.address_check_interval)
        retry = Backoff(min(period, REPUBLISH_RETRY_S), maximum=period)
        loop = asyncio.get_running_loop()
        due = loop.time() + period
        addresses = self.host_addresses()
        node_id = await self.dht_node_id()
        while True:
            await asyncio.sleep(max(min(check, due - loop.time()), 0.0))
            now_addresses = self.host_addresses()
            if self.config.mode != "public":
                now_addresses = addresses
            now_id = await self.dht_node_id()
            restarted = None not in (node_id, now_id) and now_id != node_id
            node_id = now_id or node_id
            if loop.time() < due and now_addresses == addresses and not restarted:
                continue
            if restarted:
                self.dht_restarts_seen += 1
            try:
                await self.publish()
            except TierlinkError as exc:
                delay = retry.next_delay()
                log.warning("re-publishing the record failed: %s (retrying in %.0f s)",
                            exc, delay)
                due = loop.time() + delay
                continue
            retry.reset()
            addresses, due = now_addresses, loop.time() + period

    def watches_dht_route(self) -> bool:
        """Whether :meth:`dht_route_loop` has anything to watch: a proxy reached from an
        address that can go away (not loopback, and an IP literal)."""
        self._dht_source = source = source_address(self.dht.base_url)
        return source is not None and not ipaddress.ip_address(source).is_loopback

    async def dht_route_loop(self) -> None:
        """Renew the DHT client's connections as soon as the local address they were made
        from goes away (rtnetlink, no polling): its pooled and listening connections would
        otherwise hang silently, and with them the signaling a path restart needs."""
        watch = address_watch()
        gone = asyncio.Event()
        # The address the first connections were made from, so a change before this loop
        # first ran is caught too.
        source = [self._dht_source or source_address(self.dht.base_url)]

        def current() -> str | None:
            if source[0] is None:
                source[0] = source_address(self.dht.base_url)
            return source[0]

        path_id = watch.watch(current, gone.set)
        if source[0] is not None and not address_usable(source[0]):
            gone.set()
        try:
            while True:
                await gone.wait()
                gone.clear()
                self.dht_route_changes += 1
                log.info("the address %s that reaches the DHT proxy is gone; reconnecting",
                         source[0])
                await self.dht.renew_connections()
                source[0] = source_address(self.dht.base_url)
        finally:
            watch.unwatch(path_id)

    async def dht_node_id(self) -> str | None:
        """The DHT proxy's node id (None when it cannot be asked right now)."""
        try:
            node_id = (await self.dht.info()).get("node_id")
        except TierlinkError:
            return None
        return node_id if isinstance(node_id, str) else None

    def restart_backoff(self) -> Backoff:
        """The waits before running :meth:`republish_loop` again after it failed."""
        period = republish_period_s(self.config.record_lifetime)
        return Backoff(min(period, REPUBLISH_RETRY_S), maximum=period)

    def host_addresses(self) -> frozenset[str]:
        """The addresses host candidates would be gathered on right now."""
        if self.config.host_addresses is not None:
            return frozenset(self.config.host_addresses)
        return frozenset(machine_addresses(self.config.use_ipv6))

    async def lookup(self, fingerprint: str, patience: float = 2.0) -> PeerRecord:
        """The newest valid record of ``fingerprint``, verified; PeerNotFound otherwise.

        A node that has just joined the DHT may not find values yet: an empty answer is
        asked again with backoff for up to ``patience`` seconds.
        """
        if not is_fingerprint(fingerprint):
            raise ValueError("a fingerprint is 128 lowercase hex characters")
        return await self.peers.lookup(fingerprint, patience)

    async def record_for(self, fingerprint: str) -> PeerRecord:
        """A verified record of ``fingerprint`` for dialing: a fresh cached one, else a
        lookup."""
        return await self.peers.record_for(fingerprint, RECORD_CACHE_MS, patience=2.0)
