"""Which ICE candidate pair the controlling agent nominates, and when (sans-IO).

The controlling agent uses regular nomination (RFC 8445 section 8.1.1): its checks carry no
USE-CANDIDATE; once the policy here picks a pair whose check succeeded, one more check on
that pair carries USE-CANDIDATE, and that pair is the connection's path for its whole life
(no renomination, no ICE restart: the QUIC layer above always sees one address).

The rule, "direct first":

* a succeeded direct pair (no TURN relay on either end) is nominated at once: the highest
  priority one if several have succeeded;
* when only relayed pairs have succeeded, direct pairs still being checked get a grace
  period: from the first relayed success, ``max(floor, rtt_factor x RTT of the best relayed
  pair)``, at most ``cap``. A direct pair that succeeds within it is nominated; when it ends,
  or as soon as no direct pair is left to check, the best relayed pair is. The grace scales
  with the measured relay RTT (a direct check that needed its peer's check first lands about
  one RTT after the relay check), the floor covers scheduling jitter on fast links, and a
  cell where only the relay works pays at most the grace, never a fixed long wait.

:func:`check_rto` is the first retransmission timeout of a connectivity check: short before
any RTT is known, then a multiple of the largest RTT seen, so that a check dropped by a NAT
that had not yet seen its peer's packet is resent within a few RTTs, not after 500 ms.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "INITIAL_RTO",
    "MAX_EARLY_RESENDS",
    "MAX_RTO",
    "MIN_RTO",
    "GraceSettings",
    "Nominate",
    "PairFacts",
    "Wait",
    "check_rto",
    "decide",
]

#: A check's first retransmission timeout before any check has measured an RTT (seconds).
INITIAL_RTO = 0.1
#: Bounds of the RTT-derived retransmission timeout (seconds).
MIN_RTO = 0.05
MAX_RTO = 0.5
#: How many RTTs a check waits before its first retransmission.
RTO_RTT_FACTOR = 2.0
#: Copies of one check resent early, when a check from its destination arrived: that check
#: and ours usually cross in flight (ours reached the peer's NAT first and was dropped), so a
#: copy goes out at once, however recently the last one did; the cap keeps two agents whose
#: responses are lost from resending to each other until their checks time out.
MAX_EARLY_RESENDS = 3

PairState = Literal["pending", "succeeded", "failed"]


@dataclass(frozen=True)
class GraceSettings:
    """How long direct pairs may still win once a relayed pair has succeeded (seconds)."""

    floor: float = 0.05
    rtt_factor: float = 3.0
    cap: float = 1.0

    def __post_init__(self) -> None:
        if not 0 <= self.floor <= self.cap or self.rtt_factor < 0:
            raise ValueError(f"need 0 <= floor <= cap and rtt_factor >= 0: {self}")

    def grace(self, rtt: float | None) -> float:
        """The grace for a relayed pair whose check measured ``rtt`` (None: unknown)."""
        if rtt is None:
            return self.floor
        return min(self.cap, max(self.floor, self.rtt_factor * rtt))


@dataclass(frozen=True)
class PairFacts:
    """What the policy knows of one candidate pair.

    ``state``: ``pending`` (not started or in progress), ``succeeded`` (its check got a
    response and it may be nominated), ``failed``. ``succeeded_at`` and ``rtt`` (seconds;
    None when the check was retransmitted, so its RTT is ambiguous) are set when it
    succeeded.
    """

    key: int
    relayed: bool
    priority: int
    state: PairState
    succeeded_at: float | None = None
    rtt: float | None = None


@dataclass(frozen=True)
class Nominate:
    """Nominate the pair ``key`` now."""

    key: int
    relayed: bool


@dataclass(frozen=True)
class Wait:
    """Nominate nothing yet; decide again when a check ends, or at ``until`` if set."""

    until: float | None = None


def _best(pairs: Sequence[PairFacts]) -> PairFacts:
    return max(pairs, key=lambda p: p.priority)


def decide(pairs: Sequence[PairFacts], now: float, settings: GraceSettings) -> Nominate | Wait:
    """What the controlling agent does now with these pairs (see the module docstring)."""
    succeeded = [p for p in pairs if p.state == "succeeded"]
    if not succeeded:
        return Wait()
    direct = [p for p in succeeded if not p.relayed]
    if direct:
        best = _best(direct)
        return Nominate(best.key, relayed=False)
    best = _best(succeeded)
    if not any(p.state == "pending" and not p.relayed for p in pairs):
        return Nominate(best.key, relayed=True)
    started = min((p.succeeded_at for p in succeeded if p.succeeded_at is not None), default=now)
    measured = [p.rtt for p in succeeded if p.rtt is not None]
    rtt = best.rtt if best.rtt is not None else (max(measured) if measured else None)
    deadline = started + settings.grace(rtt)
    if now >= deadline:
        return Nominate(best.key, relayed=True)
    return Wait(until=deadline)


def check_rto(largest_rtt: float | None) -> float:
    """The first retransmission timeout of a new check, given the largest RTT measured by
    this agent's checks so far (None: none yet). Each later one doubles."""
    if largest_rtt is None:
        return INITIAL_RTO
    return min(MAX_RTO, max(MIN_RTO, RTO_RTT_FACTOR * largest_rtt))
