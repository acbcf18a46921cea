"""A lab peer that opens a secure channel and reports the probed QUIC packet size.

Proves path MTU probing (:mod:`tierlink.protocol.pmtu`) on real kernel links: run one peer per
namespace as ``python -m tierlink.lab.mtupeer --controlling|--controlled --host-address IP``.
Protocol on stdin/stdout, one JSON object per line:

1. the peer prints ``{"event": "offer", "ufrag", "pwd", "candidates": [sdp, ...],
   "cert_sha256": hex}`` (a fresh certificate per run);
2. the test writes the other peer's offer line to its stdin;
3. the peer connects ICE on host candidates (the controlling side is the QUIC client), opens
   the channel with ``probe_path_mtu=True`` (or not, ``--no-probe``) and waits ``--settle``
   seconds, long enough for every probe round (:data:`tierlink.protocol.pmtu.DEFAULT_ATTEMPTS` x
   :data:`tierlink.protocol.pmtu.DEFAULT_INTERVAL`) to be answered or given up;
4. both peers send one reliable message of ``--message-size`` random bytes at once and
   receive the other's, so each direction runs at its own probed size;
5. the peer prints ``{"event": "result", "ok", "probed_size", "final_size", "sent_sha256",
   "received_sha256", "received_len", "stats", "error"}`` and exits.

Everything is bounded by ``--timeout`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import sys
import threading
from typing import Any

from aioice import Candidate

from tierlink.protocol.pmtu import DEFAULT_ATTEMPTS, DEFAULT_INTERVAL
from tierlink.transport.aioice_adapter import IceConnection
from tierlink.transport.certs import LocalCertificate
from tierlink.transport.channel import ChannelSettings, SecureChannel, open_channel
from tierlink.wire.channel_frames import ChannelBinding

#: The lab's peers have no identities and no offer secret: the certificate pins alone
#: authenticate them, and every channel carries this fixed binding.
LAB_BINDING = ChannelBinding(hashlib.sha256(b"tierlink lab").digest(), bytes(16), bytes(64),
                             bytes(64))

#: Wait after the channel opened: every probe round, plus a margin for the last answers.
DEFAULT_SETTLE = DEFAULT_ATTEMPTS * DEFAULT_INTERVAL + 1.0


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def _read_line() -> str:
    """One stdin line, read on a daemon thread (a blocked read never holds up the exit)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[str] = loop.create_future()

    def deliver(line: str) -> None:
        if not fut.done():
            fut.set_result(line)

    def read() -> None:
        line = sys.stdin.readline()
        with contextlib.suppress(RuntimeError):  # the loop may be gone (timed out)
            loop.call_soon_threadsafe(deliver, line)

    threading.Thread(target=read, daemon=True).start()
    return await fut


async def _exchange(channel: SecureChannel, size: int, result: dict[str, Any]) -> None:
    """Send ``size`` random bytes and receive the peer's message at the same time."""
    payload = os.urandom(size)
    result["sent_sha256"] = hashlib.sha256(payload).hexdigest()
    send = asyncio.ensure_future(channel.send(payload))
    try:
        received = await channel.recv()
    finally:
        if not send.done():
            await asyncio.wait([send], timeout=5.0)
    if received is not None:
        result["received_sha256"] = hashlib.sha256(received).hexdigest()
        result["received_len"] = len(received)
    await send  # raises if the peer never acknowledged it


async def run_peer(args: argparse.Namespace, result: dict[str, Any]) -> None:
    """Gather, swap offers through the test, connect, open, settle, exchange; fills result."""
    conn = IceConnection(controlling=args.controlling, host_addresses=[args.host_address])
    cert = LocalCertificate.generate()
    channel: SecureChannel | None = None
    try:
        await conn.gather_candidates()
        _emit({"event": "offer", "ufrag": conn.local_username, "pwd": conn.local_password,
               "candidates": [c.to_sdp() for c in conn.local_candidates],
               "cert_sha256": cert.sha256.hex()})
        line = await _read_line()
        if not line:
            result["error"] = "no remote offer (stdin closed)"
            return
        offer = json.loads(line)
        conn.remote_username, conn.remote_password = offer["ufrag"], offer["pwd"]
        for sdp in offer["candidates"]:
            await conn.add_remote_candidate(Candidate.from_sdp(sdp))
        await conn.add_remote_candidate(None)
        await conn.connect()
        selected = conn.selected_pair()
        if selected is not None:
            result["pair"] = [f"{c.type} {c.host}:{c.port}" for c in selected]
        channel = await open_channel(
            conn, is_client=args.controlling, certificate=cert,
            peer_cert_sha256=bytes.fromhex(offer["cert_sha256"]), binding=LAB_BINDING,
            settings=ChannelSettings(probe_path_mtu=not args.no_probe),
        )
        await asyncio.sleep(args.settle)
        result["probed_size"] = channel.max_packet_size
        await _exchange(channel, args.message_size, result)
        result["final_size"] = channel.max_packet_size
        result["stats"] = channel.stats
        result["ok"] = True
        if not args.controlling:  # let the dialer close first: its last ack is not cut off
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(channel.wait_closed(), timeout=2.0)
    finally:
        if channel is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(channel.close(), timeout=3)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.close(), timeout=3)


async def _bounded(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"event": "result", "ok": False, "probed_size": None,
                              "final_size": None, "sent_sha256": None,
                              "received_sha256": None, "received_len": None, "pair": None,
                              "stats": None, "error": None}
    try:
        await asyncio.wait_for(run_peer(args, result), timeout=args.timeout)
    except Exception as exc:  # reported to the test, which shows it in its assertion
        result["ok"] = False
        result["error"] = f"{type(exc).__name__}: {exc}"
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tierlink.lab.mtupeer")
    role = parser.add_mutually_exclusive_group(required=True)
    role.add_argument("--controlling", action="store_true")
    role.add_argument("--controlled", action="store_true")
    parser.add_argument("--host-address", required=True)
    parser.add_argument("--message-size", type=int, default=200_000)
    parser.add_argument("--settle", type=float, default=DEFAULT_SETTLE)
    parser.add_argument("--no-probe", action="store_true", help="keep 1200-byte packets")
    parser.add_argument("--timeout", type=float, default=25.0)
    args = parser.parse_args(argv)
    result = asyncio.run(_bounded(args))
    _emit(result)


if __name__ == "__main__":
    main(sys.argv[1:])
