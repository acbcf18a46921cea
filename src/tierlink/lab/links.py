"""Emulated lab links: a TAP pair moved by :mod:`tierlink.lab.linkemu`, loss and rate in the
kernel.

:func:`emulated_link` replaces one veth pair. The emulator runs in a namespace of its own
(``<prefix>-l<tag>``), creates both TAP devices there and the lab moves them into the two
namespaces they join, so removing that namespace (killing the emulator) removes the link.
On each device, in the kernel:

* loss: a ``netdev`` egress chain drops IPv4/IPv6 frames with ``numgen random`` (ARP and
  neighbour discovery are spared, so loss does not turn into address-resolution stalls);
* rate: a TBF qdisc when the profile has a rate.

So each link direction is shaped (rate), thinned (loss) and then delayed (emulator), once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tierlink.lab.netns import LabError, Run, ns_cmd, python_argv, run
from tierlink.lab.profiles import LinkProfile, loss_threshold

#: TBF bucket and queue bound (queueing delay above the profile's own delay stays small).
TBF_BURST = "32kb"
TBF_LATENCY = "50ms"


@dataclass
class EmulatedLink:
    """One emulated cable: its emulator's namespace and statistics file."""

    namespace: str
    stats_file: Path
    profile: LinkProfile

    def stats(self) -> dict[str, Any]:
        """The emulator's last statistics (empty before its first write)."""
        try:
            loaded: dict[str, Any] = json.loads(self.stats_file.read_text())
        except (OSError, ValueError):
            return {}
        return loaded


def loss_ruleset(dev: str, probability: float) -> str:
    """A netdev egress chain on ``dev`` that drops ``probability`` of the IP frames."""
    return f"""
table netdev le_{dev} {{
    chain egress {{
        type filter hook egress device "{dev}" priority filter; policy accept;
        meta protocol {{ ip, ip6 }} numgen random mod 1000000 < {loss_threshold(probability)} drop
    }}
}}
"""


def shape(r: Run, ns: str, dev: str, profile: LinkProfile) -> None:
    """Kernel side of one link end: loss chain and TBF (each only when the profile has it)."""
    if profile.link_loss > 0:
        r.nft(ns, loss_ruleset(dev, profile.link_loss))
    if profile.rate_mbit:
        run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf",
             "rate", f"{profile.rate_mbit}mbit", "burst", TBF_BURST, "latency", TBF_LATENCY])


def unshape(ns: str, dev: str) -> None:
    """Remove a link end's loss table (the device itself vanishes with its emulator)."""
    run(ns_cmd(ns, "nft", "delete", "table", "netdev", f"le_{dev}"), check=False)


def emulated_link(
    r: Run, a: tuple[str, str], b: tuple[str, str], profile: LinkProfile, tag: str,
    *, seed: int | None = None,
) -> EmulatedLink:
    """Join device ``a[1]`` in namespace ``a[0]`` to ``b[1]`` in ``b[0]`` through an emulator
    with ``profile``'s per-link share; both devices come up, unaddressed."""
    (ns_a, dev_a), (ns_b, dev_b) = a, b
    if dev_a == dev_b:
        raise LabError(f"an emulated link needs two device names, got {dev_a!r} twice")
    link_ns = r.add_namespace(f"l{tag}")
    stats = r.workdir / f"linkemu-{tag}.json"
    argv = python_argv("tierlink.lab.linkemu", "--tap", dev_a, "--tap", dev_b,
                       "--delay-ms", str(profile.link_delay_ms),
                       "--jitter-ms", str(profile.link_jitter_ms), "--stats", str(stats))
    if profile.reorder:
        argv.append("--reorder")
    if seed is not None:
        argv += ["--seed", str(seed)]
    err_file = r.workdir / f"linkemu-{tag}.err"
    with err_file.open("w") as err:
        proc = r.spawn(link_ns, argv, stderr=err)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line or "ready" not in line:
        raise LabError(f"link emulator did not start in {link_ns}: "
                       f"{err_file.read_text().strip()[-300:]}")
    proc.stdout.close()  # nothing more comes; the emulator never writes stdout again
    proc.stdout = None
    for ns, dev in ((ns_a, dev_a), (ns_b, dev_b)):
        run(["ip", "-n", link_ns, "link", "set", dev, "netns", ns])
        run(["ip", "-n", ns, "link", "set", dev, "up"])
        shape(r, ns, dev, profile)
    return EmulatedLink(link_ns, stats, profile)

