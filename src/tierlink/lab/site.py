"""A site of the NAT lab: one preset's namespaces, peers and links (built by
:meth:`tierlink.lab.topology.Lab.add_site`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tierlink.lab.links import EmulatedLink
from tierlink.lab.profiles import LinkProfile


@dataclass
class Site:
    """One preset's namespaces: ``hosts`` are (namespace, LAN address) of the peers."""

    preset: str
    index: int
    hosts: list[tuple[str, str]]
    namespaces: list[str] = field(default_factory=list)
    public_ip: str = ""
    ports: list[str] = field(default_factory=list)  # its links' ends on the internet bridge
    profile: LinkProfile | None = None
    links: list[EmulatedLink] = field(default_factory=list)
    #: Preset facts (real-world presets, IPv6): see :mod:`tierlink.lab.worlds`.
    info: dict[str, Any] = field(default_factory=dict)
