"""What the CLI prints: a JSON object or a line of text, and text a peer sent made safe."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any


def emit(args: argparse.Namespace, obj: dict[str, Any], text: str) -> None:
    """Print ``obj`` as one JSON line under ``--json``, else ``text``."""
    print(json.dumps(obj) if args.json else text, flush=True)


class Output:
    """What a running node prints, as :func:`emit`. Once standard output cannot be written
    (its pipe's reader went away, the disk is full) the line that failed and every later one
    go to stderr instead, so nothing a peer sent vanishes, and ``on_broken`` is called once
    so that the node stops taking messages nobody would see."""

    def __init__(self, args: argparse.Namespace, on_broken: Callable[[], None]) -> None:
        self.args = args
        self.broken: str | None = None
        """Why standard output failed (None while it works)."""
        self._on_broken = on_broken

    def show(self, obj: dict[str, Any], text: str) -> None:
        """Print ``obj`` (``--json``) or ``text``; to stderr once stdout has failed."""
        if self.broken is None:
            try:
                emit(self.args, obj, text)
                return
            except OSError as exc:
                self.broken = exc.strerror or str(exc)
                with open(os.devnull, "wb") as null:  # the exit's flush cannot fail again
                    os.dup2(null.fileno(), sys.stdout.fileno())
                self._on_broken()
        shown = json.dumps(obj) if self.args.json else text
        print(f"tierlink: standard output failed ({self.broken}) printing: {shown}",
              file=sys.stderr, flush=True)


_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}
#: Line/paragraph separators and bidirectional overrides: they break or reorder a line.
_UNICODE_CONTROLS = frozenset({0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A)})


def printable(text: str) -> str:
    """``text`` safe for a terminal: C0 and C1 control characters and DEL (so every ANSI
    escape sequence), line separators and bidi overrides shown as backslash escapes,
    backslashes doubled so that the line reads unambiguously. A peer's message cannot move
    the cursor, clear the screen or forge another output line."""
    out = []
    for ch in text:
        code = ord(ch)
        if ch in _NAMED_ESCAPES:
            out.append(_NAMED_ESCAPES[ch])
        elif code < 0x20 or 0x7F <= code <= 0x9F:
            out.append(f"\\x{code:02x}")
        elif code in _UNICODE_CONTROLS:
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def message_line(sender: str, text: str, tier: str | None = None) -> str:
    """The human output line of a received message (sender shortened, text escaped)."""
    via = f" [{tier}]" if tier is not None else ""
    return f"{sender[:16]}…{via}: {printable(text)}"


def sent_line(result: dict[str, Any]) -> str:
    """The human output line of a message ``send`` stored: where it is now (fingerprints
    shortened as in every other line)."""
    mid, state, tier = result["message_id"][:12], result["state"], result["tier"]
    if state == "delivered":
        return f"delivered {mid} via the {tier} tier"
    if state == "queued":
        return (f"queued {mid} in the DHT offline queue; the recipient gets it when it comes "
                "online (the outbox keeps it until acked)")
    if state == "in_mailbox":
        box = (result.get("mailboxes") or ["?"])[0]
        return (f"queued {mid} in mailbox {box[:16]}…; the recipient collects it when it "
                "comes online, even if this node is offline by then")
    return (f"{mid} is {state}: kept in the outbox, retried by the next 'tierlink run' or "
            "'tierlink send'")
