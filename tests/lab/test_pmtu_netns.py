"""Path MTU probing on real kernel links: two namespaces joined by one veth pair of a given
MTU, one :mod:`tierlink.lab.mtupeer` process in each. The probed QUIC packet size must be the
largest ladder size that fits the link (UDP payload <= MTU - 28 over IPv4), a 200 KB message
must still arrive byte-exact both ways (no black hole), packets of that size must actually
cross the link, and nothing may be fragmented (the probes carry don't-fragment)."""

from __future__ import annotations

import json
import re
import subprocess
import time
from typing import Any

import pytest

from tierlink.lab.netns import Run, ns_cmd, python_argv, run
from tierlink.lab.runner import LineReader
from tierlink.transport.quic_setup import MAX_DATAGRAM_SIZE

pytestmark = pytest.mark.lab

A_IP, B_IP = "198.18.0.1", "198.18.0.2"
IP_UDP_HEADERS = 28  # IPv4 (20) + UDP (8)
MESSAGE_SIZE = 200_000
#: Whole-case bound (peers give up a little earlier, so their results still come out).
CASE_TIMEOUT = 30.0
PEER_TIMEOUT = 25.0
#: (veth MTU, expected packet size): 1452 fits 1500, nothing above 1200 fits 1400, 8952
#: fits jumbo frames (16 383 fits none of them).
CASES = [(1500, 1452), (1400, MAX_DATAGRAM_SIZE), (9000, 8952)]


def _ruleset(expected: int) -> str:
    """Input counters: UDP packets larger than any 1200-byte packet, and larger than expected."""
    return f"""
table ip mtulab {{
  counter big {{ }}
  counter over {{ }}
  chain input {{
    type filter hook input priority 0; policy accept;
    ip protocol udp ip length > {MAX_DATAGRAM_SIZE + IP_UDP_HEADERS} counter name "big"
    ip protocol udp ip length > {expected + IP_UDP_HEADERS} counter name "over"
  }}
}}
"""


def _counter(ns: str, name: str) -> int:
    out = run(ns_cmd(ns, "nft", "list", "counter", "ip", "mtulab", name))
    match = re.search(r"packets (\d+)", out)
    assert match, out
    return int(match.group(1))


def _ip_stats(ns: str) -> dict[str, int]:
    """The namespace's ``Ip:`` counters from /proc/net/snmp (fragmentation, reassembly)."""
    lines = [ln.split()[1:] for ln in run(ns_cmd(ns, "cat", "/proc/net/snmp")).splitlines()
             if ln.startswith("Ip:")]
    names, values = lines[0], lines[1]
    return {k: int(v) for k, v in zip(names, values, strict=True)}


def _wait_exit(proc: subprocess.Popen[str]) -> str:
    """Wait (bounded) for a peer we started to exit; the tail of its stderr."""
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
    return (proc.stderr.read() if proc.stderr else "").strip()[-800:]


def _run_pair(lab: Run, ns_a: str, ns_b: str, deadline: float) -> list[dict[str, Any]]:
    """Start both peers, swap their offers, return their results (asserts they came)."""
    procs = [
        lab.spawn(ns, python_argv("tierlink.lab.mtupeer", role, "--host-address", ip,
                                  "--message-size", str(MESSAGE_SIZE),
                                  "--timeout", str(PEER_TIMEOUT)),
                  stdin=subprocess.PIPE)
        for ns, ip, role in ((ns_a, A_IP, "--controlling"), (ns_b, B_IP, "--controlled"))
    ]
    readers = [LineReader(p.stdout) for p in procs if p.stdout is not None]
    results: list[dict[str, Any] | None] = [None, None]
    try:
        offers = [r.json(timeout=max(0.1, deadline - time.monotonic())) for r in readers]
        if all(o is not None and o.get("event") == "offer" for o in offers):
            for proc, offer in zip(procs, reversed(offers), strict=True):
                assert proc.stdin is not None
                proc.stdin.write(json.dumps(offer) + "\n")
                proc.stdin.flush()
            results = [r.json(timeout=max(0.1, deadline - time.monotonic())) for r in readers]
    finally:
        errors = [_wait_exit(p) for p in procs]
    assert results[0] is not None and results[1] is not None, f"no result; stderr: {errors}"
    return [results[0], results[1]]


@pytest.mark.parametrize(("mtu", "expected"), CASES, ids=[f"mtu{m}" for m, _ in CASES])
def test_probing_picks_the_largest_size_the_link_carries(mtu: int, expected: int) -> None:
    started = time.monotonic()
    deadline = started + CASE_TIMEOUT
    with Run() as lab:
        ns_a, ns_b = lab.add_namespace("pa"), lab.add_namespace("pb")
        lab.veth(ns_a, "mtua", ns_b, "mtub")
        for ns, dev, ip in ((ns_a, "mtua", A_IP), (ns_b, "mtub", B_IP)):
            run(["ip", "-n", ns, "link", "set", dev, "mtu", str(mtu)])
            lab.address(ns, dev, f"{ip}/24")
            lab.nft(ns, _ruleset(expected))
        a, b = _run_pair(lab, ns_a, ns_b, deadline)
        big = {side: _counter(ns, "big") for side, ns in (("a", ns_a), ("b", ns_b))}
        over = {side: _counter(ns, "over") for side, ns in (("a", ns_a), ("b", ns_b))}
        ip_stats = {side: _ip_stats(ns) for side, ns in (("a", ns_a), ("b", ns_b))}
    elapsed = time.monotonic() - started
    print(f"\nveth MTU {mtu}: packet sizes {a['probed_size']} / {b['probed_size']} "
          f"(after transfer {a['final_size']} / {b['final_size']}); received packets "
          f"> 1228 B: {big}, > {expected + IP_UDP_HEADERS} B: {over}; "
          f"fragments created/reassembled: "
          f"{[(s['FragCreates'], s['ReasmReqds']) for s in ip_stats.values()]}; "
          f"{elapsed:.1f} s")

    for me, peer in ((a, b), (b, a)):
        summary = json.dumps(me)
        assert me["ok"] and me["error"] is None, summary
        assert all(end.startswith("host ") for end in me["pair"]), summary
        assert me["probed_size"] == me["final_size"] == expected, summary
        # No black hole: the whole message arrived, byte-exact, at the probed size.
        assert me["received_len"] == MESSAGE_SIZE, summary
        assert me["received_sha256"] == peer["sent_sha256"], summary
    for side in ("a", "b"):
        assert over[side] == 0, over  # nothing larger than the probed size got through
        if expected > MAX_DATAGRAM_SIZE:
            # The message really crossed in packets above 1200 bytes (~138 at 1452, ~23 at
            # 8952), not only the probe that confirmed the size.
            assert big[side] >= MESSAGE_SIZE // expected // 2, big
        else:
            assert big[side] == 0, big
        # Don't-fragment works: oversized probes were refused, never split into fragments.
        assert ip_stats[side]["FragCreates"] == 0, ip_stats
        assert ip_stats[side]["ReasmReqds"] == 0, ip_stats
