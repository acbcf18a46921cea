"""The dialer's side: reach a peer by fingerprint and open a connection to it.

A dial looks the callee's record up while ICE gathers, puts a sealed-sender offer (carrying
the QUIC client's first flight) under the callee's offers key, listens for the sealed answer
under the key only the offer's secret gives and under the callee's offers key (the callee
puts it under both: see :func:`tierlink.node.answer.put_answer`), takes the first that opens,
then runs ICE checks and opens the pinned channel. Only the callee's KEM private key recovers
the offer's secret, so an answer that decrypts under it is the callee's (see
:mod:`tierlink.wire.signaling`).

The offers-key listen is the fast one under churn: this node's DHT search for that key is
warm (the offer was just put there), while the fresh answer key's search first waits out
departed nodes. Anyone can put values there, so it is read warily: every value that is not an
answer by its kind byte is skipped unopened, and at most :data:`MAX_OFFERS_KEY_ANSWERS`
answer values are tried and at most :data:`MAX_OFFERS_KEY_BYTES` read per dial (counted in
:attr:`Dialer.answers`).

The steps overlap where they can, since a dial's time is what users wait for: the answer is
awaited while the offer put still runs (the DHT hands a value to listeners before the put's
HTTP answer returns; a failed put fails the dial), the callee's QUIC reply is processed while
the checks run, and the next dial's QUIC client is built while this one waits. A put that
settles after the answer came belongs to the node's :class:`~tierlink.node.tasks.Supervisor`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from tierlink.dht import DhtClient, DhtListener
from tierlink.errors import DialTimeout, PeerNotFound, RecordError, TierlinkError
from tierlink.identity import Identity, is_fingerprint
from tierlink.node.config import NodeConfig
from tierlink.node.endpoint import Endpoint
from tierlink.node.presence import Presence
from tierlink.node.tasks import Supervisor, io_turns, outcome_of, task_group
from tierlink.transport.aioice_adapter import IceConnection
from tierlink.transport.channel import PreparedChannel
from tierlink.transport.connection import Connection
from tierlink.transport.ice import PathTally, run_checks, set_remote
from tierlink.wire.dhtkeys import offers_key
from tierlink.wire.signaling import (
    OfferSecret,
    SessionDescription,
    decode_answer,
    encode_offer,
    is_answer,
    new_session_id,
)

log = logging.getLogger(__name__)

#: How long an offer stays valid beyond the dial's timeout (seconds).
OFFER_GRACE_S = 30.0
#: Most answer values one dial tries to open from the callee's offers key (the rest, and
#: every value of another kind there, are skipped unopened).
MAX_OFFERS_KEY_ANSWERS = 256
#: Most bytes of values (of any kind) one dial reads from the callee's offers key: the listen
#: first hands over what is stored there (up to 10 minutes of offers of ~9 KB each); past
#: this the dial waits on the answer key alone.
MAX_OFFERS_KEY_BYTES = 4 << 20


class Dialer:
    """Dials peers by fingerprint for one node; keeps one spare QUIC client prepared."""

    def __init__(
        self, dht: DhtClient, identity: Identity, config: NodeConfig, endpoint: Endpoint,
        presence: Presence, tasks: Supervisor,
        session_ids: Callable[[], bytes] = new_session_id,
    ) -> None:
        self.dht = dht
        self.identity = identity
        self.config = config
        self.endpoint = endpoint
        self.presence = presence
        self.tasks = tasks
        self.session_ids = session_ids
        self.dials = 0
        """Dials started (each counted once, whatever its outcome)."""
        self.failures = 0
        """Dials that raised."""
        self.paths = PathTally()
        """The paths dials ended on, and their checks."""
        self.answers: Counter[str] = Counter()
        """Answer values by outcome: ``taken-answer-key`` / ``taken-offers-key`` (the one a
        dial used, by the listen it came from), ``not-ours`` (did not open under the dial's
        secret: another dial's, or forged), ``over-bound`` (offers-key answers past
        :data:`MAX_OFFERS_KEY_ANSWERS`, not opened), ``gave-up`` (offers-key listens left
        after :data:`MAX_OFFERS_KEY_BYTES`)."""
        self._spare: PreparedChannel | None = None

    async def connect(self, fingerprint: str, timeout: float, purpose: str) -> Connection:
        """Dial ``fingerprint``; see :meth:`tierlink.node.Node.connect`."""
        if not is_fingerprint(fingerprint):
            raise ValueError("a fingerprint is 128 lowercase hex characters")
        self.dials += 1
        loop = asyncio.get_running_loop()
        started = loop.time()
        ice = self.endpoint.new_ice(controlling=True)
        session = self.session_ids()
        try:
            answer, secret, draft = await self._exchange(
                ice, fingerprint, session, purpose, timeout
            )
            await set_remote(ice, answer.ufrag, answer.pwd, answer.candidates)
            async with task_group() as group:
                group.create_task(run_checks(ice, self.config.ice_timeout, started))
                if draft is not None and answer.quic_flight and answer.cert_sha256:
                    # The callee's QUIC reply is processed while the checks run.
                    await io_turns()
                    draft.receive_reply(answer.quic_flight, answer.cert_sha256)
            channel = await self.endpoint.open_channel(ice, True, answer, secret, draft)
        except BaseException:
            self.failures += 1
            self.paths.add(ice, connected=False)
            await ice.close()
            raise
        self.paths.add(ice, connected=True, peer=fingerprint)
        ms = (loop.time() - started) * 1000
        return self.endpoint.adopt(ice, fingerprint, True, session, ms, channel,
                                   (secret, self.dht, self.tasks))

    async def _exchange(
        self, ice: IceConnection, fingerprint: str, session: bytes, purpose: str, timeout: float
    ) -> tuple[SessionDescription, OfferSecret, PreparedChannel | None]:
        """The dialer's signaling: gather, put the offer, wait for the sealed answer.

        The answer listen starts once the offer's request is written (a listen hands over
        values already stored, so an early answer is not missed).
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        kem_public_key = await self._gather_and_find(ice, fingerprint)
        draft = self._take_prepared() if self.config.secure else None
        offer, secret = encode_offer(
            self.identity, fingerprint, kem_public_key, session,
            self.endpoint.describe(ice, purpose, draft.first_flight() if draft else ()),
            lifetime_s=max(timeout, 5.0) + OFFER_GRACE_S,
        )
        sent: asyncio.Future[None] = loop.create_future()
        put = self.tasks.spawn(self.dht.put(offers_key(fingerprint), offer, sent=sent),
                               "offer-put")
        try:
            await asyncio.wait([sent, put], return_when=asyncio.FIRST_COMPLETED)
            listeners = (self.dht.listen(secret.answer_key()),
                         self.dht.listen(offers_key(fingerprint)))
            try:
                self._refill_spare()
                remaining = timeout - (loop.time() - started)
                answer = await self._answer_while_putting(
                    put, listeners, secret, max(remaining, 0.01), fingerprint, timeout
                )
            except BaseException:
                await _close_all(listeners)
                raise
        except BaseException:
            put.cancel()
            raise
        # The answer proves the offer arrived: the put and the listens end off the dial's path.
        try:
            self.tasks.spawn(_close_after(put, listeners), "offer-settle")
        except TierlinkError:  # the node is closing
            put.cancel()
            await _close_all(listeners)
            raise
        return answer, secret, draft

    async def _gather_and_find(self, ice: IceConnection, fingerprint: str) -> bytes:
        """Gather candidates while the callee's record is found; returns its KEM key.

        Both run to the end even if one fails (no half-gathered agent is left behind).
        """
        gathered, found = await asyncio.gather(
            ice.gather_candidates(), self.presence.record_for(fingerprint),
            return_exceptions=True,
        )
        if isinstance(gathered, BaseException):
            raise gathered
        if isinstance(found, BaseException):
            raise found
        if not found.kem_public_key:
            raise PeerNotFound(f"record of {fingerprint[:16]}… carries no KEM key")
        return found.kem_public_key

    async def _answer_while_putting(
        self, put: asyncio.Task[None], listeners: tuple[DhtListener, DhtListener],
        secret: OfferSecret, within: float, fingerprint: str, timeout: float,
    ) -> SessionDescription:
        """The sealed answer from either listen (answer key, offers key), awaited while the
        offer put runs (its failure fails this)."""
        by_answer_key, by_offers_key = listeners
        try:
            async with asyncio.timeout(within), task_group() as group:
                watch = group.create_task(outcome_of(put))
                route, answer = await _first_of(
                    first_answer(by_answer_key, secret, self.answers),
                    first_answer(by_offers_key, secret, self.answers,
                                 bound=MAX_OFFERS_KEY_ANSWERS, max_bytes=MAX_OFFERS_KEY_BYTES),
                )
                self.answers[("taken-answer-key", "taken-offers-key")[route]] += 1
                watch.cancel()
        except TimeoutError:
            raise DialTimeout(
                f"{fingerprint[:16]}… did not answer within {timeout:.1f} s"
            ) from None
        return answer

    def _take_prepared(self) -> PreparedChannel:
        """The spare QUIC client if still fresh, else a new one."""
        draft, self._spare = self._spare, None
        return draft if draft is not None and draft.fresh else self.endpoint.prepared_channel()

    def _refill_spare(self) -> None:
        """Build the next dial's QUIC client (while this dial waits for its answer)."""
        if self.config.secure and (self._spare is None or not self._spare.fresh):
            self._spare = self.endpoint.prepared_channel()


async def first_answer(
    values: AsyncIterator[bytes], secret: OfferSecret, counts: Counter[str],
    *, bound: int | None = None, max_bytes: int | None = None,
) -> SessionDescription:
    """The first of ``values`` that opens under ``secret`` (only the callee can seal one);
    values that do not open count as ``not-ours`` in ``counts``. With a
    ``bound`` (for a key anyone writes to), values that are not answers by their kind byte
    are skipped unopened, and answers past the first ``bound`` count as ``over-bound``,
    unopened; past ``max_bytes`` read it gives up (``gave-up``). DialTimeout if ``values``
    ends first or it gives up."""
    tried = size = 0
    async for value in values:
        size += len(value)
        if max_bytes is not None and size > max_bytes:
            counts["gave-up"] += 1
            raise DialTimeout(f"no answer in the first {max_bytes} bytes of the listen")
        if bound is not None:
            if not is_answer(value):
                continue
            if tried >= bound:
                counts["over-bound"] += 1
                continue
            tried += 1
        try:
            answer = decode_answer(value, secret)
        except RecordError as exc:
            counts["not-ours"] += 1
            log.debug("ignoring an answer: %s", exc)
            continue
        return answer
    raise DialTimeout("the answer listen ended before an answer arrived")


async def _first_of(
    *waits: Coroutine[Any, Any, SessionDescription]
) -> tuple[int, SessionDescription]:
    """The index and answer of the first of ``waits`` to return one (the lowest index if
    several did at once); the others are cancelled. A wait that fails (its listen ended or
    broke) leaves the others waiting; if all fail, the first one's error is raised."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        pending = set(tasks)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for i, task in enumerate(tasks):
                if task in done and task.exception() is None:
                    return i, task.result()
        for task in tasks:
            exc = task.exception()
            if exc is not None:
                raise exc
        raise AssertionError("unreachable")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _close_all(listeners: tuple[DhtListener, ...]) -> None:
    for listener in listeners:
        await listener.aclose()


async def _close_after(put: asyncio.Task[None], listeners: tuple[DhtListener, ...]) -> None:
    """Let a put that has served its purpose finish, then close the answer listens.

    Cancelling an HTTP request mid-flight costs its pooled connection, and the dial already
    has what it waited for.
    """
    try:
        await asyncio.wait([put])
    finally:
        await _close_all(listeners)
