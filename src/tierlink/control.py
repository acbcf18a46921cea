"""The control socket: how the ``tierlink`` commands of one user reach that user's running node.

A ``tierlink run`` serves one Unix stream socket per identity,
``<runtime dir>/<first 32 hex of the fingerprint>.sock`` (mode 0600), in a directory of mode
0700 owned by the user: ``$XDG_RUNTIME_DIR/tierlink`` or ``<tmp>/tierlink-<uid>``. Both ends
check the other's uid (``SO_PEERCRED``): the node answers only its own user, and a command
hands its messages only to a node of its own user, not to a socket someone else planted.

Requests and replies are one JSON object per line (UTF-8, at most :data:`MAX_REQUEST` and
:data:`MAX_REPLY` bytes). Every request names ``"v": 1`` and an ``"op"``:

* ``{"v": 1, "op": "send", "to": FP, "messages": [BASE64, ...], "wait": S}``
* ``{"v": 1, "op": "outbox", "all": BOOL}``
* ``{"v": 1, "op": "remove", "id": HEX}`` (an undelivered message, by its id or a prefix)
* ``{"v": 1, "op": "lookup", "fingerprint": FP}``
* ``{"v": 1, "op": "stats"}``

Replies are ``{"ok": true, "node": {"pid": N, "fingerprint": FP}, ...}`` or
``{"ok": false, "reason": REASON, "error": TEXT}``. This module holds the protocol, the paths
and the client; :mod:`tierlink.node.control_server` holds the server. It imports no part of
the node stack, so a command the running node serves starts without loading it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import errno
import json
import os
import socket
import stat
import struct
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tierlink.errors import TierlinkError
from tierlink.identity import is_fingerprint
from tierlink.wire.records import PeerRecord

VERSION = 1
#: Longest request line (bytes, newline included): room for every message a command line holds.
MAX_REQUEST = 4 * 1024 * 1024
#: Longest reply line the client reads (an outbox listing can be long).
MAX_REPLY = 64 * 1024 * 1024
#: Most messages in one send request.
MAX_MESSAGES = 256
#: Longest a send request may ask the node to wait for an acknowledgement (seconds).
MAX_WAIT_S = 3600.0
#: ``sockaddr_un.sun_path`` holds 108 bytes, the terminating NUL included.
MAX_SOCKET_PATH = 107
OPS = ("send", "outbox", "remove", "lookup", "stats")
_FIELDS: dict[str, frozenset[str]] = {
    "send": frozenset({"v", "op", "to", "messages", "wait"}),
    "outbox": frozenset({"v", "op", "all"}),
    "remove": frozenset({"v", "op", "id"}),
    "lookup": frozenset({"v", "op", "fingerprint"}),
    "stats": frozenset({"v", "op"}),
}


class ControlError(TierlinkError):
    """A control request or reply refused, or a control socket that cannot be used."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class NoRunningNode(ControlError):
    """No node of this identity answers on its control socket."""

    def __init__(self, path: Path) -> None:
        super().__init__("no_node", f"no node answers on {path}")
        self.path = path


# -- requests ------------------------------------------------------------------------------
@dataclass(frozen=True)
class SendRequest:
    """Send ``payloads`` to ``to`` as ``tierlink send`` does; wait up to ``wait`` seconds for
    an acknowledgement of a message queued in the DHT."""

    to: str
    payloads: tuple[bytes, ...]
    wait: float = 5.0


@dataclass(frozen=True)
class OutboxRequest:
    """List the outbox: undelivered messages, or every one with ``all``."""

    all: bool = False


@dataclass(frozen=True)
class RemoveRequest:
    """Remove the undelivered message whose id (hex) starts with ``message_id``."""

    message_id: str


@dataclass(frozen=True)
class LookupRequest:
    """The verified record of ``fingerprint``."""

    fingerprint: str


@dataclass(frozen=True)
class StatsRequest:
    """The node's counters and the control server's."""


Request = SendRequest | OutboxRequest | RemoveRequest | LookupRequest | StatsRequest


def encode_request(req: Request) -> bytes:
    """One request line."""
    obj: dict[str, Any]
    if isinstance(req, SendRequest):
        obj = {"op": "send", "to": req.to, "wait": req.wait,
               "messages": [base64.b64encode(p).decode() for p in req.payloads]}
    elif isinstance(req, OutboxRequest):
        obj = {"op": "outbox", "all": req.all}
    elif isinstance(req, RemoveRequest):
        obj = {"op": "remove", "id": req.message_id}
    elif isinstance(req, LookupRequest):
        obj = {"op": "lookup", "fingerprint": req.fingerprint}
    else:
        obj = {"op": "stats"}
    line = json.dumps({"v": VERSION, **obj}, separators=(",", ":")).encode() + b"\n"
    if len(line) > MAX_REQUEST:
        raise ControlError("too_long", f"the request is {len(line)} bytes, more than the "
                                       f"control socket takes ({MAX_REQUEST})")
    return line


def send_requests(to: str, payloads: Sequence[bytes], wait: float = 5.0) -> list[SendRequest]:
    """``payloads`` for ``to`` as as few send requests as fit the limits (in order): at most
    :data:`MAX_MESSAGES` each, and each line at most :data:`MAX_REQUEST` bytes."""
    room = MAX_REQUEST - 512  # the fields around the messages
    batches: list[list[bytes]] = [[]]
    used = 0
    for payload in payloads:
        size = 4 * ((len(payload) + 2) // 3) + 3  # base64, quotes and comma
        if batches[-1] and (len(batches[-1]) == MAX_MESSAGES or used + size > room):
            batches.append([])
            used = 0
        batches[-1].append(payload)
        used += size
    return [SendRequest(to, tuple(batch), wait) for batch in batches if batch]


def _bad(reason: str, message: str) -> ControlError:
    return ControlError(reason, message)


def _fingerprint_field(obj: dict[str, Any], name: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str) or not is_fingerprint(value):
        raise _bad("bad_field", f"{name!r} must be a fingerprint (128 lowercase hex)")
    return value


def _payload(item: object) -> bytes:
    if not isinstance(item, str):
        raise _bad("bad_field", "each message must be a base64 string")
    try:
        payload = base64.b64decode(item, validate=True)
    except (binascii.Error, ValueError):
        raise _bad("bad_field", "a message is not valid base64") from None
    if not payload:
        raise _bad("bad_field", "cannot send an empty message")
    return payload


def _send_request(obj: dict[str, Any]) -> SendRequest:
    to = _fingerprint_field(obj, "to")
    messages = obj.get("messages")
    if not isinstance(messages, list) or not 1 <= len(messages) <= MAX_MESSAGES:
        raise _bad("bad_field", f"'messages' must be a list of 1 to {MAX_MESSAGES} messages")
    wait = obj.get("wait", 5.0)
    if (isinstance(wait, bool) or not isinstance(wait, int | float)
            or not 0 <= wait <= MAX_WAIT_S):
        raise _bad("bad_field", f"'wait' must be a number of seconds from 0 to {MAX_WAIT_S:g}")
    return SendRequest(to, tuple(_payload(m) for m in messages), float(wait))


def parse_request(line: bytes) -> Request:
    """A request line, strictly checked; :class:`ControlError` names what is wrong."""
    if len(line) > MAX_REQUEST:
        raise _bad("too_long", f"a request is at most {MAX_REQUEST} bytes")
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):  # bad UTF-8 or JSON; nesting past the parser's depth
        raise _bad("bad_json", "a request is one JSON object per line") from None
    if not isinstance(obj, dict):
        raise _bad("bad_json", "a request is a JSON object")
    if obj.get("v") != VERSION or isinstance(obj.get("v"), bool):
        raise _bad("bad_version", f"unsupported request version (this node speaks v={VERSION})")
    op = obj.get("op")
    if not isinstance(op, str) or op not in _FIELDS:
        shown = op[:32] if isinstance(op, str) else type(op).__name__
        raise _bad("unknown_op", f"unknown op {shown!r}; ops are {', '.join(OPS)}")
    extra = sorted(set(obj) - _FIELDS[op])
    if extra:
        raise _bad("unknown_field", f"unknown field {extra[0][:32]!r} in a {op} request")
    if op == "send":
        return _send_request(obj)
    if op == "outbox":
        flag = obj.get("all", False)
        if not isinstance(flag, bool):
            raise _bad("bad_field", "'all' must be true or false")
        return OutboxRequest(flag)
    if op == "remove":
        mid = obj.get("id")
        if not isinstance(mid, str) or not 1 <= len(mid) <= 32:
            raise _bad("bad_field", "'id' must be a message id (hex, at most 32 digits)")
        return RemoveRequest(mid)
    if op == "lookup":
        return LookupRequest(_fingerprint_field(obj, "fingerprint"))
    return StatsRequest()


def error_reply(exc: ControlError) -> bytes:
    """The reply line to a refused request."""
    return reply_line({"ok": False, "reason": exc.reason, "error": str(exc)})


def reply_line(obj: dict[str, Any]) -> bytes:
    """One reply line."""
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def record_json(rec: PeerRecord) -> dict[str, Any]:
    """What ``tierlink lookup --json`` prints about a verified record."""
    return {
        "fingerprint": rec.fingerprint, "seq": rec.seq, "issued_at_ms": rec.issued_at_ms,
        "expires_at_ms": rec.expires_at_ms, "mode": rec.mode,
        "candidates": [c.__dict__ for c in rec.candidates],
        "kem_public_key": rec.kem_public_key.hex(), "public_key": rec.public_key.hex(),
    }


# -- paths and peers -----------------------------------------------------------------------
def control_dir() -> Path:
    """The directory of this user's control sockets."""
    base = os.environ.get("XDG_RUNTIME_DIR", "")
    if base and os.path.isabs(base):
        return Path(base) / "tierlink"
    return Path(tempfile.gettempdir()) / f"tierlink-{os.geteuid()}"


def socket_path(fingerprint: str, directory: Path | None = None) -> Path:
    """The control socket of the node of ``fingerprint``."""
    path = (directory or control_dir()) / f"{fingerprint[:32]}.sock"
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise ControlError("path_too_long", f"control socket path {path} is longer than "
                                            f"{MAX_SOCKET_PATH} bytes (set a shorter "
                                            "XDG_RUNTIME_DIR)")
    return path


def check_private_dir(directory: Path) -> None:
    """Refuse a directory another user could write to or own (it could hold a planted
    socket): it must be a real directory, owned by us, mode 0700 or stricter."""
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode):
        raise ControlError("unsafe_dir", f"{directory} is not a directory")
    if st.st_uid != os.geteuid():
        raise ControlError("unsafe_dir", f"{directory} belongs to uid {st.st_uid}, not to us")
    if st.st_mode & 0o077:
        raise ControlError("unsafe_dir", f"{directory} is open to other users "
                                         f"(mode {st.st_mode & 0o777:o}; chmod 700 it)")


def make_private_dir(directory: Path) -> None:
    """Create the control directory (mode 0700) if missing, then check it."""
    with contextlib.suppress(FileExistsError):
        directory.mkdir(mode=0o700, parents=False)
    check_private_dir(directory)


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a Unix socket (``SO_PEERCRED``)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


def check_peer(sock: socket.socket, uid: int) -> None:
    """Refuse a peer process that does not run as ``uid``."""
    other = peer_uid(sock)
    if other != uid:
        raise ControlError("peer_uid", f"the control socket serves uid {uid} only, not {other}")


# -- client --------------------------------------------------------------------------------
async def request(path: Path, req: Request, timeout: float | None = 30.0) -> dict[str, Any]:
    """Ask the node on ``path``; the reply's fields. :class:`NoRunningNode` when no node
    answers there (no socket, or a dead node's leftover); :class:`ControlError` for a
    socket that is not safe to use or a refused request."""
    line = encode_request(req)
    try:
        check_private_dir(path.parent)
        st = os.lstat(path)
    except FileNotFoundError:
        raise NoRunningNode(path) from None
    if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.geteuid():
        raise ControlError("unsafe_socket", f"{path} is not a control socket of ours")
    try:
        reader, writer = await asyncio.open_unix_connection(path, limit=MAX_REPLY)
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            raise NoRunningNode(path) from None
        raise
    try:
        check_peer(writer.get_extra_info("socket"), os.geteuid())
        writer.write(line)
        async with asyncio.timeout(timeout):
            await writer.drain()
            answer = await reader.readline()
    except TimeoutError:
        raise ControlError("timeout", f"the node on {path} did not answer "
                                      f"within {timeout:g} s") from None
    except ValueError:  # a reply line past MAX_REPLY
        raise ControlError("bad_reply", f"the node on {path} sent a reply too long") from None
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return _parse_reply(path, answer)


def _parse_reply(path: Path, answer: bytes) -> dict[str, Any]:
    if not answer.endswith(b"\n"):
        raise ControlError("bad_reply", f"the node on {path} closed without answering")
    try:
        obj = json.loads(answer)
    except (ValueError, RecursionError):
        raise ControlError("bad_reply", f"the node on {path} sent a reply that is not "
                                        "JSON") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("ok"), bool):
        raise ControlError("bad_reply", f"the node on {path} sent a malformed reply")
    if not obj["ok"]:
        reason, error = obj.get("reason"), obj.get("error")
        raise ControlError(reason if isinstance(reason, str) else "refused",
                           error if isinstance(error, str) else "the node refused the request")
    return obj


# -- replies, as the client checks them ------------------------------------------------------
_Types = Mapping[str, type | tuple[type, ...]]
_RESULT: _Types = {"message_id": str, "bytes": int, "state": str, "tier": (str, type(None))}
_ENTRY: _Types = {"message_id": str, "recipient": str, "state": str,
                  "tier": (str, type(None)), "payload_size": int, "attempts": int}
_RECORD: _Types = {"fingerprint": str, "seq": int, "issued_at_ms": int, "expires_at_ms": int,
                   "mode": str, "candidates": list}
_CANDIDATE: _Types = {"type": str, "host": str, "port": int}


def _fields(obj: object, types: _Types, what: str) -> dict[str, Any]:
    """``obj`` if it is a dict whose ``types`` keys hold values of those types."""
    if not isinstance(obj, dict) or not all(
        isinstance(obj.get(k), t) and not isinstance(obj.get(k), bool) for k, t in types.items()
    ):
        raise ControlError("bad_reply", f"the running node sent a malformed {what}")
    return obj


def _listed(reply: dict[str, Any], key: str, types: _Types) -> list[dict[str, Any]]:
    items = reply.get(key)
    if not isinstance(items, list):
        raise ControlError("bad_reply", f"the running node sent no {key}")
    return [_fields(item, types, key) for item in items]


def send_results(reply: dict[str, Any]) -> list[dict[str, Any]]:
    """A send reply's results: ``message_id``, ``bytes``, ``state``, ``tier`` each."""
    return _listed(reply, "results", _RESULT)


def outbox_entries(reply: dict[str, Any]) -> list[dict[str, Any]]:
    """An outbox reply's entries (as ``tierlink outbox --json`` prints them)."""
    return _listed(reply, "entries", _ENTRY)


def removed_entry(reply: dict[str, Any]) -> dict[str, Any]:
    """A remove reply's entry: the message as it was (an outbox entry)."""
    return _fields(reply.get("removed"), _ENTRY, "removed entry")


def lookup_record(reply: dict[str, Any]) -> dict[str, Any]:
    """A lookup reply's record (as :func:`record_json` makes it)."""
    record = _fields(reply.get("record"), _RECORD, "record")
    for candidate in record["candidates"]:
        _fields(candidate, _CANDIDATE, "candidate")
    return record
