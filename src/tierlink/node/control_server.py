"""The control socket's server: a running :class:`~tierlink.node.node.Node` answers the
``tierlink send``, ``outbox`` (and ``outbox remove``) and ``lookup`` commands of its user (protocol:
:mod:`tierlink.control`).

One node per identity serves the socket: :meth:`ControlServer.claim` takes an exclusive
``flock`` on ``<socket>.lock`` (the kernel drops it when the process dies), so a second node
of the identity is refused before it joins the DHT, and a socket file left by a dead node is
recognised (nothing accepts on it) and replaced. Every bad request is answered with an error
and counted in :attr:`ControlServer.rejections`; none ends the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import socket
import stat
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from tierlink.control import (
    MAX_REQUEST,
    ControlError,
    LookupRequest,
    OutboxRequest,
    RemoveRequest,
    Request,
    SendRequest,
    check_peer,
    error_reply,
    make_private_dir,
    parse_request,
    record_json,
    reply_line,
)
from tierlink.errors import TierlinkError
from tierlink.node.node import Node
from tierlink.node.tasks import Supervisor
from tierlink.offline.outbox import UNDELIVERED

log = logging.getLogger(__name__)

#: Clients served at once; one more is answered ``busy``.
MAX_CLIENTS = 16
#: A client that sends no complete request for this long is disconnected (seconds).
IDLE_TIMEOUT_S = 60.0

#: Called with the recipient and the result of each message a send request delivered or queued.
OnSent = Callable[[str, dict[str, Any]], None]


async def send_messages(
    node: Node, to: str, payloads: Sequence[bytes], wait: float
) -> list[dict[str, Any]]:
    """Send as ``tierlink send`` does: store every message, then wait until each is delivered
    or queued in the DHT or a mailbox (up to the node's send budget + ``wait`` + 10 s) and a
    queued one up to ``wait`` more seconds for its acknowledgement. One result per message:
    ``message_id`` (hex), ``bytes``, ``state`` (``delivered``, ``queued``, or the outbox state, e.g.
    ``pending``), ``tier`` (the tier that delivered it, else None) and, when a mailbox of the
    recipient holds it, ``mailboxes`` (their fingerprints)."""
    messenger = node.messenger
    if messenger is None:
        raise TierlinkError("node is not running")
    mids = [await node.send(to, payload) for payload in payloads]
    results: list[dict[str, Any]] = []
    for payload, mid in zip(payloads, mids, strict=True):
        state = await messenger.wait_settled(mid, node.config.send_budget + wait + 10)
        tier: str | None = None
        if state == "delivered":
            delivery = await node.wait_delivered(mid, 0.01)
            tier = delivery.tier if delivery else "?"
        elif state in ("queued", "in_mailbox"):
            delivery = await node.wait_delivered(mid, wait)
            if delivery is not None:
                state, tier = "delivered", delivery.tier
        result: dict[str, Any] = {"message_id": mid.hex(), "bytes": len(payload),
                                  "state": state, "tier": tier}
        holding = messenger.mailboxes_holding(mid)
        if holding:
            result["mailboxes"] = holding
        results.append(result)
    return results


class ControlServer:
    """The control socket of one node: ``async with ControlServer(path) as control`` claims
    it (refusing a second node of the identity), :meth:`serve` answers on it, leaving the
    block closes and removes it. ``uid``: the only user served (default: our own)."""

    def __init__(self, path: Path, *, uid: int | None = None) -> None:
        self.path = path
        self.uid = os.geteuid() if uid is None else uid
        self.requests: Counter[str] = Counter()
        """Requests answered, by op."""
        self.rejections: Counter[str] = Counter()
        """Requests and clients refused, by reason."""
        self.stale_replaced = 0
        """Socket files of dead nodes removed by :meth:`claim`."""
        self._lock_fd: int | None = None
        self._server: asyncio.AbstractServer | None = None
        self._inode: int | None = None
        self._node: Node | None = None
        self._on_sent: OnSent | None = None
        self._tasks = Supervisor("control")
        self._clients = 0

    async def __aenter__(self) -> ControlServer:
        self.claim()
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- life ----------------------------------------------------------------------------
    def claim(self) -> None:
        """Take the identity's control socket: refuse if a node of it runs, remove the
        socket file a dead node left."""
        if self._lock_fd is not None:
            return
        make_private_dir(self.path.parent)
        lock = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._remove_stale()
        except BlockingIOError:
            os.close(fd)
            raise self._already_running() from None
        except BaseException:
            os.close(fd)
            raise
        self._lock_fd = fd

    def _already_running(self) -> ControlError:
        return ControlError("already_running", f"a node of this identity already runs "
                                               f"(control socket {self.path})")

    def _remove_stale(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise ControlError("not_a_socket", f"{self.path} exists and is not a socket; "
                                               "remove it")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            try:
                probe.connect(os.fspath(self.path))
            except OSError as exc:
                if exc.errno != errno.ECONNREFUSED:
                    raise
            else:  # a node that holds no lock answers: leave it alone
                raise self._already_running()
        self.path.unlink()
        self.stale_replaced += 1
        log.info("removed the stale control socket %s", self.path)

    async def serve(self, node: Node, on_sent: OnSent | None = None) -> None:
        """Answer requests on the socket (mode 0600) for ``node`` from now until
        :meth:`close`. ``on_sent`` hears the result of each message sent by request."""
        self.claim()
        self._node, self._on_sent = node, on_sent
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(os.fspath(self.path))
            os.chmod(self.path, 0o600)  # the directory (0700) shuts others out meanwhile
            self._inode = os.lstat(self.path).st_ino
            sock.listen(MAX_CLIENTS)
            self._server = await asyncio.start_unix_server(
                self._accepted, sock=sock, limit=MAX_REQUEST
            )
        except BaseException:
            sock.close()
            raise

    async def close(self) -> None:
        """Stop answering, end every client's connection, remove the socket, unlock."""
        if self._server is not None:
            self._server.close()
        await self._tasks.close()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        if self._inode is not None:
            with contextlib.suppress(FileNotFoundError):
                if os.lstat(self.path).st_ino == self._inode:
                    self.path.unlink()
            self._inode = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def stats(self) -> dict[str, Any]:
        """The control counters (part of the ``stats`` reply)."""
        return {"socket": str(self.path), "requests": dict(self.requests),
                "rejections": dict(self.rejections), "stale_replaced": self.stale_replaced,
                "clients": self._clients}

    # -- clients -------------------------------------------------------------------------
    def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            self._tasks.spawn(self._serve_client(reader, writer), "control-client")
        except TierlinkError:  # closing
            writer.close()

    async def _refuse(self, writer: asyncio.StreamWriter, exc: ControlError) -> None:
        self.rejections[exc.reason] += 1
        log.info("control: refused: %s", exc)
        writer.write(error_reply(exc))
        await writer.drain()

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._clients += 1
        try:
            check_peer(writer.get_extra_info("socket"), self.uid)
            if self._clients > MAX_CLIENTS:
                raise ControlError("busy", f"the node serves {MAX_CLIENTS} clients at once")
            while await self._one_request(reader, writer):
                pass
        except ControlError as exc:
            with contextlib.suppress(ConnectionError):
                await self._refuse(writer, exc)
        except ConnectionError:
            log.debug("control: a client went away")
        finally:
            self._clients -= 1
            writer.close()

    async def _one_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Read and answer one request; False when the connection is done."""
        try:
            async with asyncio.timeout(IDLE_TIMEOUT_S):
                line = await reader.readline()
        except TimeoutError:
            raise ControlError("idle", f"no request within {IDLE_TIMEOUT_S:g} s") from None
        except ValueError:  # past the reader's limit: the rest of the line cannot be framed
            raise ControlError("too_long", f"a request is at most {MAX_REQUEST} bytes") from None
        if not line:
            return False
        if not line.endswith(b"\n"):
            raise ControlError("incomplete", "a request ends with a newline")
        try:
            req = parse_request(line)
        except ControlError as exc:
            await self._refuse(writer, exc)
            return True
        writer.write(await self._answer(req))
        await writer.drain()
        return True

    async def _answer(self, req: Request) -> bytes:
        node = self._node
        assert node is not None  # set by serve() before the server accepts
        op = type(req).__name__.removesuffix("Request").lower()
        try:
            fields = await self._dispatch(node, req)
        except TierlinkError as exc:  # the node could not do it (no record, DHT down, ...)
            self.rejections["failed"] += 1
            return reply_line({"ok": False, "reason": "failed", "error": str(exc)})
        except Exception:  # a bug: logged in full; the node and its other clients go on
            log.exception("control: %s request failed", op)
            self.rejections["internal"] += 1
            return reply_line({"ok": False, "reason": "internal",
                               "error": f"the node failed on a {op} request (see its log)"})
        self.requests[op] += 1
        return reply_line({"ok": True, "op": op,
                           "node": {"pid": os.getpid(), "fingerprint": node.fingerprint},
                           **fields})

    async def _dispatch(self, node: Node, req: Request) -> dict[str, Any]:
        if isinstance(req, SendRequest):
            results = await send_messages(node, req.to, req.payloads, req.wait)
            if self._on_sent is not None:
                for result in results:
                    self._on_sent(req.to, result)
            return {"results": results}
        if isinstance(req, OutboxRequest | RemoveRequest):
            messenger = node.messenger
            if messenger is None:
                raise TierlinkError("node is not running")
            if isinstance(req, OutboxRequest):
                return {"entries": messenger.outbox.to_json(None if req.all else UNDELIVERED)}
            # every tier reads the store before it sends: once removed, none sends it again
            return {"removed": messenger.outbox.remove(req.message_id).to_json()}
        if isinstance(req, LookupRequest):
            return {"record": record_json(await node.lookup(req.fingerprint))}
        return {"stats": node.stats(), "control": self.stats()}
