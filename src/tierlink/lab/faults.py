"""Faults injected into a running lab, mid-stream (see :mod:`tierlink.lab.faultrun`).

Network faults hit the sending peer's side (its host namespace or its NAT router); the
others hit the receiving peer or the lab's shared services. Each :class:`Fault` has an
``inject`` that returns when the fault is over (a 5 s outage returns after the link is back)
with a dict of facts about it; ``started`` (CLOCK_MONOTONIC) is when the fault began.

* ``address-change``: the sender moves to another LAN: its old interface goes down and a new
  one (another subnet, ``198.18.(100+N).0/24``, behind the same NAT) comes up with the default
  route; its old address is gone.
* ``nat-rebinding``: the sender's NAT forgets the sender's mappings (``conntrack -D -s``)
  and maps its UDP from a different port range from now on, so it gets new ports.
* ``nat-reboot``: every mapping of the sender's NAT is gone (``conntrack -F``).
* ``link-down``: carrier loss: the sender's interface down for 5 s, then up (netlink shows
  it; the default route is put back).
* ``blackhole``: a silent upstream outage: the sender's NAT drops everything through its WAN
  for 5 s (nft rule), the link stays up.
* ``receiver-restart``: the receiving peer SIGKILLed and started again (same identity, same
  data directory).
* ``dht-restart``: the lab's DHT node SIGKILLed and started with empty storage.
* ``turn-kill``: coturn SIGKILLed while the peers use a relay (their ICE is relay-only for
  this fault), started again 5 s later.
* ``clock-skew``: the receiving peer's wall clock runs 5 minutes ahead, from its start (the
  lab's injectable clock: ``faultpeer --clock-offset``; libfaketime is not installed here).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tierlink.lab.netns import ns_cmd, run

#: How long the link-down, blackhole and TURN outages last (seconds).
OUTAGE_S = 5.0
#: The receiving peer's clock offset in the clock-skew fault (seconds).
CLOCK_SKEW_S = 300.0
#: UDP source ports the rebinding NAT maps to (the kernel's ephemeral range lies above).
REBIND_PORTS = "20000-29999"


@dataclass
class FaultContext:
    """What a fault acts on. ``lab``: the :class:`~tierlink.lab.topology.Lab`; the sender's
    host namespace and address, its NAT router namespace and site index;
    ``restart_receiver``: SIGKILL the receiving peer and start it again (returns once it is
    ready)."""

    lab: Any
    host_ns: str
    host_addr: str
    router_ns: str
    index: int
    restart_receiver: Callable[[], None]
    started: float = 0.0
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Fault:
    """One fault: ``relay_only`` asks the peers to use only TURN candidates;
    ``clock_offset_s`` is the receiving peer's clock offset from its start."""

    name: str
    description: str
    inject: Callable[[FaultContext], None]
    relay_only: bool = False
    clock_offset_s: float = 0.0


def _begin(ctx: FaultContext) -> None:
    ctx.started = time.monotonic()


def address_change(ctx: FaultContext) -> None:
    net = f"198.18.{100 + ctx.index}"
    r = ctx.lab.run
    r.veth(ctx.router_ns, "lan2", ctx.host_ns, "eth1")
    r.address(ctx.router_ns, "lan2", f"{net}.1/24")
    run(["ip", "-n", ctx.host_ns, "link", "set", "eth0", "down"])
    _begin(ctx)
    run(["ip", "-n", ctx.host_ns, "addr", "flush", "dev", "eth0"])
    r.address(ctx.host_ns, "eth1", f"{net}.2/24")
    run(["ip", "-n", ctx.host_ns, "route", "replace", "default", "via", f"{net}.1"])
    ctx.facts["new_address"] = f"{net}.2"


def _conntrack(ns: str, *args: str) -> str:
    """Run ``conntrack`` in ``ns`` (exit 1 means "nothing matched": not an error)."""
    return run(ns_cmd(ns, "conntrack", *args), check=False)


def nat_rebinding(ctx: FaultContext) -> None:
    rules = f"""
table ip lab_rebind {{
    chain post {{
        type nat hook postrouting priority srcnat - 1;
        oifname "wan" ip saddr {ctx.host_addr} meta l4proto udp masquerade to :{REBIND_PORTS}
    }}
}}
"""
    ctx.lab.run.nft(ctx.router_ns, rules)
    _conntrack(ctx.router_ns, "-D", "-s", ctx.host_addr)
    _begin(ctx)


def nat_reboot(ctx: FaultContext) -> None:
    _conntrack(ctx.router_ns, "-F")
    _begin(ctx)


def link_down(ctx: FaultContext) -> None:
    gateway = f"198.18.{ctx.index}.1"
    run(["ip", "-n", ctx.host_ns, "link", "set", "eth0", "down"])
    _begin(ctx)
    time.sleep(OUTAGE_S)
    run(["ip", "-n", ctx.host_ns, "link", "set", "eth0", "up"])
    run(["ip", "-n", ctx.host_ns, "route", "replace", "default", "via", gateway])


BLACKHOLE_RULES = """
table inet lab_blackhole {
    chain c_forward {
        type filter hook forward priority -10; policy accept;
        iifname "wan" drop
        oifname "wan" drop
    }
}
"""


def blackhole(ctx: FaultContext) -> None:
    ctx.lab.run.nft(ctx.router_ns, BLACKHOLE_RULES)
    _begin(ctx)
    time.sleep(OUTAGE_S)
    run(ns_cmd(ctx.router_ns, "nft", "delete", "table", "inet", "lab_blackhole"))


def receiver_restart(ctx: FaultContext) -> None:
    _begin(ctx)
    ctx.restart_receiver()
    ctx.facts["receiver_back_ms"] = round((time.monotonic() - ctx.started) * 1000, 1)


def dht_restart(ctx: FaultContext) -> None:
    _begin(ctx)
    ctx.lab.restart_dht()


def turn_kill(ctx: FaultContext) -> None:
    _begin(ctx)
    ctx.lab.kill_turn()
    time.sleep(OUTAGE_S)
    ctx.lab.start_turn()


def clock_skew(ctx: FaultContext) -> None:
    """Nothing happens mid-stream: the receiver's clock was off from its start."""
    _begin(ctx)


FAULTS: dict[str, Fault] = {
    f.name: f
    for f in (
        Fault("address-change", "sender moves to another LAN (new address)", address_change),
        Fault("nat-rebinding", "sender's NAT mappings flushed, new ports", nat_rebinding),
        Fault("nat-reboot", "sender's NAT loses every mapping", nat_reboot),
        Fault("link-down", f"sender's link down {OUTAGE_S:.0f} s (carrier loss)", link_down),
        Fault("blackhole", f"sender's upstream drops everything for {OUTAGE_S:.0f} s",
              blackhole),
        Fault("receiver-restart", "receiving peer SIGKILLed and restarted", receiver_restart),
        Fault("dht-restart", "the lab's DHT node restarted with empty storage", dht_restart),
        Fault("turn-kill", f"coturn SIGKILLed while relaying, back after {OUTAGE_S:.0f} s",
              turn_kill, relay_only=True),
        Fault("clock-skew", f"receiving peer's clock {CLOCK_SKEW_S / 60:.0f} min ahead",
              clock_skew, clock_offset_s=CLOCK_SKEW_S),
    )
}
#: The faults that need the ``conntrack`` tool.
CONNTRACK_FAULTS = ("nat-rebinding", "nat-reboot")
#: The faults of the reduced set (``make test``).
REDUCED_FAULTS = ("nat-rebinding", "receiver-restart")
