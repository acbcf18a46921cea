"""Which verified offers a callee answers, and how much answering work it takes on (sans-IO).

Answering an offer costs the callee twice: opening it (a KEM decapsulation, a signature
check, an AEAD) and answering it (an ICE agent with sockets, checks for up to
``ice_timeout``, a DHT put). :class:`Admission` bounds both, with every time passed in:

* **opening**: a global token bucket of offers opened per second (:meth:`may_open`), charged
  for every value that passed the free checks (size, head, times) before any expensive
  work, since the dialer's identity may be known only once the value is open;
* **per dialer**: a token bucket per *verified* dialer fingerprint (:meth:`admit` runs after
  every check passed, so a forged offer under a friend's fingerprint never spends the
  friend's tokens). A token pays for an answer that does not end in a channel: a session
  that completes one is refunded (:meth:`finish`), so a real peer reconnecting is never
  limited while a dialer whose offers lead nowhere is;
* **globally**: sessions in flight and a bucket of answers per second, each with a
  **reserved lane**: allow-listed fingerprints and peers this node dialed successfully
  recently (:meth:`dialed`) also have capacity of their own that others cannot take, so a
  flood of offers from fresh identities fills only the general pool.

Refusals are :class:`~tierlink.errors.RecordError` with reason ``busy-open`` (opening budget
spent), ``rate-limited`` (this dialer's bucket) or ``busy`` (no session or answer left), each
counted in :attr:`Admission.refused`.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass

from tierlink.errors import RecordError

#: Lanes of :meth:`Admission.admit`: the general pool, and the reserved one.
GENERAL = "general"
RESERVED = "reserved"


@dataclass(frozen=True)
class AdmissionLimits:
    """How much offer handling a callee takes on. Defaults do not bite normal use (a peer
    reconnecting in a loop is refunded on every channel) yet bound a flood.

    A node many peers dial at once (a server holding 1000 connections) raises
    ``max_sessions`` above the dials it expects in flight: a dialer's dial returns a little
    before the callee's session ends, so at the default 16 a steady 16 dials in flight are
    already refused ``busy`` now and then, and a refused dialer learns it only by its
    dial timeout. One dialer keeps its own dials in flight below ``dialer_burst`` for the
    same reason (``rate-limited``). The opening budget and the reserved lane stay as they
    are, so a flood of fresh identities still fills only the general pool.
    """

    #: Offers opened (decapsulated, verified, decrypted) per second, and the burst.
    open_rate: float = 200.0
    open_burst: int = 400
    #: Per verified dialer: answers that did not end in a channel, per second and burst.
    dialer_rate: float = 1.0
    dialer_burst: int = 8
    #: Answering sessions (ICE in flight) of the general pool, and the lane's own extra.
    max_sessions: int = 16
    reserved_sessions: int = 8
    #: Answers started per second (each lane has a bucket of this size) and the burst.
    answer_rate: float = 20.0
    answer_burst: int = 40
    #: How long a peer this node dialed keeps the reserved lane (seconds).
    recent_peer_s: float = 600.0
    #: Most dialer buckets and recent peers remembered (least recently used go first).
    max_tracked: int = 4096
    #: Open connections whose restart key one opening token pays for: a restart value is
    #: tried with every open connection's key, so it costs one token per this many of
    #: them (at least one), and a node holding many connections is not made to try them
    #: all for every junk value.
    restart_keys_per_open: int = 256

    def __post_init__(self) -> None:
        if min(self.open_rate, self.dialer_rate, self.answer_rate) <= 0:
            raise ValueError("admission rates must be positive")
        if min(self.open_burst, self.dialer_burst, self.answer_burst, self.max_tracked,
               self.restart_keys_per_open) < 1:
            raise ValueError("admission bursts, max_tracked and restart_keys_per_open must be "
                             "at least 1")
        if self.max_sessions < 1 or self.reserved_sessions < 0:
            raise ValueError("max_sessions must be >= 1 and reserved_sessions >= 0")


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` per second of the times it is given."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._tokens = float(burst)
        self._stamp = now

    def tokens(self, now: float) -> float:
        """Tokens available at ``now`` (a time before the last one counts as the last)."""
        if now > self._stamp:
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
        return self._tokens

    def take(self, now: float, n: int = 1) -> bool:
        """Take ``n`` tokens if there are that many."""
        if self.tokens(now) < n:
            return False
        self._tokens -= n
        return True

    def give_back(self, now: float) -> None:
        """Return one token (never above the burst)."""
        self._tokens = min(self.burst, self.tokens(now) + 1.0)


@dataclass(frozen=True)
class Ticket:
    """One admitted answering session; hand it back to :meth:`Admission.finish`."""

    dialer: str
    lane: str


class Admission:
    """The admission policy of one callee."""

    def __init__(self, limits: AdmissionLimits, now: float) -> None:
        self.limits = limits
        self._open = TokenBucket(limits.open_rate, limits.open_burst, now)
        self._answers = {
            lane: TokenBucket(limits.answer_rate, limits.answer_burst, now)
            for lane in (GENERAL, RESERVED)
        }
        self._dialers: OrderedDict[str, TokenBucket] = OrderedDict()
        self._recent: OrderedDict[str, float] = OrderedDict()
        self._sessions = {GENERAL: 0, RESERVED: 0}
        self.refused: Counter[str] = Counter()
        """Offers refused by this policy, by reason."""

    @property
    def sessions(self) -> int:
        """Answering sessions in flight (both lanes)."""
        return sum(self._sessions.values())

    def _refuse(self, reason: str, detail: str) -> RecordError:
        self.refused[reason] += 1
        return RecordError(reason, detail)

    # -- opening -----------------------------------------------------------------------------
    def may_open(self, now: float, cost: int = 1) -> None:
        """Charge the opening of one value (``cost`` tokens, see :meth:`restart_cost`);
        RecordError ``busy-open`` when the budget is spent (the value is dropped unopened)."""
        if not self._open.take(now, cost):
            raise self._refuse("busy-open", "offer opening budget spent")

    def restart_cost(self, keys: int) -> int:
        """The opening tokens a restart value costs when ``keys`` open connections' restart
        keys are tried on it: one per ``restart_keys_per_open`` of them, at least one. A
        burst larger than :attr:`AdmissionLimits.open_burst` is never affordable, so it is
        capped there."""
        per = self.limits.restart_keys_per_open
        return min(max(1, -(-keys // per)), self.limits.open_burst)

    # -- the reserved lane -------------------------------------------------------------------
    def dialed(self, peer: str, now: float) -> None:
        """Record that a channel this node dialed to ``peer`` completed: the peer takes the
        reserved lane for ``recent_peer_s`` (an identity cannot earn it by dialing us)."""
        self._recent[peer] = now
        self._recent.move_to_end(peer)
        while len(self._recent) > self.limits.max_tracked:
            self._recent.popitem(last=False)

    def lane_of(self, dialer: str, now: float, allow_listed: bool = False) -> str:
        """The lane ``dialer``'s offers take (``allow_listed``: it is in the allow list)."""
        if allow_listed:
            return RESERVED
        seen = self._recent.get(dialer)
        if seen is not None:
            if now - seen <= self.limits.recent_peer_s:
                return RESERVED
            del self._recent[dialer]
        return GENERAL

    # -- answering ---------------------------------------------------------------------------
    def _bucket(self, dialer: str, now: float) -> TokenBucket:
        bucket = self._dialers.get(dialer)
        if bucket is None:
            bucket = TokenBucket(self.limits.dialer_rate, self.limits.dialer_burst, now)
            self._dialers[dialer] = bucket
            while len(self._dialers) > self.limits.max_tracked:
                self._dialers.popitem(last=False)  # forgetting gives a full bucket: no gain
        self._dialers.move_to_end(dialer)
        return bucket

    def admit(self, dialer: str, now: float, *, allow_listed: bool = False) -> Ticket:
        """Admit an answering session for a *verified* dialer, or RecordError
        ``rate-limited`` / ``busy``. A session may use the general pool, or if the dialer
        has the reserved lane, the lane's own capacity once the general pool is full."""
        lanes = [GENERAL]
        if self.lane_of(dialer, now, allow_listed) == RESERVED:
            lanes.append(RESERVED)
        cap = {GENERAL: self.limits.max_sessions, RESERVED: self.limits.reserved_sessions}
        for lane in lanes:
            if self._sessions[lane] < cap[lane] and self._answers[lane].tokens(now) >= 1.0:
                break
        else:
            raise self._refuse("busy", f"no answering capacity left for {dialer[:16]}…")
        if not self._bucket(dialer, now).take(now):
            raise self._refuse("rate-limited", f"dialer {dialer[:16]}… is over its rate")
        self._answers[lane].take(now)
        self._sessions[lane] += 1
        return Ticket(dialer, lane)

    def finish(self, ticket: Ticket, now: float, *, connected: bool) -> None:
        """End an admitted session; one that completed a channel refunds its tokens."""
        self._sessions[ticket.lane] -= 1
        if connected:
            self._answers[ticket.lane].give_back(now)
            bucket = self._dialers.get(ticket.dialer)
            if bucket is not None:
                bucket.give_back(now)

    def stats(self) -> dict[str, object]:
        """Sessions in flight per lane and refusals by reason."""
        return {"sessions": dict(self._sessions), "refused": dict(self.refused)}
