"""The node: an identity, a DHT, ICE settings, and the tiers put together.

A node publishes its signed peer record, re-publishes it before it expires, listens for
encrypted offers under its offers key, answers the dialers it chooses to, and dials others
by fingerprint (see :mod:`tierlink.wire.signaling` for the offer/answer exchange). Only the offer
is signed: the answer is sealed with a key derived from the offer's KEM secret, which only
the callee's KEM private key recovers, so it needs no signature of its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Coroutine, Iterable
from types import TracebackType
from typing import Any

from tierlink.dht import DhtClient, DhtListener, DhtNodeProcess
from tierlink.dht.record_book import RecordBook
from tierlink.errors import (
    DialTimeout,
    HandshakeFailed,
    PeerNotFound,
    RecordError,
    TierlinkError,
)
from tierlink.identity import is_fingerprint
from tierlink.node.concurrency import io_turns, retrieve, settle, while_putting
from tierlink.node.config import NodeConfig
from tierlink.node.delivery import DEFAULT_TTL_S, Delivery, Message, Messenger
from tierlink.transport.aioice_adapter import IceConnection, get_host_addresses
from tierlink.transport.certs import LocalCertificate
from tierlink.transport.channel import DEFAULT_WINDOW, PreparedChannel, SecureChannel, open_channel
from tierlink.transport.connection import Connection
from tierlink.transport.ice import TurnServer, local_infos, run_checks, set_remote
from tierlink.wire.dhtkeys import answer_key, ice_candidates_key, offers_key
from tierlink.wire.records import CandidateInfo, PeerRecord, now_ms
from tierlink.wire.signaling import (
    Offer,
    OfferSecret,
    SessionDescription,
    decode_answer,
    decode_offer,
    encode_answer,
    encode_offer,
    new_session_id,
)

log = logging.getLogger(__name__)

__all__ = ["Delivery", "Message", "Node", "NodeConfig", "TurnServer"]


#: How often a public node checks whether its addresses changed (seconds).
ADDRESS_CHECK_S = 30.0
#: A verified peer record is reused for dialing this long (ms) before it is looked up
#: again: its keys do not change while the peer keeps its identity.
RECORD_CACHE_MS = 60_000

class Node:
    """A tierlink peer. Use as ``async with Node(config) as node: ...``."""

    MAX_PENDING_INCOMING = 64
    MAX_CONCURRENT_OFFERS = 16

    def __init__(self, config: NodeConfig) -> None:
        if config.mode not in ("private", "public"):
            raise ValueError(f"mode must be 'private' or 'public', not {config.mode!r}")
        self.config = config
        self.identity = config.identity
        self.certificate = LocalCertificate.generate()
        self.ice_settings = config.ice_settings()
        self.dht: DhtClient | None = None
        self.dht_process: DhtNodeProcess | None = None
        self.messenger: Messenger | None = None
        self.records = RecordBook()
        self.offer_rejections: Counter[str] = Counter()
        self.offers_answered = 0
        self._seq = 0
        self._record: PeerRecord | None = None
        self._incoming: asyncio.Queue[Connection] = asyncio.Queue(self.MAX_PENDING_INCOMING)
        self._connections: set[Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._offer_slots = asyncio.Semaphore(self.MAX_CONCURRENT_OFFERS)
        self._seen_sessions: dict[bytes, int] = {}
        # The next dial's QUIC client, built while an earlier dial waited (PreparedChannel).
        self._spare_draft: PreparedChannel | None = None
        self._started = False
        self._closed = False

    # -- life ----------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        """This node's fingerprint (128 hex)."""
        return self.identity.fingerprint

    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Join the DHT, publish the signed record, start answering offers."""
        if self._started:
            return
        self._started = True
        try:
            url = self.config.dht_proxy
            if url is None:
                self.dht_process = DhtNodeProcess(
                    port=self.config.dht_port,
                    bootstrap=self.config.bootstrap,
                    no_rate_limit=self.config.dht_no_rate_limit,
                )
                await self.dht_process.start()
                url = self.dht_process.proxy_url
            self.dht = DhtClient(url, timeout=self.config.dht_timeout)
            await self.publish()
            self.messenger = Messenger(
                self, self.config.state_dir(), send_budget=self.config.send_budget,
                ack_timeout=self.config.ack_timeout,
                reput_interval_s=self.config.offline_reput_interval,
            )
            self.messenger.start()
            self._spawn(self._republish_loop(), "republish")
            self._spawn(self._offer_loop(), "offers")
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close every connection, stop every task and listener, stop the embedded DHT."""
        if self._closed:
            return
        self._closed = True
        if self.messenger is not None:
            await self.messenger.stop()
        for conn in list(self._connections):
            await conn.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        while not self._incoming.empty():
            await self._incoming.get_nowait().close()
        if self.dht is not None:
            await self.dht.close()
        if self.dht_process is not None:
            await self.dht_process.stop()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=f"tierlink-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed: %r", task.get_name(), task.exception())

    def _require_dht(self) -> DhtClient:
        if self.dht is None or self._closed:
            raise TierlinkError("node is not running (use 'async with Node(config)')")
        return self.dht

    # -- the record ----------------------------------------------------------------------
    async def publish(self) -> PeerRecord:
        """Sign and put a fresh record (sequence = Unix ms, so it grows across restarts)."""
        dht = self._require_dht()
        candidates: tuple[CandidateInfo, ...] = ()
        if self.config.mode == "public":
            probe = self.ice_settings.new_connection(controlling=False)
            try:
                await probe.gather_candidates()
                candidates = tuple(c for c in local_infos(probe) if c.type != "relay")
            finally:
                await probe.close()
        self._seq = max(self._seq + 1, now_ms())
        record = PeerRecord.create(
            self.identity, self._seq, self.config.record_lifetime, candidates, self.config.mode
        )
        await dht.put(ice_candidates_key(self.fingerprint), record.encode(self.identity))
        self._record = record
        return record

    async def _republish_loop(self) -> None:
        """Re-publish before expiry; in public mode also soon after the addresses change."""
        period = max(self.config.record_lifetime / 3, 1.0)
        check = min(period, ADDRESS_CHECK_S) if self.config.mode == "public" else period
        loop = asyncio.get_running_loop()
        due = loop.time() + period
        addresses = self._host_addresses()
        while True:
            await asyncio.sleep(max(min(check, due - loop.time()), 0.0))
            now_addresses = self._host_addresses()
            if loop.time() < due and now_addresses == addresses:
                continue
            try:
                await self.publish()
                addresses, due = now_addresses, loop.time() + period
            except TierlinkError as exc:
                log.warning("re-publishing the record failed: %s (retrying)", exc)
                due = loop.time() + min(period, 5.0)

    def _host_addresses(self) -> frozenset[str]:
        """The addresses host candidates would be gathered on right now."""
        if self.config.host_addresses is not None:
            return frozenset(self.config.host_addresses)
        return frozenset(get_host_addresses(use_ipv4=True, use_ipv6=False))

    async def lookup(self, fingerprint: str, patience: float = 2.0) -> PeerRecord:
        """The newest valid record of ``fingerprint``, verified; PeerNotFound otherwise.

        A node that has just joined the DHT may not find values yet: an empty answer is
        asked again with backoff for up to ``patience`` seconds.
        """
        if not is_fingerprint(fingerprint):
            raise ValueError("a fingerprint is 128 lowercase hex characters")
        loop = asyncio.get_running_loop()
        deadline, delay = loop.time() + patience, 0.1
        while True:
            values = await self._require_dht().get(ice_candidates_key(fingerprint))
            if values or loop.time() + delay > deadline:
                break
            await asyncio.sleep(delay)
            delay *= 2
        record = self.records.newest(values, fingerprint)
        if record is None:
            raise PeerNotFound(
                f"no valid record for {fingerprint[:16]}… in the DHT "
                f"({len(values)} value(s) found)"
            )
        return record

    # -- dialing -------------------------------------------------------------------------
    def _params(
        self, ice: IceConnection, purpose: str = "app", quic_flight: tuple[bytes, ...] = ()
    ) -> SessionDescription:
        secure = self.config.secure
        return SessionDescription(
            ice.local_username, ice.local_password, local_infos(ice),
            self.certificate.sha256 if secure else None, purpose,
            (self.config.max_message_size, DEFAULT_WINDOW) if secure else None,
            quic_flight,
        )

    async def connect(
        self, fingerprint: str, timeout: float | None = None, *, purpose: str = "app"
    ) -> Connection:
        """Dial a peer by fingerprint alone.

        Raises PeerNotFound (no valid record), DialTimeout (no answer within ``timeout``,
        default ``dial_timeout``) or IceFailed (no candidate pair worked), each with the
        time spent. The answer counts only if it decrypts under the secret this dial's offer
        established with the callee's KEM key (see :mod:`tierlink.wire.signaling`).

        The steps overlap where they can: the record lookup runs while ICE gathers, the
        dialer waits for the answer while its offer is still being put (a failed put
        fails the dial), and the QUIC client's first flight travels inside the offer (the
        callee processes it while ICE runs); the next dial's QUIC client is built while
        this one waits for the answer.
        """
        self._require_dht()
        loop = asyncio.get_running_loop()
        started = loop.time()
        timeout = self.config.dial_timeout if timeout is None else timeout
        if not is_fingerprint(fingerprint):
            raise ValueError("a fingerprint is 128 lowercase hex characters")
        ice = self.ice_settings.new_connection(controlling=True)
        session = new_session_id()
        try:
            answer, draft = await self._exchange(ice, fingerprint, session, purpose, timeout)
            await set_remote(ice, answer.ufrag, answer.pwd, answer.candidates)
            checks = asyncio.ensure_future(run_checks(ice, self.config.ice_timeout, started))
            try:
                if draft is not None and answer.quic_flight and answer.cert_sha256:
                    # The callee's QUIC reply is processed while the checks run.
                    await io_turns()
                    draft.receive_reply(answer.quic_flight, answer.cert_sha256)
                await checks
            finally:
                if not checks.done():
                    checks.cancel()
                checks.add_done_callback(retrieve)
            channel = await self._open_channel(
                ice, True, answer.cert_sha256, answer.channel_limits, draft
            )
        except BaseException:
            await ice.close()
            raise
        return self._adopt(ice, fingerprint, True, session, (loop.time() - started) * 1000,
                           channel)

    async def _exchange(
        self, ice: IceConnection, fingerprint: str, session: bytes, purpose: str, timeout: float
    ) -> tuple[SessionDescription, PreparedChannel | None]:
        """The dialer's signaling: gather, put the offer, wait for the sealed answer.

        The offer carries the QUIC client's first flight; the answer listen starts once
        the offer's request is written (a listen hands over values already stored, so an
        early answer is not missed); the answer is awaited while the put still runs; the
        next dial's QUIC client is built while the callee works.
        """
        dht = self._require_dht()
        loop = asyncio.get_running_loop()
        started = loop.time()
        listener: DhtListener | None = None
        waiter: asyncio.Future[SessionDescription] | None = None
        put: asyncio.Future[None] | None = None
        answered = False
        try:
            found = asyncio.ensure_future(self._record_for(fingerprint))
            try:
                await ice.gather_candidates()
            finally:
                if not found.done():
                    await asyncio.wait([found])
            record = found.result()
            if not record.kem_public_key:
                raise PeerNotFound(f"record of {fingerprint[:16]}… carries no KEM key")
            draft = self._take_draft() if self.config.secure else None
            offer, secret = encode_offer(
                self.identity, fingerprint, record.kem_public_key, session,
                self._params(ice, purpose, draft.first_flight() if draft else ()),
                lifetime_s=max(timeout, 5.0) + 30.0,
            )
            sent: asyncio.Future[None] = loop.create_future()
            put = asyncio.ensure_future(dht.put(offers_key(fingerprint), offer, sent=sent))
            await asyncio.wait([sent, put], return_when=asyncio.FIRST_COMPLETED)
            listener = dht.listen(answer_key(self.fingerprint, session))
            waiter = asyncio.ensure_future(self._await_answer(listener, secret))
            spare = self._spare_draft
            if self.config.secure and (spare is None or not spare.fresh):
                self._spare_draft = self._channel_draft()
            remaining = timeout - (loop.time() - started)
            try:
                answer = await asyncio.wait_for(
                    while_putting(put, waiter), max(remaining, 0.01)
                )
            except TimeoutError:
                raise DialTimeout(
                    f"{fingerprint[:16]}… did not answer within {timeout:.1f} s"
                ) from None
            answered = True
            return answer, draft
        finally:
            if waiter is not None:
                waiter.cancel()  # no-op once done; its outcome is retrieved below
                waiter.add_done_callback(retrieve)
            if answered and put is not None:  # the answer proves the offer arrived
                self._spawn(settle(put, listener), "offer-put")
            else:
                if put is not None:
                    put.cancel()
                    put.add_done_callback(retrieve)
                if listener is not None:
                    await listener.aclose()

    async def _record_for(self, fingerprint: str) -> PeerRecord:
        """A verified record of ``fingerprint``: a fresh cached one, else a DHT lookup."""
        cached = self.records.cached(fingerprint, now_ms(), RECORD_CACHE_MS)
        return cached if cached is not None else await self.lookup(fingerprint)

    def _take_draft(self) -> PreparedChannel:
        """The spare dialer draft if still fresh, else a new one."""
        draft, self._spare_draft = self._spare_draft, None
        return draft if draft is not None and draft.fresh else self._channel_draft()

    def _reply_draft(self, params: SessionDescription) -> PreparedChannel | None:
        """The callee's side of a channel whose handshake began in the offer, if it did."""
        if not (self.config.secure and params.quic_flight and params.cert_sha256):
            return None
        draft = self._channel_draft(is_client=False)
        return draft if draft.receive_first_flight(params.quic_flight, params.cert_sha256) else None

    def _channel_draft(self, is_client: bool = True) -> PreparedChannel:
        return PreparedChannel(
            is_client=is_client,
            certificate=self.certificate,
            queue_capacity=self.config.queue_capacity,
            liveness_timeout=self.config.liveness_timeout,
            handshake_timeout=self.config.handshake_timeout,
            max_message_size=self.config.max_message_size,
            probe_path_mtu=self.config.path_mtu_probing,
        )

    async def _open_channel(
        self, ice: IceConnection, is_client: bool, peer_cert: bytes | None,
        peer_limits: tuple[int, int] | None, draft: PreparedChannel | None = None,
    ) -> SecureChannel | None:
        """The pinned QUIC channel over the ICE path (None in raw mode)."""
        if not self.config.secure:
            return None
        if peer_cert is None:
            raise HandshakeFailed("the peer offered no certificate: it runs without a secure "
                                  "channel (secure=False); both sides must agree")
        if draft is not None:
            return await draft.open(ice, peer_cert, peer_limits)
        return await open_channel(
            ice, is_client=is_client, certificate=self.certificate, peer_cert_sha256=peer_cert,
            queue_capacity=self.config.queue_capacity,
            liveness_timeout=self.config.liveness_timeout,
            handshake_timeout=self.config.handshake_timeout,
            max_message_size=self.config.max_message_size,
            probe_path_mtu=self.config.path_mtu_probing, peer_limits=peer_limits,
        )

    async def _await_answer(
        self, listener: AsyncIterator[bytes], secret: OfferSecret
    ) -> SessionDescription:
        """The first value that decrypts under ``secret``: only the callee can seal one."""
        async for value in listener:
            try:
                return decode_answer(value, secret)
            except RecordError as exc:
                log.info("ignoring an answer: %s", exc)
        raise DialTimeout("the answer listen ended before an answer arrived")

    def _adopt(
        self, ice: IceConnection, peer: str, initiator: bool, session: bytes, ms: float,
        channel: SecureChannel | None,
    ) -> Connection:
        conn = Connection(
            ice, peer, initiator=initiator, session_id=session, connect_ms=ms,
            channel=channel, queue_capacity=self.config.queue_capacity,
            on_close=self._connections.discard,
        )
        self._connections.add(conn)
        return conn

    # -- answering -----------------------------------------------------------------------
    async def incoming(self) -> AsyncIterator[Connection]:
        """Connections dialed to this node, as they complete."""
        while not self._closed:
            yield await self._incoming.get()

    async def accept(self, timeout: float | None = None) -> Connection | None:
        """The next incoming connection, or None after ``timeout`` seconds."""
        try:
            return await asyncio.wait_for(self._incoming.get(), timeout)
        except TimeoutError:
            return None

    async def _offer_loop(self) -> None:
        dht = self._require_dht()
        while True:
            try:
                async for value in dht.listen(offers_key(self.fingerprint)):
                    await self._offer_slots.acquire()
                    self._spawn(self._handle_offer(value), "offer")
            except TierlinkError as exc:
                log.warning("listening for offers failed: %s (retrying)", exc)
                await asyncio.sleep(1.0)

    def _check_offer(self, value: bytes) -> Offer:
        offer = decode_offer(value, self.identity)
        now = now_ms()
        for sid, exp in list(self._seen_sessions.items()):
            if exp < now:
                del self._seen_sessions[sid]
        if offer.session_id in self._seen_sessions:
            raise RecordError("replay", "offer session was seen before")
        self._seen_sessions[offer.session_id] = offer.expires_at_ms
        allow = self.config.allow
        if allow is not None and offer.signer not in allow:
            raise RecordError("not-allowed", f"dialer {offer.signer[:16]}… is not allowed")
        return offer

    async def _handle_offer(self, value: bytes) -> None:
        try:
            try:
                offer = self._check_offer(value)
            except RecordError as exc:
                self.offer_rejections[exc.reason] += 1
                log.info("offer rejected: %s", exc)
                return
            await self._answer(offer)
        except TierlinkError as exc:
            log.info("incoming dial failed: %s", exc)
        finally:
            self._offer_slots.release()

    async def _answer(self, offer: Offer) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        ice = self.ice_settings.new_connection(controlling=False)
        try:
            p = offer.params
            gathering = asyncio.ensure_future(ice.gather_candidates())
            try:
                await asyncio.sleep(0)  # gathering under way, the QUIC reply is built
                draft = self._reply_draft(p)
            finally:
                await gathering
            await set_remote(ice, p.ufrag, p.pwd, p.candidates)
            answer = encode_answer(
                offer.secret, self._params(ice, quic_flight=draft.reply() if draft else ())
            )
            # Checks start at once: the dialer's agent answers them before it has our
            # answer, so our side of the pair is ready when its nomination arrives.
            sent: asyncio.Future[None] = loop.create_future()
            put = asyncio.ensure_future(self._require_dht().put(
                answer_key(offer.signer, offer.session_id), answer, sent=sent
            ))
            checks = asyncio.ensure_future(run_checks(ice, self.config.ice_timeout, started))
            self.offers_answered += 1
            try:
                await while_putting(put, checks)
            except BaseException:
                for fut in (put, checks):
                    fut.cancel()
                    fut.add_done_callback(retrieve)
                raise
            self._spawn(settle(put, None), "answer-put")
            channel = await self._open_channel(
                ice, False, p.cert_sha256, p.channel_limits, draft
            )
        except BaseException:
            await ice.close()
            raise
        conn = self._adopt(ice, offer.signer, False, offer.session_id,
                           (loop.time() - started) * 1000, channel)
        if p.purpose == "messages" and self.messenger is not None and conn.secure:
            self.messenger.adopt_link(conn)
            return
        try:
            self._incoming.put_nowait(conn)
        except asyncio.QueueFull:
            log.warning("incoming queue full; closing a new connection")
            await conn.close()

    # -- tiered messages ------------------------------------------------------------------
    def _require_messenger(self) -> Messenger:
        if self.messenger is None or self._closed:
            raise TierlinkError("node is not running (use 'async with Node(config)')")
        return self.messenger

    async def send(self, fingerprint: str, payload: bytes, ttl_s: float | None = None) -> bytes:
        """Store ``payload`` durably and deliver it by the best tier; returns the message id.

        Returns once the message is safely in the outbox; :meth:`wait_delivered` and
        :meth:`deliveries` tell when the recipient acknowledged it and through which tier.
        """
        if not is_fingerprint(fingerprint):
            raise ValueError("a fingerprint is 128 lowercase hex characters")
        if not payload:
            raise ValueError("cannot send an empty message")
        ttl = DEFAULT_TTL_S if ttl_s is None else ttl_s
        return await self._require_messenger().send(fingerprint, payload, ttl)

    async def wait_delivered(
        self, message_id: bytes, timeout: float | None = None
    ) -> Delivery | None:
        """The :class:`Delivery` of a sent message once acknowledged; None on timeout."""
        return await self._require_messenger().wait_delivered(message_id, timeout)

    def deliveries(self) -> AsyncIterator[Delivery]:
        """Acknowledgements of sent messages as they arrive."""
        return self._require_messenger().deliveries()

    def messages(self) -> AsyncIterator[Message]:
        """Incoming messages (any tier), each handed over exactly once."""
        return self._require_messenger().messages()

    # -- introspection -------------------------------------------------------------------
    @property
    def connections(self) -> Iterable[Connection]:
        """Open connections."""
        return tuple(self._connections)

    def stats(self) -> dict[str, object]:
        """Counters for tests and the CLI."""
        return {
            "fingerprint": self.fingerprint,
            "connections": len(self._connections),
            "offers_answered": self.offers_answered,
            "offer_rejections": dict(self.offer_rejections),
            "record_rejections": dict(self.records.rejected),
            "uptime_s": round(time.monotonic(), 1),
        }
