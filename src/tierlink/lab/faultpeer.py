"""Peers of a fault run (:mod:`tierlink.lab.faultrun`): a receiver and a message stream.

Run in a LAN namespace as ``python -m tierlink.lab.faultpeer receiver|sender ...``; every
stdout line is one JSON object.

* ``receiver``: a Node whose identity lives in ``--data-dir`` (so a restart after SIGKILL is
  the same peer with the same outbox and delivered log). Prints ``{"event": "ready",
  "fingerprint"}`` once published. Every message it handles (tiered ones from
  ``node.messages()``, and the messages of every incoming ``Connection``) is appended to
  ``--log`` as ``{"seq", "api", "tier", "t", "sent_at"}`` (``t``: when handled, ``sent_at``:
  when the sender handed it to the API; CLOCK_MONOTONIC, shared by every process of the
  machine) and fsync'ed before the loop awaits again. The acknowledgement of a
  tiered message goes out from another task, which runs only after that await: so a message
  is acknowledged only after it was handled (recorded durably). When its stdin closes it
  prints ``{"event": "stats", ...}`` (offers answered and refused, duplicates suppressed)
  and exits.
* ``sender --api send|connection``: ``--count`` messages at ``--rate`` per second, through
  ``node.send`` (then ``wait_delivered`` for each, until none came for ``--settle-idle``
  seconds or ``--settle`` seconds passed) or through one ``Connection`` (``send`` bounded by
  ``--send-timeout``; a send that raises or times out is ``failed`` and closes that
  connection; a new one is dialed in the background while due messages fail at once). Prints
  ``{"event": "midway"}`` after message ``--fault-at`` (the runner injects the fault then)
  and finally ``{"event": "result", "sent", "failed", "path_before", "path_after",
  "tier_after", "redials", "max_packet_size", "migration", ...}`` (``sent``/``failed``:
  lists of sequence numbers; ``max_packet_size``: the QUIC packet size the channel settled
  on; ``migration``: the path migration counters of the node and of the last connection;
  ``path_changes``: ICE restarts that moved a connection to a new pair).
  A send that times out while an ICE restart of the connection's path runs is ``failed``
  but keeps the connection, which continues on the new path.

``--clock-offset S`` shifts this process's wall clock (``time.time``, which every record,
envelope and expiry time of tierlink reads) by S seconds: the lab's injectable clock.
tierlink's log goes to stderr at ``--log-level`` (default info).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from pathlib import Path
from typing import Any

from tierlink.lab.faultmsg import DeliveryLog, shift_clock
from tierlink.lab.faultstream import connection_stream, emit_line, send_stream


def node_config(args: argparse.Namespace, data_dir: Path) -> Any:
    """The Node's configuration: identity kept in ``data_dir`` (created on first start)."""
    from tierlink.hostport import parse_hostport
    from tierlink.identity import Identity
    from tierlink.node import NodeConfig, TurnServer

    id_file = data_dir / "identity.json"
    if id_file.exists():
        identity = Identity.load(id_file)
    else:
        data_dir.mkdir(parents=True, exist_ok=True)
        identity = Identity.generate()
        identity.save(id_file)
    turn = []
    if args.turn:
        host, port = parse_hostport(args.turn)
        turn = [TurnServer(host, port, args.turn_user, args.turn_password)]
    return NodeConfig(
        identity=identity, dht_proxy=args.dht,
        stun_servers=[parse_hostport(args.stun)] if args.stun else [],
        turn_servers=turn, relay_only=args.relay_only, ice_timeout=args.ice_timeout,
        data_dir=data_dir, send_budget=args.ice_timeout + 4.0,
        offline_reput_interval=args.reput_interval, liveness_timeout=args.liveness_timeout,
    )


START_ATTEMPTS = 3


async def start_node(args: argparse.Namespace) -> Any:
    """A started Node; a start that fails on the DHT proxy (publishing the record) is tried
    again, up to :data:`START_ATTEMPTS` times, as a service manager would."""
    from tierlink.errors import DhtUnavailable
    from tierlink.node import Node

    for attempt in range(1, START_ATTEMPTS + 1):
        node = Node(node_config(args, args.data_dir))
        try:
            await node.start()
            return node
        except DhtUnavailable as exc:
            await node.close()
            print(f"start attempt {attempt}: {exc} ({exc.__context__!r})", file=sys.stderr,
                  flush=True)
            if attempt == START_ATTEMPTS:
                raise
            await asyncio.sleep(1.0)
    raise AssertionError("unreachable")


# -- receiver -------------------------------------------------------------------------------
async def receiver(args: argparse.Namespace) -> None:
    log = DeliveryLog(args.log)
    async with await start_node(args) as node:
        tasks: set[asyncio.Task[None]] = set()

        async def consume() -> None:
            async for msg in node.messages():
                log.record(msg.payload, "send", msg.tier)  # before the ack task can run

        async def read(conn: Any) -> None:
            with contextlib.suppress(Exception):
                while True:
                    data = await conn.recv()
                    if data:
                        log.record(data, "connection", conn.tier)

        async def serve() -> None:
            async for conn in node.incoming():
                task = asyncio.get_running_loop().create_task(read(conn))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

        workers = [asyncio.ensure_future(consume()), asyncio.ensure_future(serve())]
        emit_line({"event": "ready", "fingerprint": node.fingerprint})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(_until_stdin_eof(), timeout=args.max_seconds)
        await asyncio.sleep(0.5)  # the last acknowledgements go out
        for task in [*workers, *tasks]:
            task.cancel()
        await asyncio.gather(*workers, *tasks, return_exceptions=True)
        stats = node.stats()
        emit_line({"event": "stats", **{k: stats.get(k) for k in (
            "offer_rejections", "offers_answered", "duplicates_suppressed",
            "record_rejections", "loop_restarts")}})
    log.close()


async def _until_stdin_eof() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while await reader.read(4096):
            pass
    finally:
        transport.close()


async def sender(args: argparse.Namespace) -> None:
    async with await start_node(args) as node:
        emit_line({"event": "ready", "fingerprint": node.fingerprint})
        stream = send_stream if args.api == "send" else connection_stream
        result = await stream(node, args)
        changes = result["migration"]["node"]["path_changes"]
        emit_line({"event": "result", "api": args.api, "path_changes": changes, **result})


async def record_watch(args: argparse.Namespace) -> None:
    """Poll the DHT for a peer's record until it is there (or ``--timeout`` passes); prints
    ``{"event": "record", "found_ms"}`` (None: not found)."""
    from tierlink.dht import DhtClient
    from tierlink.errors import TierlinkError
    from tierlink.wire.dhtkeys import ice_candidates_key

    loop = asyncio.get_running_loop()
    start = loop.time()
    found = None
    async with DhtClient(args.dht) as dht:
        while loop.time() - start < args.timeout:
            with contextlib.suppress(TierlinkError):
                if await dht.get(ice_candidates_key(args.fingerprint)):
                    found = round((loop.time() - start) * 1000, 1)
                    break
            await asyncio.sleep(0.5)
    emit_line({"event": "record", "found_ms": found})


# -- entry point ----------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tierlink.lab.faultpeer")
    sub = parser.add_subparsers(dest="role", required=True)
    watch = sub.add_parser("record")
    watch.add_argument("--dht", required=True)
    watch.add_argument("--fingerprint", required=True)
    watch.add_argument("--timeout", type=float, default=60.0)
    for name in ("receiver", "sender"):
        p = sub.add_parser(name)
        p.add_argument("--dht", required=True, help="DHT REST proxy URL")
        p.add_argument("--data-dir", type=Path, required=True, help="identity and outbox")
        p.add_argument("--stun", default=None, help="ip:port")
        p.add_argument("--turn", default=None, help="ip:port")
        p.add_argument("--turn-user", default="lab")
        p.add_argument("--turn-password", default="labpass")
        p.add_argument("--relay-only", action="store_true")
        p.add_argument("--ice-timeout", type=float, default=8.0)
        p.add_argument("--liveness-timeout", type=float, default=15.0)
        p.add_argument("--reput-interval", type=float, default=5.0)
        p.add_argument("--clock-offset", type=float, default=0.0, help="seconds")
        p.add_argument("--log-level", default="info", help="tierlink's logging to stderr")
        if name == "receiver":
            p.add_argument("--log", type=Path, required=True, help="handled messages")
            p.add_argument("--max-seconds", type=float, default=600.0)
        else:
            p.add_argument("--to", required=True, help="receiver fingerprint")
            p.add_argument("--api", choices=("send", "connection"), required=True)
            p.add_argument("--count", type=int, default=160)
            p.add_argument("--rate", type=float, default=20.0)
            p.add_argument("--fault-at", type=int, default=60)
            p.add_argument("--send-timeout", type=float, default=5.0)
            p.add_argument("--settle", type=float, default=180.0,
                           help="at most this long for acknowledgements after the stream")
            p.add_argument("--settle-idle", type=float, default=20.0,
                           help="settled once no acknowledgement came for this long")
            p.add_argument("--payload-size", type=int, default=0, help="pad messages to it")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.role == "record":
        asyncio.run(record_watch(args))
        return
    shift_clock(args.clock_offset)
    logging.basicConfig(stream=sys.stderr, level=getattr(logging, args.log_level.upper()),
                        format="%(created).3f %(name)s %(levelname)s %(message)s")
    asyncio.run(receiver(args) if args.role == "receiver" else sender(args))


if __name__ == "__main__":
    main(sys.argv[1:])
