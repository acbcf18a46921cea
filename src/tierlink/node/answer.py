"""The callee's side: take offers from the DHT, check them, answer the chosen dialers.

Offers arrive through a listen on this node's offers key. Each is checked, cheapest first
(size and times, decapsulation, decryption, the inner fields, the dialer's fingerprint
binding, allow list, signature, then replay, which survives restarts) and, if accepted and
admitted, answered (:mod:`tierlink.node.admission` budgets opening each value that passed
the checks needing no cryptography, so junk and expired replays spend none of it, and, once
an offer passed every check, answering it): ICE gathers while the QUIC reply to the flight
inside the offer is built, the sealed answer is put under the key only the offer's secret
gives and under this node's own offers key (:func:`put_answer`), and checks start at once
(the dialer's agent answers them before it has our answer). Answer values arriving on the
offers listen are skipped by their kind byte before any budget (:attr:`Answerer.answers_seen`).
The answer put, which may outlive the exchange, belongs to the node's
:class:`~tierlink.node.tasks.Supervisor`.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator

from tierlink.backoff import Backoff
from tierlink.dht import DhtClient
from tierlink.errors import RecordError, TierlinkError
from tierlink.identity import Identity
from tierlink.node.admission import Admission, Ticket
from tierlink.node.answered import AnsweredSessions
from tierlink.node.config import NodeConfig
from tierlink.node.endpoint import Endpoint
from tierlink.node.tasks import Supervisor, outcome_of, task_group
from tierlink.transport.connection import Connection
from tierlink.transport.ice import PathTally, run_checks, set_remote
from tierlink.wire.dhtkeys import offers_key
from tierlink.wire.records import MAX_CLOCK_SKEW_MS, now_ms
from tierlink.wire.signaling import (
    MAX_OFFER_LIFETIME_S,
    Offer,
    OfferSecret,
    check_offer_clear,
    decode_offer,
    encode_answer,
    is_answer,
    is_restart,
)

log = logging.getLogger(__name__)

#: Called with each connection an answer completed and the purpose its offer named.
OnConnection = Callable[[Connection, str], Awaitable[None]]

#: The first wait before listening for offers again after the listen failed (seconds).
LISTEN_RETRY_S = 1.0
#: The longest wait between attempts to listen for offers again (seconds).
LISTEN_RETRY_MAX_S = 30.0


#: Most offer sessions remembered for replay detection at once.
MAX_SEEN_SESSIONS = 4096


async def put_answer(dht: DhtClient, secret: OfferSecret, me: str, answer: bytes) -> None:
    """Put ``answer`` under this node's offers key and under the offer's answer key at once.

    The offers key is where this node listens, so its DHT search is synced and the put goes
    out at once; a fresh answer key's search first waits out every departed node (OpenDHT's
    1 s request timeout under churn). The answer-key copy serves dialers that listen only
    there. Fails only if both puts fail (the first error).
    """
    results = await asyncio.gather(
        dht.put(offers_key(me), answer), dht.put(secret.answer_key(), answer),
        return_exceptions=True,
    )
    errors = [r for r in results if isinstance(r, BaseException)]
    if len(errors) == len(results):
        raise errors[0]
    for error in errors:
        if not isinstance(error, Exception):  # a cancellation or exit: not a failed put
            raise error
        log.info("one copy of an answer was not put: %s", error)


class SeenSessions:
    """Session ids of accepted offers, each kept until it expires on the receiver's clock.

    An entry lives until ``min(offer expiry + skew, receive time + MAX_OFFER_LIFETIME_S +
    2 × skew)`` (skew: ``MAX_CLOCK_SKEW_MS``), as long as an offer can still be accepted, so
    a replay is refused while it could count and a sender's clock cannot keep it longer. At
    most ``capacity`` entries: when full, the entry that expires soonest goes first. A heap
    ordered by expiry makes each offer cost O(log capacity), never a scan of every entry.
    While :meth:`attach` ed to an :class:`~tierlink.node.answered.AnsweredSessions` file,
    every change is committed there before :meth:`add` returns, and attaching loads it: a
    restart forgets nothing (why: :mod:`tierlink.node.answered`).
    """

    def __init__(self, capacity: int = MAX_SEEN_SESSIONS) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._expiry: dict[bytes, int] = {}
        self._heap: list[tuple[int, bytes]] = []
        self._log: AnsweredSessions | None = None

    def __len__(self) -> int:
        return len(self._expiry)

    def _drop_first(self) -> bytes:
        sid = heapq.heappop(self._heap)[1]
        del self._expiry[sid]
        return sid

    def _keep(self, session_id: bytes, exp: int) -> None:
        self._expiry[session_id] = exp
        heapq.heappush(self._heap, (exp, session_id))

    def attach(self, log: AnsweredSessions, now: int) -> None:
        """Load the sessions ``log`` remembers and commit every later change to it."""
        for sid, exp in log.load(now, self.capacity):
            if sid not in self._expiry and len(self._expiry) < self.capacity:
                self._keep(sid, exp)
        self._log = log

    def detach(self) -> None:
        """Stop committing changes (the log is closing)."""
        self._log = None

    def add(self, session_id: bytes, expires_at_ms: int, now: int) -> bool:
        """Remember ``session_id``; False (nothing changed) if it is already remembered.

        Raises StoreError (nothing remembered) if the attached log cannot commit it.
        """
        while self._heap and self._heap[0][0] < now:
            self._drop_first()
        if session_id in self._expiry:
            return False
        exp = min(expires_at_ms + MAX_CLOCK_SKEW_MS,
                  now + int(MAX_OFFER_LIFETIME_S * 1000) + 2 * MAX_CLOCK_SKEW_MS)
        full = len(self._expiry) - self.capacity + 1
        if self._log is not None:
            dropped = [sid for _exp, sid in heapq.nsmallest(max(full, 0), self._heap)]
            self._log.remember(session_id, exp, now, dropped)
        while len(self._expiry) >= self.capacity:
            self._drop_first()
        self._keep(session_id, exp)
        return True


class Answerer:
    """Answers the offers addressed to one node."""

    def __init__(
        self, dht: DhtClient, identity: Identity, config: NodeConfig, endpoint: Endpoint,
        tasks: Supervisor, on_connection: OnConnection,
    ) -> None:
        self.dht = dht
        self.identity = identity
        self.config = config
        self.endpoint = endpoint
        self.tasks = tasks
        self.on_connection = on_connection
        self.rejections: Counter[str] = Counter()
        """Offers refused, by reason (``signature``, ``replay``, ``not-allowed``, ...)."""
        self.offers_answered = 0
        self.admission = Admission(config.admission, time.monotonic())
        """Which offers are opened and answered (refusals also count in ``rejections``)."""
        self.checks_dropped = 0
        """ICE checks answers did not send: over their amplification budget."""
        self.paths = PathTally()
        """The paths answered dials ended on, and their checks."""
        self.seen_sessions = SeenSessions()
        """Sessions of accepted offers (a replay of one is refused)."""
        self.answers_seen = 0
        """Answer values (ours and others') the offers listen skipped by their kind byte,
        before any budget or cryptography: answers travel under this key too."""

    async def run(self) -> None:
        """Listen for offers and answer each in its own supervised task, until the listen
        fails (the node's supervisor runs this again with :meth:`restart_backoff`)."""
        with self.remembering():
            listener = self.dht.listen(offers_key(self.identity.fingerprint))
            try:
                async for value in listener:
                    if is_answer(value):  # an answer to some dial: nothing for us to open
                        self.answers_seen += 1
                        continue
                    restart = is_restart(value)
                    try:
                        cost = 1
                        if restart:  # tried with the key of every open connection
                            cost = self.admission.restart_cost(self.endpoint.restarts.sessions)
                        else:  # free checks first: they spend no budget
                            check_offer_clear(value)
                        # admission: the CPU budget gates the opening (restarts too)
                        self.admission.may_open(time.monotonic(), cost)
                    except RecordError as exc:
                        self.rejections[exc.reason] += 1
                        continue
                    if restart:  # a path restart of an open connection
                        self.endpoint.restarts.receive(value)
                        continue
                    self.tasks.spawn(self._handle(value), "offer")
            finally:
                await listener.aclose()

    @contextlib.contextmanager
    def remembering(self) -> Iterator[None]:
        """Keep :attr:`seen_sessions` in the node's state file meanwhile, so offers answered
        before a restart are refused after it (:mod:`tierlink.node.answered`)."""
        log = AnsweredSessions(self.config.state_file())
        try:
            self.seen_sessions.attach(log, now_ms())
            yield
        finally:
            self.seen_sessions.detach()
            log.close()

    @staticmethod
    def restart_backoff() -> Backoff:
        """The waits before listening for offers again after the listen failed."""
        return Backoff(LISTEN_RETRY_S, maximum=LISTEN_RETRY_MAX_S)

    def check_offer(self, value: bytes) -> Offer:
        """The offer in ``value`` if this node answers it; RecordError (with a reason) if not."""
        now = now_ms()
        offer = decode_offer(value, self.identity, now=now, allow=self.config.allow)
        if not self.seen_sessions.add(offer.session_id, offer.expires_at_ms, now):
            raise RecordError("replay", "offer session was seen before")
        return offer

    def _admit(self, offer: Offer) -> Ticket:
        """Admission of a fully verified offer, before any ICE work (per-dialer bucket, the
        reserved lane for allow-listed and recently dialed peers, the global budget)."""
        allow = self.config.allow
        listed = allow is not None and offer.signer in allow
        return self.admission.admit(offer.signer, time.monotonic(), allow_listed=listed)

    async def _handle(self, value: bytes) -> None:
        try:
            offer = self.check_offer(value)
            ticket = self._admit(offer)
        except RecordError as exc:
            self.rejections[exc.reason] += 1
            log.info("offer rejected: %s", exc)
            return
        connected = False
        try:
            conn = await self._answer(offer, len(value))
            connected = True
            await self.on_connection(conn, offer.params.purpose)
        except TierlinkError as exc:
            log.info("incoming dial failed: %s", exc)
        finally:
            self.admission.finish(ticket, time.monotonic(), connected=connected)

    async def _answer(self, offer: Offer, offer_size: int) -> Connection:
        loop = asyncio.get_running_loop()
        started = loop.time()
        p = offer.params
        ice = self.endpoint.new_ice(controlling=False)
        channel_open = False
        try:
            async with task_group() as group:
                group.create_task(ice.gather_candidates())
                await asyncio.sleep(0)  # gathering under way, the QUIC reply is built
                draft = self.endpoint.reply_channel(p, offer.secret)
            # Checks to addresses the offer names stay below check_amplification x its size.
            ice.limit_unvalidated_checks(int(self.config.check_amplification * offer_size))
            await set_remote(ice, p.ufrag, p.pwd, p.candidates)
            reply = draft.reply() if draft else ()
            answer = encode_answer(offer.secret, self.endpoint.describe(ice, quic_flight=reply))
            put = self.tasks.spawn(
                put_answer(self.dht, offer.secret, self.identity.fingerprint, answer),
                "answer-put",
            )
            self.offers_answered += 1
            try:
                # Checks start at once: the dialer's agent answers them before it has our
                # answer, so our side of the pair is ready when its nomination arrives.
                async with task_group() as group:
                    watch = group.create_task(outcome_of(put))
                    await run_checks(ice, self.config.ice_timeout, started)
                    watch.cancel()
            except BaseException:
                put.cancel()
                raise
            channel = await self.endpoint.open_channel(ice, False, p, offer.secret, draft)
            channel_open = True
        except BaseException:
            await ice.close()
            raise
        finally:
            self.checks_dropped += ice.checks_dropped
            self.paths.add(ice, connected=channel_open, peer=offer.signer)
        ms = (loop.time() - started) * 1000
        return self.endpoint.adopt(ice, offer.signer, False, offer.session_id, ms, channel,
                                   (offer.secret, self.dht, self.tasks))
