"""Attacks on the channel binding: a QUIC channel opens only for the dial that set it up.

Each side's HELLO carries an HMAC, under a key derived from the offer secret, over its role,
the session id, both fingerprints and the connection's TLS exporter. The attacks: a peer
that proves another session, swapped fingerprints, a reflected or replayed proof, or no
proof at all; and, end to end, the relay attack (M relays A's dial into its own dial of B,
so that A and B handshake with each other, each believing it talks to M).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import pytest

from tests.channel_bindings import BINDING
from tests.ice_pairs import connect_ice
from tests.nodes import config_for
from tests.relay_attacker import RelayAttacker, relaying
from tests.waiting import eventually
from tierlink.dht import DhtClient
from tierlink.errors import ConnectionClosed, HandshakeFailed
from tierlink.identity import Identity
from tierlink.node import Node
from tierlink.protocol import channel_events as ev
from tierlink.protocol.channel import ChannelProtocol
from tierlink.transport.certs import LocalCertificate
from tierlink.transport.channel import ChannelSettings, PreparedChannel, open_channel
from tierlink.transport.quic_setup import QUIC_ADDR, new_server, quic_configuration
from tierlink.wire.channel_frames import (
    PROOF_SIZE,
    PROTOCOL_VERSION,
    ChannelBinding,
    Hello,
    channel_binding,
    encode_hello,
    encode_length,
)
from tierlink.wire.signaling import OfferSecret

EXPORTER = bytes(range(64, 96))
OTHER_EXPORTER = bytes(range(96, 128))
#: The relay's own dial of B: another key and session, M as the dialer.
RELAYED = ChannelBinding(bytes(range(1, 33)), bytes(range(1, 17)), b"\xcc" * 64, BINDING.callee)


def core(is_client: bool, binding: ChannelBinding = BINDING) -> ChannelProtocol:
    return ChannelProtocol(is_client=is_client, binding=binding, max_message_size=1000,
                           window=4000, queue_capacity=4)


def proof_of(case: str, peer_is_dialer: bool) -> bytes:
    """The proof a hostile peer on the ``peer_is_dialer`` side puts in its HELLO."""
    b = BINDING
    forged = {
        "another session's key": lambda: dataclasses.replace(b, key=RELAYED.key),
        "another session id": lambda: dataclasses.replace(b, session_id=RELAYED.session_id),
        "swapped fingerprints": lambda: dataclasses.replace(b, dialer=b.callee, callee=b.dialer),
        "the relay's dial": lambda: RELAYED,
    }
    if case in forged:
        return forged[case]().proof(peer_is_dialer, EXPORTER)
    if case == "reflected role":  # the victim's own proof, sent back to it
        return b.proof(not peer_is_dialer, EXPORTER)
    if case == "another connection":  # replayed from a connection with another exporter
        return b.proof(peer_is_dialer, OTHER_EXPORTER)
    if case == "zero proof":
        return bytes(PROOF_SIZE)
    assert case == "valid"
    return b.proof(peer_is_dialer, EXPORTER)


ATTACKS = [
    "another session's key", "another session id", "swapped fingerprints", "the relay's dial",
    "reflected role", "another connection", "zero proof",
]


def peer_writes(victim_is_client: bool, case: str) -> list[ev.StreamDataReceived]:
    """A hostile peer's message stream (a message first) and control stream (its HELLO)."""
    control, messages = (3, 7) if victim_is_client else (2, 6)
    hello = Hello(PROTOCOL_VERSION, 1000, 4000, proof_of(case, not victim_is_client))
    return [
        ev.StreamDataReceived(messages, b"M" + encode_length(6) + b"secret"),
        ev.StreamDataReceived(control, b"C" + encode_hello(hello)),
    ]


def handshake(side: ChannelProtocol) -> None:
    side.handle_event(ev.KeysReady(EXPORTER))
    side.handle_event(ev.HandshakeCompleted())


# -- sans-IO: the channel core -----------------------------------------------------------------
@pytest.mark.parametrize("victim_is_client", [True, False], ids=["dialer", "callee"])
@pytest.mark.parametrize("case", ATTACKS)
def test_a_hello_that_does_not_prove_this_dial_fails_the_handshake(
    case: str, victim_is_client: bool
) -> None:
    victim = core(victim_is_client)
    handshake(victim)
    victim.pop_commands()  # our own greeting
    for event in peer_writes(victim_is_client, case):
        victim.handle_event(event)
    events = victim.pop_events()
    assert not any(isinstance(e, ev.MessageReceived | ev.ChannelOpened) for e in events), events
    assert isinstance(events[-1], ev.ChannelClosed) and "channel binding failed" in (
        events[-1].reason
    )
    close = victim.pop_commands()[-1]
    assert isinstance(close, ev.CloseConnection) and close.error_code == ev.ERROR_HANDSHAKE
    assert victim.closed and not victim.opened and victim.stats["messages_received"] == 0
    with pytest.raises(ConnectionClosed, match="handshake failed"):
        victim.send_message(b"meant for the peer the dial named")


@pytest.mark.parametrize("victim_is_client", [True, False], ids=["dialer", "callee"])
def test_the_valid_proof_opens_and_hands_over_what_waited_for_it(victim_is_client: bool) -> None:
    """The control case: the same writes with the right proof open the channel."""
    victim = core(victim_is_client)
    handshake(victim)
    writes = peer_writes(victim_is_client, "valid")
    victim.handle_event(writes[0])
    assert victim.pop_events() == [] and victim.held_messages == 1  # held until proven
    victim.handle_event(ev.DatagramReceived(b"unproven"))  # dropped: nobody proven yet
    victim.handle_event(writes[1])
    assert victim.pop_events() == [ev.ChannelOpened(1000, 4000), ev.MessageReceived(1, b"secret")]
    assert victim.stats["datagrams_received"] == 0


@pytest.mark.parametrize("victim_is_client", [True, False], ids=["dialer", "callee"])
def test_no_hello_never_opens_and_delivers_nothing(victim_is_client: bool) -> None:
    victim = core(victim_is_client)
    handshake(victim)
    victim.handle_event(peer_writes(victim_is_client, "valid")[0])  # messages, no HELLO
    victim.handle_event(ev.DatagramReceived(b"unproven"))
    assert victim.pop_events() == [] and not victim.opened
    with pytest.raises(ConnectionClosed, match="not open yet"):
        victim.send_message(b"meant for the peer the dial named")


def test_hello_before_the_keys_is_a_protocol_error() -> None:
    victim = core(False)
    victim.handle_event(peer_writes(False, "valid")[1])
    events = victim.pop_events()
    assert isinstance(events[0], ev.ProtocolViolation) and "before the connection's keys" in (
        events[0].detail
    )


def test_binding_key_is_derived_from_the_offer_secret_under_its_own_label() -> None:
    a, b = Identity.generate(), Identity.generate()
    secret = OfferSecret(bytes(range(32)), bytes(16), a.fingerprint, b.fingerprint)
    binding = channel_binding(secret)
    assert binding.key != secret.key and len(binding.key) == 32
    assert (binding.dialer.hex(), binding.callee.hex()) == (a.fingerprint, b.fingerprint)
    other = channel_binding(dataclasses.replace(secret, key=bytes(32)))
    assert other.key != binding.key
    assert binding.proof(True, EXPORTER) != binding.proof(False, EXPORTER)


# -- over a real QUIC connection ------------------------------------------------------------------
CALLEE_BINDINGS = {
    "the relay's dial": RELAYED,
    "another session id": dataclasses.replace(BINDING, session_id=RELAYED.session_id),
    "swapped fingerprints": dataclasses.replace(BINDING, dialer=BINDING.callee,
                                                callee=BINDING.dialer),
}


@pytest.mark.parametrize("case", sorted(CALLEE_BINDINGS))
async def test_channels_bound_to_different_dials_fail_on_both_sides(case: str) -> None:
    ca, cb = LocalCertificate.generate(), LocalCertificate.generate()
    a, b = await connect_ice()
    try:
        results = await asyncio.gather(
            open_channel(a, binding=BINDING, is_client=True, certificate=ca,
                         peer_cert_sha256=cb.sha256),
            open_channel(b, binding=CALLEE_BINDINGS[case], is_client=False, certificate=cb,
                         peer_cert_sha256=ca.sha256),
            return_exceptions=True,
        )
        assert all(isinstance(r, HandshakeFailed) for r in results), results
        assert "channel binding failed" in str(results[0])
    finally:
        await a.close()
        await b.close()


async def test_prepared_dialer_refuses_a_reply_bound_to_another_dial() -> None:
    """The node's path: the callee's proof arrives with its reply in the answer, so the
    dialer refuses before sending anything on the path but its Finished and HELLO."""
    ca, cb = LocalCertificate.generate(), LocalCertificate.generate()
    client = PreparedChannel(certificate=ca)
    server = PreparedChannel(certificate=cb, is_client=False)
    assert server.receive_first_flight(client.first_flight(), ca.sha256, RELAYED)
    client.receive_reply(server.reply(), cb.sha256)
    a, b = await connect_ice()
    try:
        with pytest.raises(HandshakeFailed, match="channel binding failed"):
            await client.open(a, cb.sha256, BINDING)
    finally:
        await a.close()
        await b.close()


async def test_a_callee_that_sends_messages_but_no_proof_never_opens() -> None:
    """A hostile callee completes TLS with the pinned certificate and writes a message
    stream, but no HELLO: the dialer's open times out, nothing reaches it."""
    ca, cb = LocalCertificate.generate(), LocalCertificate.generate()
    a, b = await connect_ice()
    config = quic_configuration(is_client=False, certificate=cb, liveness_timeout=5.0,
                                window=1 << 20)
    server: list[Any] = []
    wrote: list[bool] = []

    def hostile(data: bytes) -> None:
        now = time.monotonic()
        if not server:
            server.append(new_server(config, data, ca.sha256))
        quic = server[0]
        quic.receive_datagram(data, QUIC_ADDR, now=now)
        if quic.exporter_secret is not None and not wrote:
            quic.send_stream_data(7, b"M" + encode_length(6) + b"secret")
            wrote.append(True)
        for out, _addr in quic.datagrams_to_send(now=now):
            b.send_nowait(out)

    b.set_datagram_handler(hostile)
    try:
        with pytest.raises(HandshakeFailed, match=r"within 1 s"):
            await open_channel(a, binding=BINDING, is_client=True, certificate=ca,
                               peer_cert_sha256=cb.sha256,
                               settings=ChannelSettings(handshake_timeout=1.0))
        assert server and server[0].exporter_secret is not None  # TLS itself went through
    finally:
        await a.close()
        await b.close()


# -- end to end: the relay attack ------------------------------------------------------------------
async def relay_attack(dht_cluster: Any) -> tuple[Node, Node, RelayAttacker, Any]:
    """A dials M while M relays into a dial of B; returns A, B, M and A's dial outcome."""
    a = Node(config_for(dht_cluster[0], handshake_timeout=5.0))
    b = Node(config_for(dht_cluster[1], handshake_timeout=5.0))
    m = Identity.generate()
    await b.start()
    await a.start()
    async with DhtClient(dht_cluster[2].proxy_url) as dht:
        attacker = RelayAttacker(dht, m, b.fingerprint, b.identity.kem_public_key)
        async with relaying(attacker):
            try:
                outcome: Any = await a.connect(m.fingerprint, timeout=10.0)
            except HandshakeFailed as exc:
                outcome = exc
    return a, b, attacker, outcome


async def test_relay_attack_fails_the_dial_and_delivers_nothing(dht_cluster: Any) -> None:
    a, b, attacker, outcome = await relay_attack(dht_cluster)
    async with a, b:
        assert attacker.relayed == 1  # the signaling got through: A and B handshook
        assert isinstance(outcome, HandshakeFailed), outcome
        assert "channel binding failed" in str(outcome)
        assert a.stats()["handshakes_failed"] == 1 and a.stats()["dials_failed"] == 1
        await eventually(lambda: b.stats()["handshakes_failed"] == 1,
                         what="B's side of the relayed handshake failed")
        assert await b.accept(timeout=0) is None  # B's user got no connection
        assert not a.connections and not b.connections


async def test_relay_attack_succeeds_without_the_proof_check(
    dht_cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why the check exists: with every proof accepted, A's message meant for M reaches
    B, which takes it for a message from M."""
    monkeypatch.setattr(ChannelBinding, "verify", lambda self, *args: True)
    a, b, attacker, outcome = await relay_attack(dht_cluster)
    async with a, b:
        assert attacker.relayed == 1
        assert not isinstance(outcome, BaseException), outcome
        await outcome.send(b"for M only")
        incoming = await b.accept(timeout=10)
        assert incoming is not None and incoming.remote_fingerprint == attacker.fingerprint
        assert await incoming.recv(5) == b"for M only"
        await outcome.close()
        await incoming.close()
