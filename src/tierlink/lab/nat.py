"""NAT presets (RFC 4787 mapping and filtering behaviours) as nftables rulesets for a router.

Every NAT router has a ``wan`` interface (on the lab internet) and a ``lan`` interface. All
presets share two traps measured in this lab:

* plain masquerade lets a peer's first inbound packet create (and confirm) a conntrack entry
  before the host's own outbound packet; the outbound flow is then SNAT'ed to another port and
  endpoint-independent mapping breaks. Dropping *new* inbound connections in the input hook
  keeps the entry from being confirmed.
* the forward hook drops new inbound connections too (unless a preset DNAT'ed them on
  purpose), so nothing reaches the LAN by routing past the NAT.

Port preservation: Linux NAT keeps the source port when the translated tuple is unique, which
in this lab (one host per mapping) gives endpoint-independent mapping with mapped port == host
port. Full cone and restricted cone rely on that to DNAT inbound packets to the same port.
"""

from __future__ import annotations

from dataclasses import dataclass

# RFC 4787 behaviour names, shared with the probes that measure them.
from tierlink.lab.probe import ADF, ADM, APDF, APDM, BLOCKED, EIF, EIM, NO_NAT, UNKNOWN

__all__ = ["ADF", "ADM", "APDF", "APDM", "BLOCKED", "CLASSIC", "EIF", "EIM", "NO_NAT",
           "PRESETS", "UNKNOWN", "PresetSpec",
           "full_cone_rules", "hairpin_rules", "port_restricted_rules", "restricted_rules",
           "rules_for"]


@dataclass(frozen=True)
class PresetSpec:
    """What a preset promises: the mapping and filtering a probe must observe."""

    name: str
    mapping: str
    filtering: str
    description: str
    hairpin: bool = False


PRESETS: dict[str, PresetSpec] = {
    spec.name: spec
    for spec in (
        PresetSpec("open", NO_NAT, EIF, "public address on the host, no NAT, no firewall"),
        PresetSpec("full-cone", EIM, EIF, "port-preserving SNAT + DNAT of all inbound UDP"),
        PresetSpec("restricted", EIM, ADF, "SNAT + DNAT from (contacted ip, mapped port) set"),
        PresetSpec("port-restricted", EIM, APDF, "masquerade + drop of new inbound"),
        PresetSpec("symmetric", APDM, APDF, "masquerade fully-random + drop of new inbound"),
        PresetSpec(
            "hairpin", EIM, APDF, "two hosts behind one port-restricted NAT that hairpins",
            hairpin=True,
        ),
        PresetSpec("double", EIM, APDF, "port-restricted home NAT behind a port-restricted CGN"),
        # real-world presets, built and checked by tierlink.lab.worlds
        PresetSpec("cgnat", EIM, APDF, "port-restricted home NAT (WAN in 100.64.0.0/10) behind "
                   "a provider CGN with a port block per subscriber"),
        PresetSpec("cgnat-shared", EIM, APDF, "two subscribers' home NATs behind one CGN that "
                   "hairpins", hairpin=True),
        PresetSpec("mobile-v6", APDM, APDF, "phone behind a symmetric CGN (IPv4) with global "
                   "IPv6 behind a stateful firewall"),
        PresetSpec("ipv6", EIM, APDF, "port-restricted NAT (IPv4) and global IPv6 behind a "
                   "stateful firewall"),
        PresetSpec("udp-blocked", UNKNOWN, BLOCKED, "firewall lets only TCP 80/443 out"),
        PresetSpec("short-timeout", EIM, APDF, "port-restricted NAT dropping UDP mappings "
                   "idle for 30 s"),
        PresetSpec("pmtu-blackhole", EIM, APDF, "port-restricted NAT, WAN MTU 1280, ICMP "
                   "'fragmentation needed' dropped, TCP MSS clamped"),
    )
}
#: The presets of the RFC 4787 matrix (every pair of them by default).
CLASSIC = ("open", "full-cone", "restricted", "port-restricted", "symmetric", "hairpin",
           "double")

#: Chains that drop new inbound connections on the WAN (input and forward hooks), except
#: those a DNAT rule admitted; shared by every NAT and firewall ruleset of the lab.
FILTER_NEW_INBOUND = """
    chain c_input {
        type filter hook input priority filter; policy accept;
        iifname "wan" ct state new drop
    }
    chain c_forward {
        type filter hook forward priority filter; policy accept;
        iifname "wan" ct state new ct status dnat accept
        iifname "wan" ct state new drop
    }
"""


def port_restricted_rules(*, fully_random: bool = False) -> str:
    """Masquerade (EIM in practice) or fully-random masquerade (APDM), APDF filtering."""
    flags = " fully-random" if fully_random else ""
    return f"""
table ip lab {{
{FILTER_NEW_INBOUND}
    chain c_postnat {{
        type nat hook postrouting priority srcnat;
        oifname "wan" masquerade{flags}
    }}
}}
"""


def full_cone_rules(host: str) -> str:
    """EIM + EIF: port-preserving masquerade, every new inbound UDP DNAT'ed to the host."""
    return f"""
table ip lab {{
{FILTER_NEW_INBOUND}
    chain c_prenat {{
        type nat hook prerouting priority dstnat;
        iifname "wan" meta l4proto udp dnat to {host}
    }}
    chain c_postnat {{
        type nat hook postrouting priority srcnat;
        oifname "wan" masquerade
    }}
}}
"""


def restricted_rules(host: str) -> str:
    """EIM + ADF: inbound UDP from an ip the mapping (its port) has sent to is DNAT'ed in.

    The set holds (remote ip . mapped port) and is filled after SNAT (postrouting, priority
    after srcnat), so it records the port the remote side actually sees.
    """
    return f"""
table ip lab {{
    set contacted {{
        type ipv4_addr . inet_service; flags dynamic, timeout; timeout 5m;
    }}
{FILTER_NEW_INBOUND}
    chain c_prenat {{
        type nat hook prerouting priority dstnat;
        iifname "wan" ip saddr . udp dport @contacted dnat to {host}
    }}
    chain c_postnat {{
        type nat hook postrouting priority srcnat;
        oifname "wan" masquerade
    }}
    chain c_mapped {{
        type filter hook postrouting priority srcnat + 10; policy accept;
        oifname "wan" meta l4proto udp update @contacted {{ ip daddr . udp sport }}
    }}
}}
"""


def hairpin_rules(wan_ip: str, lan_net: str, hosts: list[str]) -> str:
    """Port-restricted NAT whose LAN hosts can reach each other through the public mapping.

    After SNAT, each host's mapped UDP ports are recorded in a per-host set; a LAN packet to
    ``wan_ip`` on such a port is DNAT'ed to that host and SNAT'ed to ``wan_ip`` (port kept),
    so the receiver sees the sender's public mapping, as on a hairpinning router.
    """
    sets = "".join(
        f"    set h{i} {{ type inet_service; flags dynamic, timeout; timeout 5m; }}\n"
        for i in range(len(hosts))
    )
    record = "".join(
        f'        oifname "wan" ct original ip saddr {h} meta l4proto udp update @h{i} '
        "{ udp sport }\n"
        for i, h in enumerate(hosts)
    )
    dnat = "".join(
        f'        iifname "lan" ip daddr {wan_ip} udp dport @h{i} dnat to {h}\n'
        for i, h in enumerate(hosts)
    )
    return f"""
table ip lab {{
{sets}{FILTER_NEW_INBOUND}
    chain c_prenat {{
        type nat hook prerouting priority dstnat;
{dnat}    }}
    chain c_postnat {{
        type nat hook postrouting priority srcnat;
        oifname "wan" masquerade
        ip saddr {lan_net} ip daddr {lan_net} ct status dnat snat to {wan_ip}
    }}
    chain c_mapped {{
        type filter hook postrouting priority srcnat + 10; policy accept;
{record}    }}
}}
"""


def rules_for(preset: str, *, host: str) -> str:
    """The ruleset of a single-host router preset (open, hairpin, double are built elsewhere)."""
    if preset == "full-cone":
        return full_cone_rules(host)
    if preset == "restricted":
        return restricted_rules(host)
    if preset == "port-restricted":
        return port_restricted_rules()
    if preset == "symmetric":
        return port_restricted_rules(fully_random=True)
    raise ValueError(f"no single-router ruleset for preset {preset!r}")
