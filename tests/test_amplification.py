"""Amplification: the bytes a callee sends because of one offer, over that offer's bytes.

An attacker's offer names up to 16 candidates: a victim's addresses. The callee answers it
and runs ICE checks to each until ICE gives up; every byte of those checks reaches the
victim. :func:`measure` puts an offer whose candidates are UDP sinks on 127.0.0.x (sockets
this test owns) at a real callee and counts what reaches them. The worst offer for the
factor maximises the bytes of each check and minimises the offer: the longest ufrag (each
check carries it in USERNAME), the shortest pwd (only its HMAC goes out) and no QUIC flight
(the callee's reply to one goes into the DHT answer, never to the candidates).

Run as a script (``python -m tests.test_amplification``) to print the factors with the
node's budget and without it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass

from tests.nodes import config_for
from tests.waiting import eventually
from tierlink.dht import DhtNodeProcess, start_nodes, stop_nodes
from tierlink.identity import Identity
from tierlink.node import Node, NodeConfig
from tierlink.transport.aioice_adapter import IceConnection
from tierlink.wire.dhtkeys import offers_key
from tierlink.wire.records import CandidateInfo
from tierlink.wire.signaling import (
    MAX_CANDIDATES,
    PWD_LENGTH,
    UFRAG_LENGTH,
    SessionDescription,
    encode_offer,
    new_session_id,
)

#: IPv4 and UDP headers: what each datagram costs on the wire beyond its payload.
UDP_IPV4_OVERHEAD = 28
#: The bound the callee must keep for any offer.
LIMIT = 3.0
#: A check budget that never binds (to measure aioice's own retransmissions).
UNBOUNDED = 1000.0


class Sink(asyncio.DatagramProtocol):
    """A victim's UDP port: counts datagrams and bytes, never answers."""

    def __init__(self) -> None:
        self.datagrams = 0
        self.bytes = 0

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        self.datagrams += 1
        self.bytes += len(data)


@dataclass(frozen=True)
class Amplification:
    """What one offer made the callee send to the addresses it named."""

    offer_bytes: int
    datagrams: int
    payload_bytes: int

    @property
    def factor(self) -> float:
        """UDP payload bytes sent / offer bytes."""
        return self.payload_bytes / self.offer_bytes

    @property
    def wire_factor(self) -> float:
        """The same with each check's IPv4 and UDP headers counted."""
        return (self.payload_bytes + UDP_IPV4_OVERHEAD * self.datagrams) / self.offer_bytes


async def worst_offer(callee: Node, attacker: Node, targets: list[tuple[str, int]],
                      *, flight: bool) -> bytes:
    """An offer to ``callee`` naming ``targets``: the longest ufrag; without ``flight`` the
    shortest pwd, with it the longest pwd and a real QUIC first flight (a bigger offer that
    also makes the callee build its QUIC reply)."""
    cands = tuple(CandidateInfo(f"f{i}", 1, "udp", 2**31 - 1, host, port, "host", None, None)
                  for i, (host, port) in enumerate(targets))
    cert, limits, first = None, None, ()
    if flight:
        draft = attacker.endpoint.prepared_channel()
        cert, first = attacker.certificate.sha256, draft.first_flight()
        limits = (2**62 - 1, 2**62 - 1)
    pwd = "P" * (PWD_LENGTH[1] if flight else PWD_LENGTH[0])
    params = SessionDescription("U" * UFRAG_LENGTH[1], pwd, cands, cert, "app", limits, first)
    value, _ = encode_offer(Identity.generate(), callee.fingerprint,
                            callee.identity.kem_public_key, new_session_id(), params)
    return value


async def measure(callee: Node, attacker: Node, first_host: int, *, flight: bool,
                  timeout: float) -> Amplification:
    """Put one worst offer whose 16 candidates are sinks on 127.0.0.``first_host``... at
    ``callee`` and count what reaches them until its answering session has ended (ICE gave
    up and closed its sockets, so nothing more can come)."""
    loop = asyncio.get_running_loop()
    endpoints = [
        await loop.create_datagram_endpoint(Sink, local_addr=(f"127.0.0.{first_host + i}", 0))
        for i in range(MAX_CANDIDATES)
    ]
    try:
        targets = [t.get_extra_info("sockname")[:2] for t, _ in endpoints]
        value = await worst_offer(callee, attacker, targets, flight=flight)
        answered = callee.offers_answered
        assert attacker.dht is not None
        await attacker.dht.put(offers_key(callee.fingerprint), value)
        await eventually(lambda: callee.offers_answered > answered, 20, "the offer answered")
        await eventually(lambda: callee.stats()["offers_in_flight"] == 0, timeout + 20,
                         "the callee's ICE to give up on the sinks")
        sinks = [s for _, s in endpoints]
        return Amplification(len(value), sum(s.datagrams for s in sinks),
                             sum(s.bytes for s in sinks))
    finally:
        for transport, _ in endpoints:
            transport.close()


async def measure_both(callee: Node, attacker: Node) -> dict[str, Amplification]:
    """The worst bare offer and the worst offer with a QUIC flight, at once."""
    timeout = callee.config.ice_timeout
    bare, with_flight = await asyncio.gather(
        measure(callee, attacker, 2, flight=False, timeout=timeout),
        measure(callee, attacker, 2 + MAX_CANDIDATES, flight=True, timeout=timeout),
    )
    return {"bare": bare, "flight": with_flight}


def callee_config(dht: DhtNodeProcess, **kw: object) -> NodeConfig:
    """A callee with the default ICE timeout (how long it checks is what is measured)."""
    return config_for(dht, ice_timeout=NodeConfig.ice_timeout, **kw)


async def test_the_worst_offer_makes_the_callee_send_less_than_three_times_its_size(
    dht_node,
) -> None:
    async with Node(callee_config(dht_node)) as callee, Node(config_for(dht_node)) as attacker:
        results = await measure_both(callee, attacker)
        for name, amp in results.items():
            print(f"\n{name}: offer {amp.offer_bytes} B -> {amp.datagrams} checks, "
                  f"{amp.payload_bytes} B (x{amp.factor:.2f}; x{amp.wire_factor:.2f} with "
                  "UDP/IP headers)")
            assert amp.datagrams > 0, "the callee sent no check: nothing was measured"
            assert amp.factor < amp.wire_factor <= callee.config.check_amplification < LIMIT
        # The budget, not the ICE timeout, is what ended the worst offer's checks.
        assert callee.stats()["ice_checks_dropped"] > 0


async def test_a_peer_that_sends_valid_checks_is_outside_the_budget() -> None:
    """A callee with no budget at all still connects: the dialer's authenticated checks
    validate its address, and only then do the callee's own checks to it go out."""
    a = IceConnection(controlling=True, host_addresses=["127.0.0.1"])
    b = IceConnection(controlling=False, host_addresses=["127.0.0.1"])
    try:
        await asyncio.gather(a.gather_candidates(), b.gather_candidates())
        b.limit_unvalidated_checks(0)
        for x, y in ((a, b), (b, a)):
            for candidate in y.local_candidates:
                await x.add_remote_candidate(candidate)
            await x.add_remote_candidate(None)
            x.remote_username, x.remote_password = y.local_username, y.local_password
        await asyncio.wait_for(asyncio.gather(a.connect(), b.connect()), 10)
        assert b.selected_pair() is not None
        assert b.checks_dropped >= 1  # its first check, before a's arrived
        assert b.unvalidated_check_bytes == 0
    finally:
        await asyncio.gather(a.close(), b.close())


async def main() -> None:
    """Print the factors with the default budget and with none."""
    nodes = await start_nodes(1)
    try:
        for budget in (NodeConfig.check_amplification, UNBOUNDED):
            config = dataclasses.replace(callee_config(nodes[0]), check_amplification=budget)
            async with Node(config) as callee, Node(config_for(nodes[0])) as attacker:
                for name, amp in (await measure_both(callee, attacker)).items():
                    print(f"budget {budget}: {name} offer {amp.offer_bytes} B -> "
                          f"{amp.datagrams} checks, {amp.payload_bytes} B, x{amp.factor:.2f} "
                          f"(x{amp.wire_factor:.2f} with headers)")
    finally:
        await stop_nodes(nodes)


if __name__ == "__main__":
    asyncio.run(main())
