"""What each cell of the matrix should show, and which pairs a matrix runs.

:func:`expected_cell` says whether a pair connects, through which path types, and which tiers
may deliver its test message; ``note`` says why, where a cell has no path today only because
the client lacks something (an ICE issue, not the lab's).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tierlink.lab import nat
from tierlink.transport.ice import PATH_TYPES

DIRECT_PATHS = PATH_TYPES[:-1]

#: A reduced matrix: every preset at least once, including both pairs that need a relay.
REDUCED_PAIRS: tuple[tuple[str, str], ...] = (
    ("open", "full-cone"),
    ("restricted", "symmetric"),
    ("port-restricted", "symmetric"),
    ("symmetric", "symmetric"),
    ("double", "port-restricted"),
    ("hairpin", "hairpin"),
)
#: The real-world presets in the default matrix: each with itself and/or a common partner.
WORLD_PAIRS: tuple[tuple[str, str], ...] = (
    ("cgnat", "port-restricted"),
    ("cgnat", "cgnat"),
    ("cgnat-shared", "cgnat-shared"),
    ("mobile-v6", "mobile-v6"),
    ("mobile-v6", "port-restricted"),
    ("ipv6", "ipv6"),
    ("udp-blocked", "port-restricted"),
    ("short-timeout", "port-restricted"),
    ("pmtu-blackhole", "port-restricted"),
)
#: Presets whose one site holds both peers (they pair only with themselves).
SHARED_SITE = ("hairpin", "cgnat-shared")
#: Presets from which no UDP gets out: only a relay reached over TCP/TLS connects them.
NO_UDP = ("udp-blocked",)


# -- expectations ---------------------------------------------------------------------------
def direct_possible(a: str, b: str) -> bool:
    """Can ICE connect two presets without a relay over IPv4? No when one side's mapping
    depends on the destination port (symmetric) while the other side filters by address and
    port, and never from a network that lets no UDP out."""
    if a in SHARED_SITE or b in SHARED_SITE:
        return a == b
    if a in NO_UDP or b in NO_UDP:
        return False
    sa, sb = nat.PRESETS[a], nat.PRESETS[b]
    blocked = (sa.mapping == nat.APDM and sb.filtering == nat.APDF) or (
        sb.mapping == nat.APDM and sa.filtering == nat.APDF
    )
    return not blocked


#: Presets that get global IPv6 when the lab runs with ``ipv6`` (others never, or always).
IPV6_CAPABLE = ("open", "full-cone", "restricted", "port-restricted", "symmetric")
#: Presets that always have global IPv6.
IPV6_ALWAYS = ("ipv6", "mobile-v6")


def has_ipv6(preset: str, lab_ipv6: bool) -> bool:
    """Do the peers of ``preset`` have a global IPv6 address in this lab?"""
    return preset in IPV6_ALWAYS or (lab_ipv6 and preset in IPV6_CAPABLE)


def expected_cell(
    a: str, b: str, turn: bool, ipv6: bool = False, *, turn_tls: bool = False
) -> dict[str, Any]:
    """What a cell should show: whether it connects, through which path types, and which tiers
    may deliver its test message (Node driver).

    With TURN, a pair that could go direct still ends on a direct pair: the dialer nominates
    by priority and gives direct checks a grace after a relay check succeeds
    (:mod:`tierlink.protocol.nomination`), so the relay is expected only where no direct
    path exists. The message link is a dial of its own and follows the same rule. Without
    any path the message must still arrive, through the DHT offline queue. Where both peers
    have global IPv6 behind stateful firewalls (``ipv6``: the lab gave it to every site that
    can have it), their IPv6 host candidates make a direct path even when IPv4 has none.
    From a network without UDP only a relay reached over TLS connects (``turn_tls``: the
    peers ask TURN over TLS on 443 too, as the Node driver's do; raw ICE peers ask UDP TURN
    only).
    """
    if a == b == "hairpin":  # host; the NAT's hairpin makes srflx valid too (seen with TURN)
        return {"connects": True, "paths": list(DIRECT_PATHS), "tiers": ["direct"]}
    if a == b == "cgnat-shared":  # through the CGN's hairpin, or the relay
        paths = [*DIRECT_PATHS, "relay"] if turn else list(DIRECT_PATHS)
        return {"connects": True, "paths": paths, "tiers": ["direct", "relay"] if turn
                else ["direct"]}
    if a in NO_UDP or b in NO_UDP:
        if turn and turn_tls:
            return {"connects": True, "paths": ["relay"], "tiers": ["relay"],
                    "note": "no UDP out: relay over TURN/TLS (443)"}
        note = ("no UDP out and no TURN over TLS asked" if turn
                else "no UDP out: no path without a relay over TLS")
        return {"connects": False, "paths": ["none"], "tiers": ["offline"], "note": note}
    if not direct_possible(a, b) and has_ipv6(a, ipv6) and has_ipv6(b, ipv6):
        paths = ["host", "relay"] if turn else ["host"]
        return {"connects": True, "paths": paths, "tiers": ["direct", "relay"] if turn
                else ["direct"], "note": "direct only over IPv6 (host candidates)"}
    if direct_possible(a, b):
        return {"connects": True, "paths": list(DIRECT_PATHS), "tiers": ["direct"]}
    if turn:
        return {"connects": True, "paths": ["relay"], "tiers": ["relay"]}
    return {"connects": False, "paths": ["none"], "tiers": ["offline"]}


def default_pairs(presets: Sequence[str]) -> list[tuple[str, str]]:
    """Every unordered pair of presets; ``hairpin`` and ``cgnat-shared`` pair only with
    themselves (one shared NAT)."""
    plain = [p for p in presets if p not in SHARED_SITE]
    pairs = [(a, b) for i, a in enumerate(plain) for b in plain[i:]]
    pairs += [(p, p) for p in SHARED_SITE if p in presets]
    return pairs


def matrix_pairs() -> list[tuple[str, str]]:
    """The default matrix: every pair of the classic presets, plus :data:`WORLD_PAIRS`."""
    return default_pairs(nat.CLASSIC) + list(WORLD_PAIRS)
