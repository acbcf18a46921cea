"""nftables rulesets of the real-world presets: carrier-grade NAT, a UDP-blocking firewall,
an IPv6 stateful firewall, and a path-MTU black hole (see :mod:`tierlink.lab.worlds`).

Every ruleset keeps the two measured traps of :mod:`tierlink.lab.nat`: new inbound
connections are dropped in the input hook (endpoint-independent mapping stays real) and in the
forward hook (nothing reaches the inside by routing past the NAT).
"""

from __future__ import annotations

from collections.abc import Sequence

from tierlink.lab.nat import FILTER_NEW_INBOUND


def cgn_rules(public_ip: str, subscribers: Sequence[tuple[str, int, int]]) -> str:
    """A provider NAT: each subscriber (inside address, first port, last port) is SNAT'ed to
    ``public_ip`` within its own port block. Mappings are recorded both ways (mapped port ->
    owner, inside endpoint -> mapped endpoint) so a packet from one subscriber to another's
    public mapping is hairpinned: DNAT to the owner, SNAT to the sender's own public mapping
    (what the receiver's home NAT expects to hear from), as RFC 6888 asks of a CGN."""
    snat = "".join(
        f'        oifname "wan" ip saddr {addr} meta l4proto {{ tcp, udp }} '
        f'snat ip to {public_ip}:{lo}-{hi}\n'
        f'        oifname "wan" ip saddr {addr} snat ip to {public_ip}\n'
        for addr, lo, hi in subscribers
    )
    return f"""
table ip cgn {{
    map owner {{
        type inet_service : ipv4_addr . inet_service
        flags dynamic,timeout
        timeout 5m
    }}
    map public {{
        type ipv4_addr . inet_service : ipv4_addr . inet_service
        flags dynamic,timeout
        timeout 5m
    }}
{FILTER_NEW_INBOUND}
    chain c_prenat {{
        type nat hook prerouting priority dstnat;
        iifname "lan" ip daddr {public_ip} meta l4proto udp dnat ip to udp dport map @owner
    }}
    chain c_postnat {{
        type nat hook postrouting priority srcnat;
{snat}        oifname "lan" ct status dnat meta l4proto udp snat ip to ip saddr . udp sport map @public
    }}
    chain c_mapped {{
        type filter hook postrouting priority srcnat + 10; policy accept;
        oifname "wan" meta l4proto udp update @owner {{ udp sport : ct original ip saddr . ct original proto-src }}
        oifname "wan" meta l4proto udp update @public {{ ct original ip saddr . ct original proto-src : ip saddr . udp sport }}
    }}
}}
"""  # noqa: E501


def udp_blocked_rules() -> str:
    """Port-restricted NAT whose firewall lets only TCP 80 and 443 out (and their replies)."""
    return f"""
table ip lab {{
{FILTER_NEW_INBOUND}
    chain c_out {{
        type filter hook forward priority filter + 10; policy accept;
        oifname "wan" ct state established,related accept
        oifname "wan" tcp dport {{ 80, 443 }} accept
        oifname "wan" drop
    }}
    chain c_postnat {{
        type nat hook postrouting priority srcnat;
        oifname "wan" masquerade
    }}
}}
"""


def v6_firewall_rules() -> str:
    """IPv6 without NAT: the inside's global addresses are forwarded out, and only replies
    (and the ICMPv6 errors that belong to them) come back in."""
    return """
table ip6 fw6 {
    chain c_forward {
        type filter hook forward priority filter; policy accept;
        iifname "wan" ct state established,related accept
        iifname "wan" drop
    }
    chain c_input {
        type filter hook input priority filter; policy accept;
        iifname "wan" ct state established,related accept
        iifname "wan" icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert } accept
        iifname "wan" drop
    }
}
"""  # noqa: E501


def icmp_black_hole_rules() -> str:
    """Drop the ICMP that path-MTU discovery needs ("fragmentation needed", "packet too
    big") on its way back to the inside: a path-MTU black hole for UDP.

    TCP gets what routers on small-MTU links (PPPoE, tunnels) give it: the MSS of forwarded
    SYNs is clamped to the route's MTU. Measured without it: the DHT proxy's full-size
    answers vanished at the hop and every HTTP request from the inside stalled.
    """
    return """
table inet blackhole {
    chain c_clamp {
        type filter hook forward priority mangle; policy accept;
        tcp flags syn tcp option maxseg size set rt mtu
    }
    chain c_out {
        type filter hook output priority filter; policy accept;
        icmp type destination-unreachable icmp code frag-needed drop
        icmpv6 type packet-too-big drop
    }
    chain c_forward {
        type filter hook forward priority filter; policy accept;
        icmp type destination-unreachable icmp code frag-needed drop
        icmpv6 type packet-too-big drop
    }
}
"""
