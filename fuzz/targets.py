"""One fuzz target per parser of untrusted bytes: how to build its input, how to parse it.

``build`` turns a fuzz input into the parser's argument (a mutated valid encoding, often
re-signed by the attacker); ``parse`` runs the parser on it. ``fallback`` gives the argument
when ``build`` itself fails (an unencodable mutation): the raw fuzz input, so every input
still reaches the parser. The stream parsers' inputs are made in :mod:`fuzz.streams`.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fuzz import builders as b
from fuzz.draw import Draw
from fuzz.mutate import cbor_value, json_text, json_value, mutate_bytes, mutate_map
from fuzz.streams import (
    build_channel,
    build_control,
    build_messages,
    build_pmtu,
    build_proxy,
    build_proxy_answer,
    parse_channel,
    parse_control,
    parse_messages,
    parse_pmtu,
    parse_proxy,
    parse_proxy_answer,
)
from tierlink.errors import TierlinkError
from tierlink.identity import Identity
from tierlink.protocol.pmtu import PathMtuProber
from tierlink.wire.ack import open_ack
from tierlink.wire.decoding import Fields, check_bytes, check_uint, decode
from tierlink.wire.envelope import open_envelope
from tierlink.wire.link_frames import decode_link_frame, encode_ack_frame, encode_message_frame
from tierlink.wire.records import KIND_ACK, KIND_ENVELOPE, KIND_OFFER, KIND_PEER_RECORD, PeerRecord
from tierlink.wire.signaling import decode_answer, decode_offer


@dataclass(frozen=True)
class Target:
    """A parser and the way its fuzz inputs are made."""

    name: str
    build: Callable[[Draw], Any]
    parse: Callable[[Any], object]
    fallback: Callable[[bytes], Any] = lambda data: data


ALL_SEEDS = (*b.SIGNED_SEEDS.values(), b.answer())


# -- signed values ---------------------------------------------------------------------------
def signed_value(draw: Draw, kind: int, known: range) -> bytes:
    """The seed of ``kind``, or a mutation: of its fields (re-signed by the attacker), of
    its bytes (signature left broken), or of its encoded body (re-signed)."""
    mode = draw.below(8)
    if mode == 0:
        return b.SIGNED_SEEDS[kind]
    if mode <= 4:
        return b.reseal(kind, mutate_map(draw, b.body(kind), known))
    if mode <= 6:
        keep = draw.choice((2, 0))
        return mutate_bytes(draw, b.SIGNED_SEEDS[kind], keep=keep, others=ALL_SEEDS)
    return b.resign_raw(kind, mutate_bytes(draw, b.encode(b.body(kind)), others=ALL_SEEDS))


def session_plaintext(draw: Draw) -> bytes:
    """A session description: its fields mutated, its bytes mutated, or any CBOR value."""
    fields = b.session_fields(b.PARAMS)
    mode = draw.below(6)
    if mode <= 3:
        return b.encode(mutate_map(draw, fields, range(1, 9)))
    if mode == 4:
        return mutate_bytes(draw, b.encode(fields))
    return b.encode(cbor_value(draw))


def build_offer(draw: Draw) -> tuple[bytes, int | None]:
    """(offer, receiver clock): a mutated outer value, or a mutated encrypted plaintext
    (stamped now, so read on the current clock)."""
    if draw.chance(64):
        value, _ = b.offer(session_plaintext(draw))
        return value, None
    return signed_value(draw, KIND_OFFER, range(1, 12)), b.NOW


def build_answer(draw: Draw) -> bytes:
    """An answer whose plaintext (mostly) or bytes are mutated."""
    mode = draw.below(8)
    if mode == 0:
        return b.answer()
    if mode == 7:
        return mutate_bytes(draw, b.answer(), keep=draw.choice((2, 0)), others=ALL_SEEDS)
    return b.answer(session_plaintext(draw))


# -- the strict CBOR decoder and the field reader -----------------------------------------
CBOR_SEEDS = (
    *(b.encode(b.body(kind)) for kind in b.SIGNED_SEEDS), b.encode(b.session_fields(b.PARAMS)),
)


def build_cbor(draw: Draw) -> bytes:
    """A body of any kind or any CBOR value, with raw mutations."""
    base = draw.choice(CBOR_SEEDS) if draw.chance(128) else b.encode(cbor_value(draw))
    return mutate_bytes(draw, base, others=CBOR_SEEDS) if draw.chance(192) else base


def parse_cbor(data: bytes) -> None:
    """Decode, then read every field of a map in every way a format does."""
    value = decode(data)
    try:
        fields = Fields(value, "fuzz", range(1, 10))
    except TierlinkError:
        return
    for key in range(1, 10):
        for read in (
            lambda k: fields.uint(k, "u"), lambda k: fields.bstr(k, "b", size=16),
            lambda k: fields.opt_bstr(k, "o", max_size=64), lambda k: fields.text(k, "t"),
            lambda k: fields.opt_text(k, "ot", "x"), lambda k: fields.array(k, "a"),
            lambda k: [check_uint(v, "e") for v in fields.opt_array(k, "oa") or ()],
            lambda k: [check_bytes(v, "e", size=16) for v in fields.opt_array(k, "oa") or ()],
        ):
            with contextlib.suppress(TierlinkError):
                read(key)


# -- link frames -------------------------------------------------------------------------
LINK_SEEDS = (
    encode_message_frame(b.MESSAGE_IDS[0], b.NOW, b.NOW + 1000, b"payload"),
    encode_ack_frame(b.MESSAGE_IDS),
)


def build_link(draw: Draw) -> bytes:
    seed = draw.choice(LINK_SEEDS)
    if draw.chance(128):
        return b.encode(mutate_map(draw, decode(seed), range(0, 6)))
    return mutate_bytes(draw, seed, others=LINK_SEEDS)


# -- identity key files ---------------------------------------------------------------------
_KEY_DIR = tempfile.mkdtemp(prefix="tierlink-fuzz-")
KEY_FILE = Path(_KEY_DIR) / "identity.json"


@atexit.register
def cleanup() -> None:
    """Remove the key file's directory (libFuzzer exits without running atexit: the
    libFuzzer driver calls this itself)."""
    shutil.rmtree(_KEY_DIR, ignore_errors=True)
KEY_DOC = json.loads(b.VICTIM.to_json())


def build_key_file(draw: Draw) -> bytes:
    """The victim's key file, its members mutated, its text or bytes mutated."""
    doc: Any = dict(KEY_DOC)
    mode = draw.below(4)
    if mode == 1:
        for _ in range(1 + draw.below(3)):
            member = draw.choice((*KEY_DOC, "x"))
            if draw.chance(32):
                doc.pop(member, None)
            else:
                doc[member] = json_value(draw)
    text = json_text(draw, doc) if mode <= 2 else b.VICTIM.to_json().encode()
    if mode >= 2:
        text = mutate_bytes(draw, text)
    return text


def load_key_file(text: bytes) -> Identity:
    """Write ``text`` as a (mode 0600) key file and load it."""
    fd = os.open(KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(text)
    return Identity.load(KEY_FILE)


# -- the targets ---------------------------------------------------------------------------
TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("cbor", build_cbor, parse_cbor),
        Target(
            "peer_record",
            lambda d: signed_value(d, KIND_PEER_RECORD, range(1, 12)),
            lambda v: PeerRecord.decode(v, now=b.NOW),
        ),
        Target(
            "offer", build_offer, lambda a: decode_offer(a[0], b.VICTIM, now=a[1]),
            lambda data: (data, b.NOW),
        ),
        Target("answer", build_answer, lambda v: decode_answer(v, b.SECRET)),
        Target(
            "envelope",
            lambda d: signed_value(d, KIND_ENVELOPE, range(1, 12)),
            lambda v: open_envelope(v, b.VICTIM, b.NOW),
        ),
        Target(
            "ack",
            lambda d: signed_value(d, KIND_ACK, range(1, 9)),
            lambda v: open_ack(v, b.VICTIM.fingerprint, b.NOW),
        ),
        Target("link_frame", build_link, decode_link_frame),
        Target("channel_control", build_control, parse_control, lambda data: (data,)),
        Target("channel", build_channel, parse_channel, lambda data: ((3, data, False),)),
        Target(
            "channel_messages", build_messages, parse_messages, lambda data: (1 << 20, (data,))
        ),
        Target(
            "pmtu", build_pmtu, parse_pmtu, lambda data: (PathMtuProber(1200, (1452,)), data)
        ),
        Target("proxy_line", build_proxy, parse_proxy, lambda data: (1024, (data,))),
        Target("proxy_answer", build_proxy_answer, parse_proxy_answer),
        Target("key_file", build_key_file, load_key_file),
    )
}
