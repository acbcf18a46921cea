"""docs/PROTOCOL.md against the code and the reference vectors: every example decodes.

Each ```` ```example <name> ```` block of the document is extracted, decoded with the code
and compared with tests/vectors/wire.json; every vector must have its example, so the
document can neither drift from the code nor drop a format.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tests.vectors import generate as gen
from tierlink.identity import SIGNATURE_SIZE, Identity
from tierlink.protocol import pmtu
from tierlink.transport.channel import DEFAULT_WINDOW
from tierlink.wire import dhtkeys
from tierlink.wire.channel_frames import Ack, ControlReader, Hello, MessageReader
from tierlink.wire.decoding import decode
from tierlink.wire.envelope import ack_token
from tierlink.wire.link_frames import LinkAck, LinkMessage, decode_link_frame
from tierlink.wire.records import encode_candidate
from tierlink.wire.sealed import CLEAR_SIZE, KEY_LABEL, SIGNATURE_LABEL

DOC = Path(__file__).resolve().parents[1] / "docs" / "PROTOCOL.md"
BLOCK = re.compile(r"^```example (\S+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
WIRE: dict[str, Any] = json.loads(gen.WIRE_PATH.read_text())
VALUES: dict[str, dict[str, Any]] = WIRE["values"]
SIGNED = [n for n, v in VALUES.items() if "signed" in v]
SEALED_SENDER = [n for n, v in VALUES.items() if "clear" in v]
SEALED = [n for n in VALUES if n not in SIGNED and n not in SEALED_SENDER]


def examples(text: str) -> dict[str, str]:
    """Every example block of ``text`` by name (a name used twice is an error)."""
    found: dict[str, str] = {}
    for name, body in BLOCK.findall(text):
        assert name not in found, f"example {name} appears twice"
        found[name] = body
    return found


EXAMPLES = examples(DOC.read_text())


def hex_of(name: str) -> bytes:
    return bytes.fromhex("".join(EXAMPLES[name].split()))


def doc_identities() -> tuple[Identity, Identity]:
    return tuple(  # type: ignore[return-value]
        Identity.from_document(json.loads(EXAMPLES[f"key-file.{n}"])) for n in ("A", "B")
    )


def signed_value(name: str) -> bytes:
    """The document's body of ``name``, signed by the identity the document names."""
    a, _b = doc_identities()
    head = bytes([1, VALUES[name]["kind"]]) + hex_of(f"body.{name}")
    return head + a.sign(head)


def test_every_vector_has_its_example() -> None:
    expected = {
        "key-file.A", "key-file.B", "session-description.full", "pmtu.probe", "pmtu.ack",
        *(f"dht-key.{k}" for k in WIRE["keys"]),
        *(f"body.{n}" for n in SIGNED),
        *(f"{part}.{n}" for n in SEALED_SENDER for part in ("clear", "inner")),
        *(f"value.{n}" for n in SEALED),
        *(f"{'link-frame' if k.startswith('link_') else 'channel'}.{k}" for k in WIRE["channel"]),
        *(f"mailbox-frame.{k}" for k in WIRE["mailbox"]),
    }
    assert set(EXAMPLES) == expected


def test_key_files() -> None:
    a, b = doc_identities()
    fixed_a, fixed_b = gen.identities()
    assert (a.fingerprint, b.fingerprint) == (fixed_a.fingerprint, fixed_b.fingerprint)
    assert EXAMPLES["key-file.A"].rstrip("\n") == WIRE["identity_file_A"] == a.to_json()
    assert json.loads(EXAMPLES["key-file.B"]) == WIRE["inputs"]["identities"]["B"]


@pytest.mark.parametrize("name", list(WIRE["keys"]))
def test_dht_keys(name: str) -> None:
    a, b = doc_identities()
    derive = getattr(dhtkeys, name)
    args: tuple[Any, ...] = (a.fingerprint,)
    if name == "answer_key":
        args = (gen.ANSWER_LOCATOR,)
    if name == "offline_acks_key":
        args = (ack_token(a, b.fingerprint),)
    assert hex_of(f"dht-key.{name}").hex() == derive(*args) == WIRE["keys"][name]


@pytest.mark.parametrize("name", SIGNED)
def test_signed_bodies(name: str) -> None:
    value = signed_value(name)
    assert value[:-SIGNATURE_SIZE].hex() == VALUES[name]["signed"]
    _build, decode_value = gen.builders({})[name]
    assert gen.jsonable(decode_value(value)) == VALUES[name]["fields"]


def sealed_sender_value(name: str) -> bytes:
    """The document's clear part and INNER of ``name``, signed by A and sealed to B with the
    stored KEM secret (what §5.2 specifies)."""
    a, b = doc_identities()
    clear, inner = hex_of(f"clear.{name}"), hex_of(f"inner.{name}")
    signature = a.sign(SIGNATURE_LABEL + clear + bytes.fromhex(b.fingerprint) + inner)
    shared = bytes.fromhex(WIRE["inputs"]["kem"]["shared_secret"])
    key = HKDF(hashes.SHA256(), 32, None, KEY_LABEL + clear[1:2]).derive(shared)
    sealed = AESGCM(key).encrypt(clear[-12:], inner + signature,
                                 clear + bytes.fromhex(b.fingerprint))
    return clear + sealed


@pytest.mark.parametrize("name", SEALED_SENDER)
def test_sealed_sender_values(name: str) -> None:
    value = sealed_sender_value(name)
    assert value[:CLEAR_SIZE].hex() == VALUES[name]["clear"]
    assert len(value) == VALUES[name]["size"]
    _build, decode_value = gen.builders({})[name]
    decoded = decode_value(value)
    assert gen.jsonable(decoded) == VALUES[name]["fields"]
    if name.startswith("offer_"):
        assert decoded.secret.answer_key() == VALUES[name]["answer_key"]


@pytest.mark.parametrize("name", SEALED)
def test_sealed_values(name: str) -> None:
    value = hex_of(f"value.{name}")
    assert value.hex() == VALUES[name]["value"]
    which = name.removeprefix("answer_")
    offers = ({which: sealed_sender_value(f"offer_{which}")} if name.startswith("answer_")
              else {})
    _build, decode_value = gen.builders(offers)[name]
    assert gen.jsonable(decode_value(value)) == VALUES[name]["fields"]


def test_session_description() -> None:
    plain = hex_of("session-description.full")
    assert plain.hex() == VALUES["answer_full"]["aead"][0]["plaintext"]
    p = gen.params(True)
    assert decode(plain) == {
        1: p.ufrag, 2: p.pwd, 3: [encode_candidate(c) for c in p.candidates],
        4: p.cert_sha256, 6: p.purpose, 7: list(p.channel_limits or ()),
        8: list(p.quic_flight),
    }


def test_channel_frames() -> None:
    for key, stored in WIRE["channel"].items():
        kind = "link-frame" if key.startswith("link_") else "channel"
        assert hex_of(f"{kind}.{key}").hex() == stored
    start = hex_of("channel.control_stream_start")
    assert start[:1] == b"C"
    control = start[1:] + hex_of("channel.ack_7") + hex_of("channel.ack_max")
    proof = hex_of("channel.proof_dialer")
    assert ControlReader().feed(control) == [
        Hello(2, 16 * 1024 * 1024, DEFAULT_WINDOW, proof), Ack(7), Ack(2**64 - 1)
    ]
    assert hex_of("channel.message_stream_start") == b"M"
    messages = hex_of("channel.message_hello") + hex_of("channel.message_empty")
    assert MessageReader(1 << 20).feed(messages) == [b"hello", b""]


def test_channel_binding_follows_the_documented_derivation() -> None:
    """§12's formulas, computed here from the §18.6 inputs, give the examples."""
    a, b = doc_identities()
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=gen.SESSION_ID,
               info=b"tierlink/channel-binding").derive(gen.BINDING_SECRET_KEY)
    assert hex_of("channel.binding_key") == key
    for role, name in ((1, "proof_dialer"), (2, "proof_callee")):
        transcript = (b"tierlink/channel-proof" + bytes([role]) + gen.SESSION_ID
                      + bytes.fromhex(a.fingerprint) + bytes.fromhex(b.fingerprint)
                      + gen.EXPORTER)
        assert hex_of(f"channel.{name}") == hmac.new(key, transcript, hashlib.sha256).digest()


def test_link_frames() -> None:
    assert decode_link_frame(hex_of("link-frame.link_message")) == LinkMessage(
        gen.MESSAGE_IDS[0], gen.T0, gen.T0 + 3_600_000, b"payload"
    )
    assert decode_link_frame(hex_of("link-frame.link_ack")) == LinkAck(gen.MESSAGE_IDS)


def test_pmtu_probe() -> None:
    probe, ack = hex_of("pmtu.probe"), hex_of("pmtu.ack")
    assert probe.hex() == WIRE["pmtu"]["probes"][0] and ack.hex() == WIRE["pmtu"]["ack"]
    assert pmtu.is_probe_traffic(probe) and len(probe) == 64
    assert pmtu.answer(probe) == ack


@pytest.mark.parametrize("name", list(WIRE["mailbox"]))
def test_mailbox_frames(name: str) -> None:
    """§19.5: a ``<value.NAME>`` line is that value's bytes; the frame decodes."""
    from tierlink.mailbox.codec import decode_frame

    parts = [bytes.fromhex(VALUES[line[7:-1]]["value"]) if line.startswith("<value.")
             else bytes.fromhex(line) for line in EXAMPLES[f"mailbox-frame.{name}"].split()]
    frame = b"".join(parts)
    assert frame.hex() == WIRE["mailbox"][name]
    assert decode_frame(frame).fields.map == decode(frame)
