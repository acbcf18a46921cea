"""Acknowledgements of our offline messages: read them, mark messages delivered, listen.

Acks for a recipient's messages come under :meth:`AckWatch.key`, derived from the ack token
we give that recipient (:func:`~tierlink.wire.envelope.ack_token`): only we two can compute
it. How ack listening scales: one key per *recipient* with undelivered messages, not per
message. We listen on the keys of at most :data:`MAX_ACK_LISTENS` recipients (one DHT listen
each, the longest waiting first, re-chosen when messages are queued or delivered and every
maintenance period); the maintenance loop gets the key of every recipient with undelivered
messages once per period (covering those past the cap). Ack traffic grows with the number
of distinct recipients awaiting acks, whatever the number of messages to each.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from tierlink.errors import RecordError
from tierlink.identity import Identity
from tierlink.offline.dht_access import Dht, close_listen
from tierlink.offline.outbox import Outbox
from tierlink.wire.ack import open_ack
from tierlink.wire.dhtkeys import offline_acks_key
from tierlink.wire.envelope import ack_token

log = logging.getLogger(__name__)

TIER = "offline"
"""The tier name recorded in the outbox for deliveries acknowledged through the DHT."""

#: Most ack values one :meth:`AckWatch.check` opens per ack key: OpenDHT's own bound per key
#: and node, so every value a get returns is opened and values put ahead of the genuine ack
#: (anyone who sees the key can write there) cannot hide it. Each costs an HKDF and an
#: AES-GCM decryption (a few microseconds; the get itself is bounded in bytes); the rest are
#: counted in ``skipped``.
MAX_ACKS_PER_FETCH = 65536
#: Ack values opened between two yields to the event loop.
ACK_CHUNK = 256
#: Most recipients whose ack keys are listened on at once (one DHT listen each); the
#: maintenance loop's fetch reads the keys of the others.
MAX_ACK_LISTENS = 64

#: Runs a background loop body under a name, restarting it after failures.
Retrying = Callable[[str, Callable[[], Awaitable[None]]], Coroutine[Any, Any, None]]


class AckWatch:
    """The acks of one identity's outbox; ``on_delivered(message id, recipient)`` is called
    for each message an ack marks delivered."""

    def __init__(
        self, dht: Dht, identity: Identity, outbox: Outbox,
        on_delivered: Callable[[bytes, str], None] | None = None,
    ) -> None:
        self.dht = dht
        self.me = identity
        self.outbox = outbox
        self.on_delivered = on_delivered
        self.skipped = 0
        """Ack values left unread because a fetch held more than MAX_ACKS_PER_FETCH."""
        self.rejected: Counter[str] = Counter()
        """Ack values refused, by reason (``decrypt``: not made with our token, ...)."""
        self.listening: set[str] = set()
        """Recipients whose ack keys are listened on right now."""
        self._recipients_changed = asyncio.Event()

    def key(self, recipient: str) -> str:
        """The DHT key where ``recipient`` acknowledges our messages (only we two know it)."""
        return offline_acks_key(ack_token(self.me, recipient))

    def recipients_changed(self) -> None:
        """A message was queued for a recipient: choose the listened keys again."""
        self._recipients_changed.set()

    async def check(self, recipient: str | None = None, values: list[bytes] | None = None) -> int:
        """Read ``recipient``'s acks (or handle ``values`` from its ack key; without it, every
        recipient with undelivered messages, one get each); returns messages newly marked
        delivered. At most :data:`MAX_ACKS_PER_FETCH` values are opened per key, in the order
        given, yielding to the event loop every :data:`ACK_CHUNK`; an ack counts only if it
        decrypts under our token for ``recipient``, an id only if its message went to
        ``recipient``.
        """
        if recipient is None:
            if values is not None:
                raise ValueError("ack values must come with the recipient whose key held them")
            marked = 0
            for who in self.outbox.recipients():
                marked += await self.check(who)
            return marked
        token = ack_token(self.me, recipient)
        if values is None:
            values = await self.dht.get(offline_acks_key(token))
        self.skipped += max(0, len(values) - MAX_ACKS_PER_FETCH)
        marked = 0
        for i, value in enumerate(values[:MAX_ACKS_PER_FETCH]):
            if i and not i % ACK_CHUNK:
                await asyncio.sleep(0)  # the node's other work runs between chunks
            try:
                ack = open_ack(value, token)
            except RecordError as exc:
                self.rejected[exc.reason] += 1
                log.debug("ignoring ack: %s", exc)
                continue
            for mid in ack.message_ids:
                entry = self.outbox.get(mid)
                if entry is None or entry.recipient != recipient:
                    continue
                if self.outbox.mark_delivered(mid, TIER):
                    marked += 1
                    if self.on_delivered is not None:
                        self.on_delivered(mid, entry.recipient)
        if marked:
            self._recipients_changed.set()
        return marked

    async def listen(self, period: float, retrying: Retrying) -> None:
        """Keep one listen per recipient awaiting acks (at most MAX_ACK_LISTENS), chosen
        again when recipients change and every ``period`` seconds."""
        listens: dict[str, asyncio.Task[None]] = {}
        try:
            while True:
                self._recipients_changed.clear()
                wanted = set(self.outbox.recipients(limit=MAX_ACK_LISTENS))
                for who in [w for w, task in listens.items() if w not in wanted or task.done()]:
                    listens.pop(who).cancel()
                for who in wanted - listens.keys():
                    listens[who] = asyncio.create_task(
                        retrying("acks", functools.partial(self._listen_key, who)),
                        name=f"offline-acks-{who[:8]}",
                    )
                self.listening = set(listens)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._recipients_changed.wait(), period)
        finally:
            self.listening = set()
            for task in listens.values():
                task.cancel()
            for task in listens.values():
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _listen_key(self, recipient: str) -> None:
        it = self.dht.listen(self.key(recipient))
        try:
            async for value in it:
                await self.check(recipient, [value])
        finally:
            await close_listen(it)
