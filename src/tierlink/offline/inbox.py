"""Receiver policy for one fetch of our offline queue: verify, dedupe, cap, detect replays.

Anyone can put values under our offline-queue key, so a fetch may return garbage, forgeries,
floods from one sender and old envelopes we already delivered. :meth:`Inbox.process` turns
the raw values of one fetch into:

* ``accepted``: new, verified envelopes to hand to the application, oldest first;
* ``replayed``: verified envelopes already delivered (in the :class:`DeliveredLog`) or
  repeated within this fetch: acknowledge them again (the sender missed our ack), do not
  deliver them again;
* ``rejected``: a count per reason word.

Reason words: every :class:`~tierlink.errors.RecordError` reason of
:func:`~tierlink.wire.envelope.open_envelope` (``malformed``, ``kem``, ``decrypt``,
``not-allowed`` for a sender the ``allow`` hook refuses, checked after decryption and before
the signature, ``signature``, ...), plus

================  ==========================================================================
``duplicate``     the same bytes twice in one fetch (counted once, processed once)
``deferred``      beyond ``max_values_per_fetch``; left in the DHT for a later fetch
``replay``        already delivered; listed in ``replayed`` for a fresh ack
``sender_count``  the sender already has ``max_envelopes_per_sender`` accepted this fetch
``sender_bytes``  accepting it would pass ``max_bytes_per_sender`` for this fetch
``log_full``      the :class:`DeliveredLog` is full: held back, left in the DHT (see below)
``reack_later``   a replay whose ack was put less than :data:`REACK_INTERVAL_MS` ago: not
                  acknowledged again yet (:meth:`Inbox.reacks_due`)
================  ==========================================================================

Envelopes refused by a per-sender cap are not acknowledged, so their sender keeps
re-putting them and a later fetch takes them: the caps bound the work and memory of one
fetch, they do not lose messages. Caps count only verified envelopes, so a forger cannot
use up another sender's share. Values failing the checks that need no cryptography (size,
head, times) are refused before that window, so free junk takes none of it, and the rest are
examined in random order so that a flood cannot keep the same honest values past the
``max_values_per_fetch`` window fetch after fetch.

The delivered log is bounded and never evicts (:mod:`~tierlink.offline.delivered`): once it
is full, a new message is held back (``log_full``, not acknowledged, so it stays in the DHT
and a later fetch delivers it when entries expire) while a replay is still recognised and
acknowledged again. A flood of valid envelopes from fresh identities can fill the log and
delay new messages; it cannot make one arrive twice or be lost.

Recording a delivery is the caller's job (:meth:`Inbox.delivered` after the application
took the message): remembering before the hand-off could lose a message on a crash.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter, OrderedDict
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass, field

from tierlink.errors import RecordError
from tierlink.identity import Identity
from tierlink.offline.delivered import DeliveredLog
from tierlink.wire.envelope import (
    MAX_PAYLOAD,
    ReceivedEnvelope,
    check_envelope_clear,
    open_envelope,
)
from tierlink.wire.records import now_ms as _now_ms


@dataclass(frozen=True)
class InboxLimits:
    """Per-fetch limits (defaults in brackets).

    ``max_values_per_fetch`` [256]: values verified per fetch; each costs an ML-DSA-87
    verification and an ML-KEM decapsulation (well under 1 ms each), so a fetch stays
    under a fraction of a second of CPU whatever is stored under our key.
    ``max_envelopes_per_sender`` [32] and ``max_bytes_per_sender`` [1 MiB of payload]:
    what one sender can get delivered per fetch. ``max_payload`` [MAX_PAYLOAD]: the largest
    single payload we accept (``oversize`` above).
    """

    max_values_per_fetch: int = 256
    max_envelopes_per_sender: int = 32
    max_bytes_per_sender: int = 1 << 20
    max_payload: int = MAX_PAYLOAD

    def __post_init__(self) -> None:
        if min(self.max_values_per_fetch, self.max_envelopes_per_sender) < 1:
            raise ValueError("inbox limits must be at least 1")
        if self.max_bytes_per_sender < 0 or self.max_payload < 0:
            raise ValueError("inbox byte limits must not be negative")


@dataclass
class FetchResult:
    """What one fetch yielded; see the module docstring."""

    accepted: list[ReceivedEnvelope] = field(default_factory=list)
    replayed: list[ReceivedEnvelope] = field(default_factory=list)
    rejected: Counter[str] = field(default_factory=Counter)

    def ack_ids(self, delivered: Iterable[ReceivedEnvelope] = (),
                replayed: Iterable[ReceivedEnvelope] | None = None) -> dict[bytes, list[bytes]]:
        """Message ids to acknowledge per sender's ack token: ``replayed`` (default: every
        replay of the fetch) plus ``delivered``."""
        out: dict[bytes, list[bytes]] = {}
        for env in [*(self.replayed if replayed is None else replayed), *delivered]:
            ids = out.setdefault(env.ack_token, [])
            if env.message_id not in ids:
                ids.append(env.message_id)
        return out


class _Allowed(Container[str]):
    """The ``allow`` hook as the container :func:`open_envelope` checks senders against."""

    def __init__(self, allow: Callable[[str], bool]) -> None:
        self._allow = allow

    def __contains__(self, fingerprint: object) -> bool:
        return isinstance(fingerprint, str) and self._allow(fingerprint)


#: Shortest time between two acks put for one message (ms): a replay (a copy of a delivered
#: envelope) is acknowledged again at most this often.
REACK_INTERVAL_MS = 60_000
#: Messages whose last ack time is remembered for :data:`REACK_INTERVAL_MS` (oldest go first).
MAX_REACKS_REMEMBERED = 4096


class Inbox:
    """Applies :class:`InboxLimits` and replay detection to the values of each fetch."""

    def __init__(
        self,
        me: Identity,
        delivered_log: DeliveredLog,
        limits: InboxLimits | None = None,
        allow: Callable[[str], bool] | None = None,
    ) -> None:
        self.me = me
        self.log = delivered_log
        self.limits = limits or InboxLimits()
        self.allow = None if allow is None else _Allowed(allow)
        self.rejected: Counter[str] = Counter()
        """Rejections by reason over every fetch so far."""
        self._rng = random.SystemRandom()
        self._acked: OrderedDict[tuple[str, bytes], int] = OrderedDict()

    def reacks_due(self, replayed: Iterable[ReceivedEnvelope], now_ms: int | None = None
                   ) -> list[ReceivedEnvelope]:
        """The replays whose ack may be put again now: each message at most once per
        :data:`REACK_INTERVAL_MS` (its delivery's ack counts), so whoever hands us copies
        of a delivered envelope (a hostile mailbox pushing one again and again) cannot make
        us put an ack in the DHT per copy. A sender that missed the ack re-puts minutes
        later and is answered then. Those held back are counted in ``rejected``."""
        t = _now_ms() if now_ms is None else now_ms
        due = []
        for env in replayed:
            key = (env.sender_fingerprint, env.message_id)
            last = self._acked.get(key)
            if last is not None and t - last < REACK_INTERVAL_MS:
                self.rejected["reack_later"] += 1
                continue
            self._stamp(key, t)
            due.append(env)
        return due

    def _stamp(self, key: tuple[str, bytes], t: int) -> None:
        self._acked[key] = t
        self._acked.move_to_end(key)
        while len(self._acked) > MAX_REACKS_REMEMBERED:
            self._acked.popitem(last=False)

    def precheck(self, value: bytes, now_ms: int | None = None) -> None:
        """The checks that need no cryptography (size, head, times, the payload cap from the
        size); RecordError with their reasons. Values failing them take no room in a fetch's
        ``max_values_per_fetch`` nor in a buffer that waits for one."""
        check_envelope_clear(value, now_ms, max_payload=self.limits.max_payload)

    def process(self, values: Iterable[bytes], now_ms: int | None = None) -> FetchResult:
        """Verify and sort the values of one fetch (does not record deliveries)."""
        t = _now_ms() if now_ms is None else now_ms
        lim = self.limits
        res = FetchResult()
        unique: dict[bytes, bytes] = {}
        for v in values:
            if not isinstance(v, bytes | bytearray):
                res.rejected["malformed"] += 1
                continue
            digest = hashlib.sha256(v).digest()
            if digest in unique:
                res.rejected["duplicate"] += 1
                continue
            try:
                self.precheck(v, t)
            except RecordError as exc:
                res.rejected[exc.reason] += 1
                continue
            unique[digest] = v
        todo = list(unique.values())
        self._rng.shuffle(todo)
        if len(todo) > lim.max_values_per_fetch:
            res.rejected["deferred"] += len(todo) - lim.max_values_per_fetch
            todo = todo[: lim.max_values_per_fetch]

        verified: list[ReceivedEnvelope] = []
        for v in todo:
            try:
                verified.append(
                    open_envelope(v, self.me, t, max_payload=lim.max_payload, allow=self.allow)
                )
            except RecordError as exc:
                res.rejected[exc.reason] += 1
        verified.sort(key=lambda e: (e.created_at_ms, e.message_id))

        count: Counter[str] = Counter()
        size: Counter[str] = Counter()
        taken: set[tuple[str, bytes]] = set()
        free = self.log.free(t) if verified else 0
        for env in verified:
            sender, key = env.sender_fingerprint, (env.sender_fingerprint, env.message_id)
            if key in taken or self.log.seen(*key):
                res.rejected["replay"] += 1
                res.replayed.append(env)
            elif count[sender] >= lim.max_envelopes_per_sender:
                res.rejected["sender_count"] += 1
            elif size[sender] + len(env.payload) > lim.max_bytes_per_sender:
                res.rejected["sender_bytes"] += 1
            elif len(taken) >= free:
                res.rejected["log_full"] += 1
            else:
                count[sender] += 1
                size[sender] += len(env.payload)
                taken.add(key)
                res.accepted.append(env)
        self.rejected.update(res.rejected)
        return res

    def delivered(self, env: ReceivedEnvelope, now_ms: int | None = None) -> bool:
        """Record that the application took ``env`` (durable on return); its ack is due
        now, so a replay of it is acknowledged again only after :data:`REACK_INTERVAL_MS`."""
        self._stamp((env.sender_fingerprint, env.message_id),
                    _now_ms() if now_ms is None else now_ms)
        return self.log.remember(env.sender_fingerprint, env.message_id, env.expires_at_ms, now_ms)
