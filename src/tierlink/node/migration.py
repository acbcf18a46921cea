"""ICE restarts of open connections: a new path under the same QUIC connection.

When a secure connection's path looks dead (its packets stay unanswered, or its local
address went away: :mod:`tierlink.transport.path_migration`,
:mod:`tierlink.transport.address_watch`), this side gathers a fresh ICE agent (new ufrag,
pwd and candidates) and puts a restart offer under the peer's offers key, sealed under the
session's restart key (docs/PROTOCOL.md §10.1): only the two ends of that dial can make or
open it, it names the session, the pair and the direction, and its number must grow (a
replay is refused). The peer answers the same way from a fresh agent of its own; both run
ICE checks (the dialer controlling, as in the dial), and each side's connection continues
over its new pair as soon as its agent connects (:meth:`Connection.switch_path`). When
both offer at once the dialer's offer wins (:mod:`tierlink.protocol.path_restart`). If no
restart succeeds before the liveness watchdog fires, the connection closes as it would
without migration.

A peer that restarted (a new process, same identity) cannot answer: while an offer waits,
the peer's signed record is looked up (:mod:`tierlink.node.restart_polls`), and a newer one
plus an answer that does not come (:class:`~tierlink.protocol.path_restart.PeerRestartCheck`)
close the connection with a ``peer restarted`` reason at once, so its user dials the new
process.

Restart values arrive on the offers listen the node already holds (no listen per
connection, so an idle connection costs nothing here); the Answerer hands them to
:meth:`PathRestarts.receive`, which opens each with the key of every connection it may
belong to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

from tierlink.dht import DhtClient
from tierlink.dht.record_book import PeerLookup
from tierlink.errors import RecordError, TierlinkError
from tierlink.node.restart_polls import poll_answer, route_ready, watch_peer
from tierlink.node.tasks import Supervisor
from tierlink.protocol.path_restart import PeerRestartCheck, Verdict
from tierlink.transport.address_watch import address_watch
from tierlink.transport.aioice_adapter import IceConnection
from tierlink.transport.connection import Connection
from tierlink.transport.ice import PathListener, run_checks, set_remote
from tierlink.wire.dhtkeys import offers_key
from tierlink.wire.records import now_ms
from tierlink.wire.signaling import (
    MAX_RESTART_SIZE,
    RESTART_ANSWER,
    RESTART_OFFER,
    TO_CALLEE,
    TO_DIALER,
    OfferSecret,
    Restart,
    SessionDescription,
    decode_restart,
    encode_restart,
)

log = logging.getLogger(__name__)

#: Makes a fresh ICE agent (controlling or not) and describes it for the peer.
NewAgent = Callable[[bool], IceConnection]
Describe = Callable[[IceConnection], SessionDescription]


class _Session:
    """The restarts of one secure connection."""

    def __init__(
        self, owner: PathRestarts, conn: Connection, secret: OfferSecret, dht: DhtClient,
        tasks: Supervisor,
    ) -> None:
        self.owner, self.conn, self.secret, self.dht, self.tasks = owner, conn, secret, dht, tasks
        self.negotiation = conn.migration.negotiation
        self.inbound = TO_DIALER if conn.initiator else TO_CALLEE
        self.outbound = TO_CALLEE if conn.initiator else TO_DIALER
        self.attempt: asyncio.Task[None] | None = None
        self.answer: asyncio.Future[SessionDescription] | None = None
        self.suspected_at: float | None = None
        self.check = PeerRestartCheck(*owner.known_record(conn.remote_fingerprint), now_ms())
        conn.migration.on_suspect = self.suspect
        conn.migration.listeners.append(owner.emit)
        self.address_id = address_watch().watch(
            lambda: conn.path_local_address, lambda: conn.migration.suspect("address")
        )

    def close(self) -> None:
        address_watch().unwatch(self.address_id)
        self.conn.migration.on_suspect = None
        if self.attempt is not None:
            self.attempt.cancel()

    # -- starting ---------------------------------------------------------------------------
    def suspect(self, reason: str) -> None:
        """The path looks dead: offer a restart unless one runs."""
        seq = self.negotiation.start()
        if seq is None or self.conn.closed:
            return
        self.suspected_at = time.time()
        self._run(self._offer(seq, reason), "path-restart")

    def _run(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        if self.attempt is not None:
            self.attempt.cancel()
        try:
            self.attempt = self.tasks.spawn(coro, name)
        except TierlinkError:  # the node is closing
            self.attempt = None

    def handle(self, restart: Restart) -> None:
        """An authenticated restart message of this session. A fresh one (an offer numbered
        above every earlier one, the answer to our offer in progress; not a replay) proves
        the peer still holds the session."""
        if restart.kind == RESTART_OFFER:
            fresh = restart.seq > self.negotiation.peer_seq
            verdict = self.negotiation.on_offer(restart.seq)
            if fresh:
                self.check.alive()
            if verdict is Verdict.REFUSE:
                return
            if self.suspected_at is None:
                self.suspected_at = time.time()
            self._run(self._answer(restart), "path-restart-answer")
        elif self.negotiation.on_answer(restart.seq):
            self.check.alive()
            if self.answer is not None and not self.answer.done():
                log.info("path restart %d: answered", restart.seq)
                self.answer.set_result(restart.params)

    # -- the two sides ----------------------------------------------------------------------
    async def _offer(self, seq: int, reason: str) -> None:
        log.info("path restart %d to %s… (%s)", seq, self.conn.remote_fingerprint[:16], reason)
        loop = asyncio.get_running_loop()
        ice = self.owner.new_agent(self.conn.initiator)
        switched = False
        gone: str | None = None
        try:
            await route_ready(self.dht.base_url)
            started = loop.time()
            await ice.gather_candidates()
            answer = self.answer = loop.create_future()
            await self._put(Restart(RESTART_OFFER, seq, self.owner.describe(ice)))
            offered_at = loop.time()
            async with asyncio.timeout(self.owner.answer_timeout):
                poll = asyncio.ensure_future(self._poll_answer(seq))
                watch = asyncio.ensure_future(self._watch_peer(offered_at, offered_at - started))
                try:
                    await asyncio.wait((answer, watch), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    poll.cancel()
                    watch.cancel()
            if answer.done():
                switched = await self._connect(ice, answer.result(), seq=seq,
                                               initiated="local", reason=reason)
            else:
                gone = watch.result()
        except (TimeoutError, TierlinkError, OSError) as exc:
            log.info("path restart %d to %s… failed: %r", seq,
                     self.conn.remote_fingerprint[:16], exc)
        finally:
            self.answer = None
            if not switched:
                await ice.close()
            self._finish(True, seq, switched)
        if gone is not None:
            self.owner.peer_restarted(self, gone)

    async def _answer(self, offer: Restart) -> None:
        log.info("answering path restart %d of %s…", offer.seq, self.conn.remote_fingerprint[:16])
        ice = self.owner.new_agent(self.conn.initiator)
        switched = False
        try:
            await route_ready(self.dht.base_url)
            await ice.gather_candidates()
            # As for an offer: checks to addresses the peer names stay within a budget (of
            # the largest restart value: the real one is small, its candidates are not few).
            ice.limit_unvalidated_checks(int(self.owner.check_amplification * MAX_RESTART_SIZE))
            await self._put(Restart(RESTART_ANSWER, offer.seq, self.owner.describe(ice)))
            switched = await self._connect(ice, offer.params, seq=offer.seq, initiated="peer",
                                           reason="peer")
        except (TimeoutError, TierlinkError, OSError) as exc:
            log.info("answering path restart %d of %s… failed: %r", offer.seq,
                     self.conn.remote_fingerprint[:16], exc)
        finally:
            if not switched:
                await ice.close()
            self._finish(False, offer.seq, switched)

    async def _poll_answer(self, seq: int) -> None:
        """Beside the offers listen, ask the DHT for the answer to our offer ``seq``."""
        restart = await poll_answer(self.dht, offers_key(self.owner.fingerprint), self.secret,
                                    self.inbound, seq)
        self.owner.answers_polled += 1
        self.handle(restart)

    async def _watch_peer(self, offered_at: float, signaling_s: float) -> str:
        """While our offer waits: the reason once the peer looks restarted."""
        return await watch_peer(self.owner.lookup, self.check, self.conn, offered_at,
                                signaling_s, self.owner.count_newer_record)

    async def _put(self, restart: Restart) -> None:
        value = encode_restart(self.secret, self.outbound, restart)
        await self.dht.put(offers_key(self.conn.remote_fingerprint), value)

    async def _connect(
        self, ice: IceConnection, peer: SessionDescription, **facts: Any
    ) -> bool:
        started = asyncio.get_running_loop().time()
        await set_remote(ice, peer.ufrag, peer.pwd, peer.candidates)
        await run_checks(ice, self.owner.ice_timeout, started)
        if self.conn.closed:
            return False
        now = time.time()
        suspected = self.suspected_at if self.suspected_at is not None else now
        await self.conn.switch_path(
            ice, suspected_at_ms=int(suspected * 1000), switched_at_ms=int(now * 1000),
            restart_ms=round((now - suspected) * 1000, 1), **facts,
        )
        return True

    def _finish(self, ours: bool, seq: int, switched: bool) -> None:
        if self.negotiation.current(ours, seq):
            self.suspected_at = None
        self.negotiation.finish(ours, seq, switched)


class PathRestarts:
    """The node's restart signaling: one session per open secure connection."""

    def __init__(
        self, new_agent: NewAgent, describe: Describe, *, ice_timeout: float,
        answer_timeout: float, check_amplification: float, fingerprint: str,
    ) -> None:
        self.new_agent = new_agent
        self.fingerprint = fingerprint
        """This node's fingerprint: restart answers to it arrive under its offers key."""
        self.answers_polled = 0
        """Restart answers found by asking the DHT (the offers listen had not brought them)."""
        self.check_amplification = check_amplification
        self.describe = describe
        self.ice_timeout = ice_timeout
        self.answer_timeout = answer_timeout
        self.lookup: PeerLookup | None = None
        """The node's record lookup (set once it runs): tells a restarted peer from a slow one."""
        self.peers_restarted = 0  # connections closed because the peer restarted
        self.newer_records = 0  # connections whose restart found a newer record of the peer
        self._sessions: dict[Connection, _Session] = {}
        self._ended: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        """Restart values no session accepted, by reason (``decrypt``: none of our
        sessions' keys opens it; ``oversize``, ``malformed``, ...), plus each session's
        refusals (``replay``, ``conflict``, ``unexpected``)."""
        self.listeners: list[PathListener] = []
        self.tier_changes: Counter[str] = Counter()
        """Path changes by the tiers they went from and to (``relay_to_direct``, ...)."""

    @property
    def sessions(self) -> int:
        """Open connections whose restart key :meth:`receive` tries on each value."""
        return len(self._sessions)

    def known_record(self, fingerprint: str) -> tuple[int | None, int | None]:
        """The sequence and issued time of the newest record of ``fingerprint`` accepted so
        far (None: none known): a connection opening now began with it."""
        entry = None if self.lookup is None else self.lookup.book.latest.get(fingerprint)
        return (None, None) if entry is None else (entry[0].seq, entry[0].issued_at_ms)

    def count_newer_record(self) -> None:
        """A restart found a newer record of its peer."""
        self.newer_records += 1

    def peer_restarted(self, session: _Session, reason: str) -> None:
        """``session``'s peer restarted: close its connection with ``reason`` (the close
        runs on the node's tasks; closing detaches the session)."""
        conn = session.conn
        if conn.closed:
            return
        self.peers_restarted += 1
        conn.migration.peer_restarted = True
        log.info("closing the connection to %s…: %s", conn.remote_fingerprint[:16], reason)
        with contextlib.suppress(TierlinkError):  # the node is closing: it closes conn itself
            session.tasks.spawn(conn.close(reason), "peer-restarted")

    def attach(
        self, conn: Connection, secret: OfferSecret, dht: DhtClient, tasks: Supervisor
    ) -> None:
        """Restart ``conn``'s path when it dies (secure connections only)."""
        if conn.secure and not conn.closed:
            self._sessions[conn] = _Session(self, conn, secret, dht, tasks)

    def detach(self, conn: Connection) -> None:
        """``conn`` closed: stop its restarts, keep its counters."""
        session = self._sessions.pop(conn, None)
        if session is not None:
            session.close()
            stats = conn.migration.stats()
            self._ended["path_changes"] += stats["path_changes"]
            self._ended.update({f"restarts_{k}": v for k, v in stats["restarts"].items()})
            self.refused.update(stats["restarts_refused"])

    def emit(self, event: dict[str, Any]) -> None:
        """Count one path change by tiers and hand it to every listener."""
        self.tier_changes[f"{event['old_tier']}_to_{event['tier']}"] += 1
        for listener in list(self.listeners):
            listener(event)

    def receive(self, value: bytes) -> None:
        """A restart value from our offers listen: hand it to the session whose key opens
        it; refusals are counted in :attr:`refused`."""
        if len(value) > MAX_RESTART_SIZE:
            self.refused["oversize"] += 1
            return
        for session in list(self._sessions.values()):
            try:
                restart = decode_restart(value, session.secret, session.inbound)
            except RecordError as exc:
                if exc.reason == "decrypt":
                    continue  # another session's, or nobody's
                self.refused[exc.reason] += 1
                return
            session.handle(restart)
            return
        self.refused["decrypt"] += 1
        log.info("ignoring a restart value that opens for none of our connections")

    def stats(self) -> dict[str, Any]:
        """Counters of every connection, open and closed, JSON-ready."""
        total = Counter(self._ended)
        refused = Counter(self.refused)
        for conn in self._sessions:
            stats = conn.migration.stats()
            total["path_changes"] += stats["path_changes"]
            total.update({f"restarts_{k}": v for k, v in stats["restarts"].items()})
            refused.update(stats["restarts_refused"])
        names = ("path_changes", "restarts_started", "restarts_answered",
                 "restarts_succeeded", "restarts_failed", "restarts_yielded")
        return {**{name: total[name] for name in names}, "restarts_refused": dict(refused),
                "answers_polled": self.answers_polled, "newer_records": self.newer_records,
                "peers_restarted": self.peers_restarted,
                "tier_changes": dict(self.tier_changes)}
