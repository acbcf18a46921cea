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
from tierlink.wire.envelope import ENVELOPE, open_envelope
from tierlink.wire.link_frames import decode_link_frame, encode_ack_frame, encode_message_frame
from tierlink.wire.records import KIND_ENVELOPE, KIND_PEER_RECORD, PeerRecord
from tierlink.wire.sealed import SealedKind
from tierlink.wire.signaling import OFFER, decode_answer, decode_offer


@dataclass(frozen=True)
class Target:
    """A parser and the way its fuzz inputs are made."""

    name: str
    build: Callable[[Draw], Any]
    parse: Callable[[Any], object]
    fallback: Callable[[bytes], Any] = lambda data: data


ALL_SEEDS = (*b.SIGNED_SEEDS.values(), b.answer())


# -- signed and sealed values ---------------------------------------------------------------
def record_value(draw: Draw) -> bytes:
    """The seed record, or a mutation: of its fields (re-signed by the attacker), of its
    bytes (signature left broken), or of its encoded body (re-signed)."""
    mode = draw.below(8)
    if mode == 0:
        return b.SIGNED_SEEDS[KIND_PEER_RECORD]
    if mode <= 4:
        return b.reseal(mutate_map(draw, b.record_body(), range(1, 12)))
    if mode <= 6:
        keep = draw.choice((2, 0))
        return mutate_bytes(draw, b.SIGNED_SEEDS[KIND_PEER_RECORD], keep=keep, others=ALL_SEEDS)
    return b.resign_raw(mutate_bytes(draw, b.encode(b.record_body()), others=ALL_SEEDS))


def drawn_times(draw: Draw, lifetime_ms: int) -> tuple[int, int] | None:
    """Mostly None (valid times), else created/expires a sealer accepts (a positive lifetime
    up to the kind's) drawn around the receiver's clock or far from it; times no sealer
    makes are reached by the byte mutations."""
    if not draw.chance(48):
        return None
    edges = (0, 1, b.NOW - 10**9, b.NOW + 10**9, 2**62, 2**63 - 1)
    created = draw.choice(edges) if draw.chance(128) else b.NOW - draw.below(1 << 20)
    return created, created + 1 + draw.below(lifetime_ms)


def sealed_value(
    draw: Draw, kind: SealedKind, fields: dict[int, Any], seed: bytes, known: range
) -> bytes:
    """``seed``, or a mutation: of its inner fields or times (re-sealed by the attacker to
    the victim), or of its bytes (signature and tag left broken)."""
    mode = draw.below(8)
    if mode == 0:
        return seed
    if mode <= 5:
        times = drawn_times(draw, kind.max_lifetime_ms)
        return b.seal(kind, mutate_map(draw, fields, known), times)
    return mutate_bytes(draw, seed, keep=draw.choice((2, 0)), others=ALL_SEEDS)


def session_map(draw: Draw) -> Any:
    """A session description map with mutated fields, or any CBOR value."""
    if draw.chance(224):
        return mutate_map(draw, b.session_fields(b.PARAMS), range(1, 9))
    return cbor_value(draw)


def session_plaintext(draw: Draw) -> bytes:
    """A session description: its fields mutated, its bytes mutated, or any CBOR value."""
    fields = b.session_fields(b.PARAMS)
    mode = draw.below(6)
    if mode <= 3:
        return b.encode(mutate_map(draw, fields, range(1, 9)))
    if mode == 4:
        return mutate_bytes(draw, b.encode(fields))
    return b.encode(cbor_value(draw))


def build_offer(draw: Draw) -> bytes:
    """An offer whose session description (mostly), inner fields, times or bytes are
    mutated; re-sealed by the attacker to the victim."""
    if draw.chance(96):
        return b.seal(OFFER, b.offer_fields(session_map(draw)), drawn_times(draw, 600_000))
    return sealed_value(draw, OFFER, b.offer_fields(), b.OFFER, range(1, 4))


def build_envelope(draw: Draw) -> bytes:
    return sealed_value(
        draw, ENVELOPE, b.envelope_fields(), b.SIGNED_SEEDS[KIND_ENVELOPE], range(1, 5)
    )


def build_ack(draw: Draw) -> bytes:
    """An ack whose ids (as CBOR), bytes or times are mutated, sealed under the token."""
    mode = draw.below(8)
    if mode == 0:
        return b.ack()
    if mode <= 3:
        ids: dict[int, Any] = {1: list(b.MESSAGE_IDS)}
        return b.ack(b.encode(mutate_map(draw, ids, range(0, 3))), drawn_times(draw, 3_600_000))
    if mode <= 5:
        return b.ack(mutate_bytes(draw, b.encode({1: list(b.MESSAGE_IDS)})))
    return mutate_bytes(draw, b.ack(), keep=draw.choice((2, 0)), others=ALL_SEEDS)


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
    b.encode(b.record_body()), b.encode(b.offer_fields()), b.encode(b.envelope_fields()),
    b.encode(b.session_fields(b.PARAMS)),
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
        Target("peer_record", record_value, lambda v: PeerRecord.decode(v, now=b.NOW)),
        Target("offer", build_offer, lambda v: decode_offer(v, b.VICTIM, now=b.NOW)),
        Target("answer", build_answer, lambda v: decode_answer(v, b.SECRET)),
        Target("envelope", build_envelope, lambda v: open_envelope(v, b.VICTIM, b.NOW)),
        Target("ack", build_ack, lambda v: open_ack(v, b.ACK_TOKEN, b.NOW)),
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
