"""SecureChannel over real aioice connections on 127.0.0.1 (no mocks).

Both peers run in this process except in the peer-gone test, which kills a peer subprocess.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
import resource
import signal
import ssl
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aioice import Candidate
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from tests.channel_bindings import BINDING
from tests.ice_pairs import IcePair, connect_ice
from tests.waiting import eventually
from tierlink.errors import ConnectionClosed, HandshakeFailed, MessageTooLarge
from tierlink.transport.aioice_adapter import IceConnection
from tierlink.transport.certs import LocalCertificate
from tierlink.transport.channel import (
    DATAGRAM_MAX_PAYLOAD,
    DATAGRAM_SEND_BACKLOG,
    DEFAULT_WINDOW,
    ChannelSettings,
    SecureChannel,
    open_channel,
)


@pytest.fixture
async def ice() -> AsyncIterator[IcePair]:
    a, b = await connect_ice()
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


@pytest.fixture(scope="module")
def certs() -> tuple[LocalCertificate, LocalCertificate]:
    return LocalCertificate.generate(), LocalCertificate.generate()


async def open_pair(
    ice: IcePair, certs: tuple[LocalCertificate, LocalCertificate], **kw: Any
) -> tuple[SecureChannel, SecureChannel]:
    """Dialer channel on ice[0], callee channel on ice[1]; ``kw``: ChannelSettings fields
    and ``peer_limits`` for both, ``b_``-prefixed ones for the callee only."""
    ca, cb = certs
    ka = {k: v for k, v in kw.items() if not k.startswith("b_")}
    kb = {**ka, **{k[2:]: v for k, v in kw.items() if k.startswith("b_")}}

    def opening(ice: IceConnection, client: bool, kw: dict[str, Any]) -> Any:
        limits = kw.pop("peer_limits", None)
        cert, pin = (ca, cb.sha256) if client else (cb, ca.sha256)
        return open_channel(ice, binding=BINDING, is_client=client,
                            certificate=cert, peer_cert_sha256=pin,
                            settings=ChannelSettings(**kw), peer_limits=limits)

    return await asyncio.gather(opening(ice[0], True, ka), opening(ice[1], False, kb))


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- release ---------------------------------------------------------------------------------
async def test_a_closed_channel_is_freed_without_the_cycle_collector(
    ice: IcePair, certs: Any
) -> None:
    """Closing breaks every reference cycle through the channel, its protocol core, its
    pump and watchdog: a dial's garbage does not wait for (and lengthen) a full collection."""
    import gc
    import weakref

    a, b = await open_pair(ice, certs)
    assert await a.send(b"hi") == 1 and await b.recv(5) == b"hi"
    refs = [weakref.ref(c) for c in (a, b)]
    gc.collect()
    gc.disable()
    try:
        await a.close()
        await b.close()
        await a.wait_closed()
        await b.wait_closed()
        del a, b
        await asyncio.sleep(0)  # callbacks the close scheduled run and are dropped
        await asyncio.sleep(0)
        alive = [r() for r in refs if r() is not None]
        assert alive == [], f"still referenced (cycles?): {alive}"
    finally:
        gc.enable()


# -- handshake ------------------------------------------------------------------------------
async def test_handshake_and_round_trip(ice: IcePair, certs: Any) -> None:
    a, b = await open_pair(ice, certs)
    assert await b.recv(0) is None
    assert await b.recv(0.02) is None
    assert await a.send(b"hello") == 1
    assert await b.recv(5) == b"hello"
    assert await b.send(b"") == 1  # empty messages are messages
    assert await b.send(b"back") == 2
    assert await a.recv(5) == b""
    assert await a.recv(None) == b"back"
    assert a.stats["messages_sent"] == 1 and a.stats["bytes_sent"] == 5
    assert b.stats["messages_received"] == 1 and b.stats["bytes_received"] == 5
    assert a.max_message_size == 16 * 1024 * 1024
    with pytest.raises(MessageTooLarge, match=r"16777217 bytes exceeds .* 16777216 bytes"):
        await a.send(bytes(16 * 1024 * 1024 + 1))
    assert await a.send(b"still usable") == 2
    assert await b.recv(5) == b"still usable"
    waiting = asyncio.create_task(b.recv())
    await asyncio.sleep(0)  # the receiver is waiting
    await a.close()
    with pytest.raises(ConnectionClosed, match="peer closed the channel"):
        await asyncio.wait_for(waiting, 5)
    await b.wait_closed()
    assert ice[0].selected_pair() is not None  # the channel left the ICE connection open


@pytest.mark.parametrize("impostor", ["callee", "dialer"])
async def test_impostor_certificate_fails_on_both_sides(
    ice: IcePair, certs: Any, impostor: str
) -> None:
    """The impostor holds the ICE credentials and knows the victim's pin, not the key."""
    ca, cb = certs
    ci = LocalCertificate.generate()
    if impostor == "callee":  # dialer expects cb, the callee presents ci
        dialer = open_channel(ice[0], binding=BINDING, is_client=True,
                              certificate=ca, peer_cert_sha256=cb.sha256)
        callee = open_channel(ice[1], binding=BINDING, is_client=False,
                              certificate=ci, peer_cert_sha256=ca.sha256)
    else:  # callee expects ca, the dialer presents ci
        dialer = open_channel(ice[0], binding=BINDING, is_client=True,
                              certificate=ci, peer_cert_sha256=cb.sha256)
        callee = open_channel(ice[1], binding=BINDING, is_client=False,
                              certificate=cb, peer_cert_sha256=ca.sha256)
    results = await asyncio.gather(dialer, callee, return_exceptions=True)
    victim, fake = (results[0], results[1]) if impostor == "callee" else results[::-1]
    assert isinstance(victim, HandshakeFailed), results
    assert ci.sha256.hex() in str(victim) and "does not match" in str(victim)
    if isinstance(fake, SecureChannel):  # a dialer's side completes before the callee checks
        with pytest.raises(ConnectionClosed, match="certificate rejected"):
            await fake.send(b"never acknowledged")
    else:
        assert isinstance(fake, HandshakeFailed) and "certificate rejected" in str(fake), fake


@pytest.mark.parametrize("impostor", ["callee", "dialer"])
async def test_impostor_fails_with_signaled_limits_too(
    ice: IcePair, certs: Any, impostor: str
) -> None:
    """Limits known from signaling change nothing for the pin: the victim refuses; an
    impostor dialer may finish its side, but nothing it sends is ever acknowledged and its
    channel closes with the victim's reason."""
    ca, cb = certs
    ci = LocalCertificate.generate()
    limits = (16 * 1024 * 1024, DEFAULT_WINDOW)
    a_cert, b_cert = (ca, ci) if impostor == "callee" else (ci, cb)
    results = await asyncio.gather(
        open_channel(ice[0], binding=BINDING, is_client=True,
                     certificate=a_cert, peer_cert_sha256=cb.sha256,
                     peer_limits=limits),
        open_channel(ice[1], binding=BINDING, is_client=False,
                     certificate=b_cert, peer_cert_sha256=ca.sha256,
                     peer_limits=limits),
        return_exceptions=True,
    )
    victim, fake = (results[0], results[1]) if impostor == "callee" else results[::-1]
    assert isinstance(victim, HandshakeFailed) and "does not match" in str(victim)
    if isinstance(fake, SecureChannel):
        with pytest.raises(ConnectionClosed, match="certificate rejected"):
            await fake.send(b"never acknowledged")
    else:
        assert isinstance(fake, HandshakeFailed), fake


async def test_client_without_certificate_is_refused(ice: IcePair, certs: Any) -> None:
    """A plain aioquic client that answers the certificate request with no certificate."""
    client = QuicConnection(
        configuration=QuicConfiguration(
            is_client=True, alpn_protocols=["tierlink/1"], verify_mode=ssl.CERT_NONE
        )
    )
    addr = ("0.0.0.0", 0)

    def pump(data: bytes | None = None) -> None:
        if data is not None:
            client.receive_datagram(data, addr, now=time.monotonic())
        for out, _ in client.datagrams_to_send(now=time.monotonic()):
            ice[0].send_nowait(out)

    ice[0].set_datagram_handler(pump)
    client.connect(addr, now=time.monotonic())
    pump()
    ca, cb = certs
    with pytest.raises(HandshakeFailed, match="no certificate matching the pinned SHA-256"):
        await open_channel(ice[1], binding=BINDING, is_client=False, certificate=cb,
                           peer_cert_sha256=ca.sha256,
                           settings=ChannelSettings(handshake_timeout=5))


async def test_handshake_timeout_when_peer_never_answers(ice: IcePair, certs: Any) -> None:
    ca, cb = certs
    with pytest.raises(HandshakeFailed, match=r"within 0\.3 s"):
        await open_channel(ice[0], binding=BINDING, is_client=True, certificate=ca,
                           peer_cert_sha256=cb.sha256,
                           settings=ChannelSettings(handshake_timeout=0.3))


# -- reliable messages ----------------------------------------------------------------------
async def _transfer(
    a: SecureChannel, b: SecureChannel, sizes: list[int], concurrency: int, pauses: int
) -> tuple[list[int], float]:
    """Send messages of ``sizes`` (seeded content) while b reads with ``pauses`` stalls.

    At each stall the reader waits until b's queue is full and further messages wait
    unaccepted, then checks that no send() completed beyond what b queued.
    """
    n = len(sizes)
    cap = b.queue_capacity
    digests: list[bytes] = []
    ids: list[int] = []
    sem = asyncio.Semaphore(concurrency)
    stall_at = {n * k // (pauses + 1) for k in range(pauses + 1)}

    async def one(data: bytes) -> None:
        try:
            ids.append(await a.send(data))
        finally:
            sem.release()

    async def producer() -> None:
        tasks = []
        for i, size in enumerate(sizes):
            await sem.acquire()
            data = random.Random(i).randbytes(size)
            digests.append(hashlib.sha256(data).digest())
            tasks.append(asyncio.create_task(one(data)))
        await asyncio.gather(*tasks)

    async def reader() -> None:
        for i in range(n):
            if i in stall_at and n - i > cap:
                await eventually(lambda: b.queued_messages == cap and b.held_messages > 0,
                                 what="receiver full")
                await eventually(lambda i=i: len(ids) >= i + cap, what="acks of queued messages")
                assert len(ids) == i + cap, "a send() completed before the peer queued it"
            message = await b.recv(30)
            assert message is not None, f"message {i} missing"
            assert len(message) == sizes[i], f"message {i} has the wrong size"
            assert hashlib.sha256(message).digest() == digests[i], f"message {i} corrupted"

    start = time.perf_counter()
    await asyncio.gather(producer(), reader())
    return ids, time.perf_counter() - start


async def test_10000_random_messages_in_order_with_backpressure(ice: IcePair, certs: Any) -> None:
    window = 256 * 1024
    a, b = await open_pair(ice, certs, window=window)
    rng = random.Random(7)
    # Log-uniform 1 B..64 KiB: every order of magnitude is covered (mean ~5.9 KiB).
    sizes = [min(65536, int(math.exp(rng.uniform(0, math.log(65537))))) for _ in range(10_000)]
    sizes[:3] = [1, 65536, 1]
    ids, elapsed = await _transfer(a, b, sizes, concurrency=64, pauses=4)
    assert ids == list(range(1, len(sizes) + 1))
    assert b.stats["messages_received"] == len(sizes) and b.held_messages == 0
    assert 0 < a.peak_in_flight_bytes <= window
    total = sum(sizes)
    print(
        f"\n10k messages, {total / 2**20:.1f} MiB in {elapsed:.1f} s: "
        f"{len(sizes) / elapsed:.0f} msg/s, {total / elapsed / 2**20:.2f} MiB/s; "
        f"peak in flight {a.peak_in_flight_bytes} B (window {window}); "
        f"peak RSS {peak_rss_mib():.0f} MiB"
    )
    await a.close()


async def test_large_messages_with_slow_reader(ice: IcePair, certs: Any) -> None:
    mib = 1024 * 1024
    rng = random.Random(11)
    count = 20
    sizes = [int(math.exp(rng.uniform(math.log(mib), math.log(16 * mib)))) for _ in range(count)]
    sizes[:2] = [16 * mib, mib]
    a, b = await open_pair(ice, certs, queue_capacity=2)
    ids, elapsed = await _transfer(a, b, sizes, concurrency=3, pauses=2)
    assert ids == list(range(1, count + 1))
    assert b.stats["messages_received"] == count and b.held_messages == 0
    # One message larger than the window may be alone in flight, never more.
    assert a.peak_in_flight_bytes <= max(a.window, max(sizes))
    total = sum(sizes)
    print(
        f"\n{count} messages of 1..16 MiB, {total / mib:.0f} MiB in {elapsed:.1f} s: "
        f"{total / elapsed / mib:.2f} MiB/s; peak in flight {a.peak_in_flight_bytes / mib:.1f}"
        f" MiB; peak RSS {peak_rss_mib():.0f} MiB"
    )
    await a.close()


async def test_message_too_large_keeps_channel_usable(ice: IcePair, certs: Any) -> None:
    a, b = await open_pair(ice, certs, b_max_message_size=1000)
    assert a.max_message_size == b.max_message_size == 1000  # the smaller limit wins
    with pytest.raises(MessageTooLarge, match=r"1001 bytes exceeds .* 1000 bytes"):
        await a.send(b"x" * 1001)
    with pytest.raises(MessageTooLarge, match="of 1000 bytes"):
        await b.send(b"x" * 5000)
    assert await a.send(b"x" * 1000) == 1
    assert await b.recv(5) == b"x" * 1000
    assert await b.send(b"y") == 1
    assert await a.recv(5) == b"y"
    await a.close()


async def test_cancelled_waiting_send_is_not_sent(ice: IcePair, certs: Any) -> None:
    a, b = await open_pair(ice, certs, queue_capacity=1, window=10)
    await a.send(b"1")  # queued at b
    second = asyncio.create_task(a.send(b"2" * 10))  # in flight, not accepted: b is full
    third = asyncio.create_task(a.send(b"3"))  # waits for the window
    await eventually(lambda: a.backlog_messages == 1, what="third send waiting")
    third.cancel()
    with pytest.raises(asyncio.CancelledError):
        await third
    assert await b.recv(5) == b"1"
    assert await b.recv(5) == b"2" * 10
    assert await second == 2
    assert await a.send(b"4") == 3
    assert await b.recv(5) == b"4"
    await a.close()


async def test_signaled_limits_open_before_the_hello(ice: IcePair, certs: Any) -> None:
    """With the peer's limits known from signaling, each side opens at handshake completion;
    the HELLO that follows must repeat them."""
    default = (16 * 1024 * 1024, DEFAULT_WINDOW)
    a, b = await open_pair(ice, certs, peer_limits=default)
    assert a.max_message_size == default[0] and a.window == DEFAULT_WINDOW
    assert await a.send(b"early") == 1
    assert await b.recv(5) == b"early"
    await eventually(lambda: a.hello_received and b.hello_received, what="both HELLOs")
    assert not a.closed and not b.closed
    await a.close()


async def test_hello_disagreeing_with_signaled_limits_fails_the_handshake(
    ice: IcePair, certs: Any
) -> None:
    ca, cb = certs
    results = await asyncio.gather(
        open_channel(ice[0], binding=BINDING, is_client=True, certificate=ca,
                     peer_cert_sha256=cb.sha256, peer_limits=(1000, 5000)),
        open_channel(ice[1], binding=BINDING, is_client=False, certificate=cb,
                     peer_cert_sha256=ca.sha256),
        return_exceptions=True,
    )
    assert isinstance(results[0], HandshakeFailed), results
    assert "disagrees with the limits it signaled" in str(results[0])
    assert isinstance(results[1], HandshakeFailed | SecureChannel), results
    if isinstance(results[1], SecureChannel):
        await results[1].close()


async def test_submit_pipelines_in_order_with_backpressure(ice: IcePair, certs: Any) -> None:
    """submit(): futures instead of tasks; the window still holds messages back; a
    cancelled waiting message is skipped; every other one arrives once, in order."""
    a, b = await open_pair(ice, certs, queue_capacity=2, window=4096)
    futs = [a.submit(i.to_bytes(4, "big") + bytes(1020)) for i in range(40)]
    assert a.backlog_messages == 40 - 4  # 4 KiB window: four 1 KiB messages in flight
    futs[10].cancel()
    got = []
    while len(got) < 39:
        msg = await b.recv(5)
        assert msg is not None
        got.append(int.from_bytes(msg[:4], "big"))
    assert got == [i for i in range(40) if i != 10]
    ids = [await f for i, f in enumerate(futs) if i != 10]
    assert ids == list(range(1, 40))
    assert a.in_flight_bytes == 0 and a.backlog_messages == 0
    await a.close()
    with pytest.raises(ConnectionClosed):
        a.submit(b"late")


# -- datagrams ------------------------------------------------------------------------------
async def test_datagram_burst_without_reader_drops_oldest(ice: IcePair, certs: Any) -> None:
    a, b = await open_pair(ice, certs, queue_capacity=8)
    with pytest.raises(MessageTooLarge, match=f"limit of {DATAGRAM_MAX_PAYLOAD} bytes"):
        a.send_datagram(b"x" * (DATAGRAM_MAX_PAYLOAD + 1))
    burst = 200
    for seq in range(burst):
        a.send_datagram(seq.to_bytes(4, "big") + b"d" * (DATAGRAM_MAX_PAYLOAD - 4))
    assert a.stats["datagrams_sent"] == burst and a.stats["datagrams_send_dropped"] == 0
    # A reliable message sent once every datagram left marks the burst's end: on loopback
    # b has then handled every datagram that was not lost.
    await eventually(lambda: a.unsent_datagrams == 0, what="the burst on the wire")
    await a.send(b"end")
    received = b.stats["datagrams_received"]
    assert received > 8, f"only {received} of {burst} datagrams arrived"
    assert b.stats["datagrams_dropped"] == received - 8
    kept = [await b.recv_datagram(0) for _ in range(8)]
    seqs = [int.from_bytes(d[:4], "big") for d in kept if d is not None]
    assert len(seqs) == 8 and seqs == sorted(set(seqs))  # the newest eight, in order
    assert seqs[0] >= received - 8 and seqs[-1] < burst  # the k-th arrival has seq >= k - 1
    assert await b.recv_datagram(0) is None
    b.send_datagram(b"pong")
    assert await a.recv_datagram(5) == b"pong"
    # Sent faster than packets can leave (no yield): the sender keeps only the newest 256.
    for _ in range(DATAGRAM_SEND_BACKLOG + 100):
        a.send_datagram(b"z")
    assert a.stats["datagrams_send_dropped"] == 100
    await a.close()


# -- closing --------------------------------------------------------------------------------
async def test_close_wakes_every_waiter_on_both_sides(ice: IcePair, certs: Any) -> None:
    a, b = await open_pair(ice, certs, queue_capacity=1)
    tasks_before = len(asyncio.all_tasks())
    a_waiters = [asyncio.create_task(a.recv(None)), asyncio.create_task(a.recv_datagram(60))]
    await a.send(b"fills b")
    blocked_send = asyncio.create_task(a.send(b"waits for room"))
    await eventually(lambda: b.queued_messages == 1 and b.held_messages == 1, what="b full")
    b_waiters = [asyncio.create_task(b.recv_datagram()), asyncio.create_task(b.wait_closed())]
    await asyncio.sleep(0)  # every waiter is waiting
    assert not any(t.done() for t in [*a_waiters, *b_waiters, blocked_send])
    await a.close()
    assert a.closed
    for task in [*a_waiters, blocked_send]:
        with pytest.raises(ConnectionClosed, match="closed locally"):
            await asyncio.wait_for(task, 5)
    with pytest.raises(ConnectionClosed, match="peer closed the channel"):
        await asyncio.wait_for(b_waiters[0], 5)
    assert await asyncio.wait_for(b_waiters[1], 5) is None
    assert b.closed
    assert await b.recv(0) == b"fills b"  # what was queued stays readable ...
    with pytest.raises(ConnectionClosed):  # ... then the closed queue raises
        await b.recv(0)
    with pytest.raises(ConnectionClosed):
        await a.send(b"after close")
    with pytest.raises(ConnectionClosed):
        b.send_datagram(b"after close")
    assert len(asyncio.all_tasks()) <= tasks_before  # the channel runs no tasks of its own
    assert a.armed_timers == b.armed_timers == 0


PEER_SCRIPT = r"""
import asyncio, json, sys
from aioice import Candidate
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from tierlink.transport.certs import LocalCertificate
from tierlink.transport.channel import ChannelSettings, open_channel
from tierlink.transport.aioice_adapter import IceConnection
from tests.channel_bindings import BINDING

async def main():
    ice = IceConnection(controlling=False, host_addresses=["127.0.0.1"])
    await ice.gather_candidates()
    cert = LocalCertificate.generate()
    print(json.dumps({"ufrag": ice.local_username, "pwd": ice.local_password,
                      "candidates": [c.to_sdp() for c in ice.local_candidates],
                      "sha256": cert.sha256.hex()}), flush=True)
    peer = json.loads(await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline))
    for sdp in peer["candidates"]:
        await ice.add_remote_candidate(Candidate.from_sdp(sdp))
    await ice.add_remote_candidate(None)
    ice.remote_username, ice.remote_password = peer["ufrag"], peer["pwd"]
    await ice.connect()
    channel = await open_channel(ice, binding=BINDING, is_client=False, certificate=cert,
                                 peer_cert_sha256=bytes.fromhex(peer["sha256"]),
                                 settings=ChannelSettings(liveness_timeout=peer["liveness"]))
    print("ready", flush=True)
    while True:
        await channel.send(await channel.recv())

asyncio.run(main())
"""


async def test_peer_process_killed_wakes_receivers(certs: Any) -> None:
    liveness = 1.5
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        PEER_SCRIPT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    ice = IceConnection(controlling=True, host_addresses=["127.0.0.1"])
    try:
        assert proc.stdin is not None and proc.stdout is not None
        peer = json.loads(await asyncio.wait_for(proc.stdout.readline(), 20))
        await ice.gather_candidates()
        ca = certs[0]
        proc.stdin.write(
            json.dumps(
                {
                    "ufrag": ice.local_username,
                    "pwd": ice.local_password,
                    "candidates": [c.to_sdp() for c in ice.local_candidates],
                    "sha256": ca.sha256.hex(),
                    "liveness": liveness,
                }
            ).encode()
            + b"\n"
        )
        await proc.stdin.drain()
        for sdp in peer["candidates"]:
            await ice.add_remote_candidate(Candidate.from_sdp(sdp))
        await ice.add_remote_candidate(None)
        ice.remote_username, ice.remote_password = peer["ufrag"], peer["pwd"]
        await asyncio.wait_for(ice.connect(), 20)
        channel = await open_channel(
            ice,
            binding=BINDING,
            is_client=True,
            certificate=ca,
            peer_cert_sha256=bytes.fromhex(peer["sha256"]),
            settings=ChannelSettings(liveness_timeout=liveness),
        )
        assert await asyncio.wait_for(proc.stdout.readline(), 20) == b"ready\n"
        await channel.send(b"echo?")
        assert await channel.recv(10) == b"echo?"
        waiters = [
            asyncio.create_task(channel.recv()),
            asyncio.create_task(channel.recv_datagram()),
        ]
        # Idle for more than two liveness periods (a keep-alive at most every liveness/3
        # seconds): the pings keep both sides up, and the channel still echoes.
        await eventually(lambda: channel.keepalives_sent >= 7, what="keep-alive pings")
        assert not channel.closed
        await channel.send(b"still there?")
        assert await asyncio.wait_for(waiters[0], 10) == b"still there?"
        waiters[0] = asyncio.create_task(channel.recv())
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        killed = time.perf_counter()
        for task in waiters:  # bounded so a missing watchdog fails instead of hanging
            with pytest.raises(ConnectionClosed, match="liveness timeout"):
                await asyncio.wait_for(task, liveness * 4)
        print(
            f"\nreceivers woke {time.perf_counter() - killed:.2f} s after the kill "
            f"(liveness_timeout {liveness} s)"
        )
        assert channel.closed
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await ice.close()


async def test_peer_ice_closed_abruptly_wakes_both_sides(ice: IcePair, certs: Any) -> None:
    a, b = await open_pair(ice, certs, liveness_timeout=1.0)
    a_waiter = asyncio.create_task(a.recv())
    b_waiter = asyncio.create_task(b.recv())
    await ice[1].close()  # b's path vanishes without a CONNECTION_CLOSE reaching a
    with pytest.raises(ConnectionClosed, match="ICE path lost"):
        await asyncio.wait_for(b_waiter, 4.0)  # at b's next keep-alive at the latest
    with pytest.raises(ConnectionClosed, match="liveness timeout"):
        await asyncio.wait_for(a_waiter, 4.0)


# -- confidentiality ------------------------------------------------------------------------
async def test_wire_carries_no_plaintext(ice: IcePair, certs: Any) -> None:
    wire: list[bytes] = []
    for conn in ice:  # tap every datagram both ICE connections hand to the channel
        inner = conn.data_received

        def tap(data: bytes, component: int, inner: Any = inner) -> None:
            wire.append(bytes(data))
            inner(data, component)

        conn.data_received = tap  # type: ignore[method-assign]
    a, b = await open_pair(ice, certs)
    marker = b"PLAINTEXT-MARKER"
    await a.send(marker * 200)
    assert await b.recv(5) == marker * 200
    await b.send(marker)
    assert await a.recv(5) == marker
    a.send_datagram(marker * 10)
    assert await b.recv_datagram(5) == marker * 10
    captured = b"".join(wire)
    assert len(wire) > 4 and len(captured) > len(marker) * 211
    assert marker not in captured and marker[:8] not in captured
    await a.close()
