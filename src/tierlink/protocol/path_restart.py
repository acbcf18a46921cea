"""Path migration, sans-IO: when a connection's path is dead, and who restarts ICE.

:class:`DeadPathDetector` declares the path suspect when ack-eliciting packets stay
unanswered: from the moment something is outstanding (or last acknowledged while more stays
outstanding), a deadline of ``multiple`` x PTO, bounded to ``[floor, ceiling]`` seconds. An
idle connection has nothing outstanding, so it adds no traffic and no timer; its keep-alive
PING is ack-eliciting, so an unanswered keep-alive is caught the same way.

:class:`RestartNegotiation` is one connection's ICE restart state (docs/PROTOCOL.md §10.1):
each side numbers its restart offers 1, 2, ...; an offer is accepted only with a number
above every offer accepted from that peer before (a replayed one is refused), an answer
only for the offer in progress. When both sides offer at once, the dialer's offer wins: the
dialer refuses the callee's, the callee drops its own and answers the dialer's.

:class:`PeerRestartCheck` decides when an unanswered restart means the peer itself started
again (a new process without the session): the connection is then closed at once, so the
application (or the node's delivery) dials the new process, instead of waiting out the
liveness timeout.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from enum import Enum

#: Deadline for unanswered ack-eliciting packets: ``MULTIPLE`` x PTO within these bounds (s).
SUSPECT_FLOOR_S = 1.0
SUSPECT_CEILING_S = 3.0
SUSPECT_PTO_MULTIPLE = 4.0


class DeadPathDetector:
    """Deadline of the ack-eliciting packets outstanding without an acknowledgement."""

    def __init__(
        self, floor: float = SUSPECT_FLOOR_S, ceiling: float = SUSPECT_CEILING_S,
        multiple: float = SUSPECT_PTO_MULTIPLE,
    ) -> None:
        if not 0 < floor <= ceiling or multiple <= 0:
            raise ValueError("need 0 < floor <= ceiling and multiple > 0")
        self.floor, self.ceiling, self.multiple = floor, ceiling, multiple
        #: When the path becomes suspect unless an acknowledgement comes (None: nothing
        #: outstanding).
        self.deadline: float | None = None

    def bound(self, pto: float) -> float:
        """How long outstanding packets may stay unanswered on a path whose PTO is ``pto``."""
        return min(max(self.multiple * pto, self.floor), self.ceiling)

    def update(self, now: float, outstanding: bool, acked: bool, pto: float) -> float | None:
        """After a send or a receive at ``now``: ``outstanding``, ack-eliciting packets are
        in flight; ``acked``, an acknowledgement of new packets just arrived. Returns the
        deadline (None: nothing outstanding)."""
        if not outstanding:
            self.deadline = None
        elif acked or self.deadline is None:
            self.deadline = now + self.bound(pto)
        return self.deadline

    def expired(self, now: float) -> bool:
        """True once the deadline passed with packets still unanswered."""
        return self.deadline is not None and now >= self.deadline

    def declared(self, now: float, pto: float) -> None:
        """The path was declared suspect: the next declaration, if nothing is answered, is
        one bound later (a restart that failed is tried again)."""
        self.deadline = now + self.bound(pto)


class State(Enum):
    IDLE = "idle"
    OFFERING = "offering"  # our restart runs (offered, maybe answered)
    ANSWERING = "answering"  # the peer's restart runs (we answered it)


class Verdict(Enum):
    """What to do with a restart offer from the peer."""

    ANSWER = "answer"  # answer it (nothing in progress)
    REPLACE = "replace"  # drop the restart in progress, answer this one
    REFUSE = "refuse"  # ignore it (counted in ``refused``)


@dataclass
class RestartNegotiation:
    """One connection's restart offers and answers (see the module docstring). A restart
    is named by ``(ours, seq)``: who offered it and its number."""

    is_dialer: bool
    state: State = State.IDLE
    seq: int = 0  # the restart in progress (ours when offering, the peer's when answering)
    answered: bool = False  # our offer in progress got its answer
    sent_seq: int = 0  # our last offer's number
    peer_seq: int = 0  # the peer's highest accepted offer

    def __post_init__(self) -> None:
        #: Restart messages refused, by reason: ``replay`` (an offer numbered at or below
        #: one accepted before), ``conflict`` (the callee's offer while the dialer's runs),
        #: ``unexpected`` (an answer to no offer in progress, or a second one).
        self.refused: Counter[str] = Counter()
        #: Restarts begun by us (``started``), by the peer (``answered``), ended with a new
        #: path (``succeeded``) or without (``failed``), dropped for the dialer's (``yielded``).
        self.counts: Counter[str] = Counter(
            dict.fromkeys(("started", "answered", "succeeded", "failed", "yielded"), 0)
        )

    def start(self) -> int | None:
        """The path is suspect: the number of our new offer, or None while a restart runs."""
        if self.state is not State.IDLE:
            return None
        self.sent_seq += 1
        self.state, self.seq, self.answered = State.OFFERING, self.sent_seq, False
        self.counts["started"] += 1
        return self.seq

    def on_offer(self, seq: int) -> Verdict:
        """The peer's offer number ``seq`` arrived (authenticated)."""
        if seq <= self.peer_seq:
            self.refused["replay"] += 1
            return Verdict.REFUSE
        self.peer_seq = seq
        if self.state is State.OFFERING and self.is_dialer:
            self.refused["conflict"] += 1
            return Verdict.REFUSE
        verdict = Verdict.ANSWER if self.state is State.IDLE else Verdict.REPLACE
        if self.state is State.OFFERING:
            self.counts["yielded"] += 1
        self.state, self.seq = State.ANSWERING, seq
        self.counts["answered"] += 1
        return verdict

    def on_answer(self, seq: int) -> bool:
        """The peer's answer to our offer ``seq`` arrived: True if it answers the offer in
        progress (once; a repeat, or an answer to an older offer, is ``unexpected``)."""
        if self.state is State.OFFERING and seq == self.seq and not self.answered:
            self.answered = True
            return True
        self.refused["unexpected"] += 1
        return False

    def current(self, ours: bool, seq: int) -> bool:
        """True while restart ``(ours, seq)`` is the one in progress."""
        mine = self.state is State.OFFERING
        return self.state is not State.IDLE and mine == ours and seq == self.seq

    def finish(self, ours: bool, seq: int, succeeded: bool) -> None:
        """Restart ``(ours, seq)`` ended (a new path, or none); a superseded one changes
        nothing."""
        if not self.current(ours, seq):
            return
        self.state = State.IDLE
        self.counts["succeeded" if succeeded else "failed"] += 1


#: An unanswered restart offer is given at least this long (seconds), or
#: :data:`GONE_SIGNALING_MULTIPLE` x the signaling time the offer itself took if longer,
#: before :class:`PeerRestartCheck` takes its peer for restarted.
GONE_FLOOR_S = 3.0
GONE_SIGNALING_MULTIPLE = 3.0
#: The least grace when the newer record was issued in a later republish period than the
#: connection's (a live peer republishes once per period, so such a record proves less).
GONE_LATER_PERIOD_S = 8.0


@dataclass
class PeerRestartCheck:
    """Whether the peer of a restart that goes unanswered started again (lost the session).

    A peer that restarts (same identity, new process) publishes a new signed record at once
    and cannot answer a restart of a session it no longer holds. Neither fact alone proves
    it: a live peer also republishes (once per republish period, and after an address
    change in public mode), and a live peer's answer can be slow. So the verdict needs both:

    * **evidence**: a verified record of the peer with a sequence above the baseline (the
      newest known when the connection opened, or when the peer last proved it holds the
      session: :meth:`alive`); with no baseline, the first record seen becomes it, unless it
      was issued after the connection opened (``opened_at_ms``);
    * **silence**: the restart offer has waited :meth:`grace` since it went out and the
      evidence was seen (whichever came later), with no answer, and the path was declared
      dead again after the offer went out (a path that answers again is not gone).

    The grace covers a live peer's answer through a slow DHT (a multiple of the time our own
    offer's signaling took); evidence issued in a later republish period than the baseline
    (what a live peer's periodic republish looks like) gets at least
    :data:`GONE_LATER_PERIOD_S`. Only the peer can sign a record and an older one is no
    evidence; a hostile DHT can withhold answers, which fails the restart anyway, but
    cannot shorten the grace.
    """

    baseline_seq: int | None
    baseline_issued_ms: int | None
    opened_at_ms: int
    #: The first record that showed a publish since the baseline: sequence, issued time,
    #: when (loop time) it was seen and whether it was issued in a later period.
    evidence_seq: int | None = None
    evidence_issued_ms: int = 0
    evidence_at: float | None = None
    evidence_later: bool = False

    def record(self, seq: int, issued_at_ms: int, now: float) -> bool:
        """A verified record of the peer (``seq``, ``issued_at_ms``) was read at ``now``;
        True once there is evidence of a publish since the baseline."""
        if self.evidence_seq is None:
            if self.baseline_seq is None and issued_at_ms <= self.opened_at_ms:
                self.baseline_seq, self.baseline_issued_ms = seq, issued_at_ms
            elif self.baseline_seq is None or seq > self.baseline_seq:
                self.evidence_seq, self.evidence_issued_ms = seq, issued_at_ms
                self.evidence_at = now
                self.evidence_later = (self.baseline_issued_ms is None
                                       or issued_at_ms > self.baseline_issued_ms)
        return self.evidence_seq is not None

    def alive(self) -> None:
        """The peer proved it holds the session (an authenticated restart message): the
        records seen so far are a live peer's, and the newest becomes the baseline."""
        if self.evidence_seq is not None:
            self.baseline_seq, self.baseline_issued_ms = (self.evidence_seq,
                                                          self.evidence_issued_ms)
            self.evidence_seq, self.evidence_at, self.evidence_later = None, None, False

    def grace(self, signaling_s: float) -> float:
        """How long an offer whose own signaling (gathering, put, lookup) took
        ``signaling_s`` waits for its answer before the silence counts."""
        floor = GONE_LATER_PERIOD_S if self.evidence_later else GONE_FLOOR_S
        return max(floor, GONE_SIGNALING_MULTIPLE * signaling_s)

    def deadline(self, offered_at: float, signaling_s: float) -> float | None:
        """When the silence counts for an offer out since ``offered_at`` (None: no evidence)."""
        if self.evidence_at is None:
            return None
        return max(offered_at, self.evidence_at) + self.grace(signaling_s)

    def gone(
        self, now: float, offered_at: float, signaling_s: float, declared_at: float | None
    ) -> bool:
        """True if the peer is taken to have restarted at ``now``: evidence, the offer out
        since ``offered_at`` unanswered past :meth:`deadline`, and the path last declared
        dead at ``declared_at``, after the offer went out."""
        deadline = self.deadline(offered_at, signaling_s)
        return (deadline is not None and now >= deadline and declared_at is not None
                and declared_at >= offered_at)
