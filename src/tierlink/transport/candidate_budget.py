"""Which local candidates an offer or answer carries when there are more than it may.

A session description holds at most :data:`~tierlink.wire.signaling.MAX_CANDIDATES` (16)
candidates, and receivers refuse more (the hostile-DHT bound). A dual-stack host with a few
interfaces, temporary IPv6 addresses and several STUN and TURN servers can gather more. The
candidates kept are, in this order:

1. the best candidate (highest priority) of each kind, a kind being its type (host, srflx,
   relay) and address family, so every way of reaching the host survives: the direct ones
   of both families, and a relay of each family as the last resort;
2. then the rest by priority (host before srflx before relay; IPv6 before IPv4 within a
   type, see :mod:`.host_addresses`), until the budget is full.

The result keeps the gathering order, so what is sent reads like what was gathered.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

from tierlink.wire.signaling import MAX_CANDIDATES

__all__ = ["MAX_CANDIDATES", "select_candidates"]


class _Candidate(Protocol):
    @property
    def type(self) -> str: ...

    @property
    def host(self) -> str: ...

    @property
    def priority(self) -> int: ...


C = TypeVar("C", bound=_Candidate)


def select_candidates(candidates: Sequence[C], limit: int = MAX_CANDIDATES) -> list[C]:
    """At most ``limit`` of ``candidates``, chosen as the module docstring says."""
    if len(candidates) <= limit:
        return list(candidates)
    by_priority = sorted(range(len(candidates)), key=lambda i: -candidates[i].priority)
    kept: list[int] = []
    kinds: set[tuple[str, bool]] = set()
    for i in by_priority:
        kind = (candidates[i].type, ":" in candidates[i].host)
        if kind not in kinds and len(kept) < limit:
            kinds.add(kind)
            kept.append(i)
    for i in by_priority:
        if len(kept) >= limit:
            break
        if i not in kept:
            kept.append(i)
    return [candidates[i] for i in sorted(kept)]
