"""Today's code against the committed reference vectors (tests/vectors/*.json).

Signed values: ML-DSA-87 signing is randomized, so a re-encoding is compared on its signed
part (VERSION || KIND || BODY), its size and its AEAD inputs, and its signature must verify;
the stored value (with its old signature) must still decode to the stored fields.
Sealed-sender values (the offer, the offline envelope) carry the signature inside the
ciphertext: a re-encoding is compared on its clear part, size, AEAD inputs (the plaintext
without its signature) and decoded fields, and must open (which verifies the signature).
Everything else (keys, answers, acks, channel frames, probes, the key file) is compared byte
for byte. The randomness and clock are patched as described in tests/vectors/generate.py.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from typing import Any

import cbor2
import pytest

from tests.vectors import generate as gen
from tierlink.identity import SIGNATURE_SIZE, Identity, verify_signature
from tierlink.protocol import pmtu
from tierlink.wire.channel_frames import ControlReader, Hello, MessageReader
from tierlink.wire.envelope import open_envelope
from tierlink.wire.sealed import CLEAR_SIZE
from tierlink.wire.signaling import decode_offer

WIRE: dict[str, Any] = json.loads(gen.WIRE_PATH.read_text())
DIAL: dict[str, Any] = json.loads(gen.DIAL_PATH.read_text())
KEM = gen.stored_kem(WIRE)
VALUES: dict[str, dict[str, Any]] = WIRE["values"]


def _stored_offers() -> dict[str, bytes]:
    return {w: bytes.fromhex(VALUES[f"offer_{w}"]["value"]) for w in ("full", "minimal")}


def test_identities_and_key_file() -> None:
    a, b = gen.identities()
    for name, ident in (("A", a), ("B", b)):
        doc = WIRE["inputs"]["identities"][name]
        assert Identity.from_document(doc).fingerprint == ident.fingerprint == doc["fingerprint"]
    assert a.to_json() == WIRE["identity_file_A"]
    loaded = Identity.from_document(json.loads(WIRE["identity_file_A"]))
    assert (loaded.public_key, loaded.kem_public_key) == (a.public_key, a.kem_public_key)


def test_inputs_unchanged() -> None:
    """The construction inputs in generate.py are still those the vectors were made from."""
    inputs = WIRE["inputs"]
    assert (inputs["T0"], inputs["NOW"]) == (gen.T0, gen.NOW)
    assert inputs["session_id"] == gen.SESSION_ID.hex()
    assert inputs["message_ids"] == [m.hex() for m in gen.MESSAGE_IDS]
    assert inputs["candidates"] == gen.jsonable(gen.candidates())
    assert inputs["params_full"] == gen.jsonable(gen.params(True))
    assert inputs["params_minimal"] == gen.jsonable(gen.params(False))
    _a, b = gen.identities()
    assert b.kem_decapsulate(KEM[1]) == KEM[0]  # the stored encapsulation is to B's key


def test_dht_keys() -> None:
    a, _b = gen.identities()
    assert gen.dht_keys(a.fingerprint) == WIRE["keys"]


@pytest.mark.parametrize("name", list(VALUES))
def test_stored_value_decodes(name: str) -> None:
    """(a) The stored bytes, old signature included, decode to the stored fields."""
    entry = VALUES[name]
    value = bytes.fromhex(entry["value"])
    assert (value[1], len(value)) == (entry["kind"], entry["size"])
    _build, decode = gen.builders(_stored_offers())[name]
    assert gen.jsonable(decode(value)) == entry["fields"]
    if "signed" in entry:
        assert value[:-SIGNATURE_SIZE].hex() == entry["signed"]
        assert gen.jsonable(cbor2.loads(value[2:-SIGNATURE_SIZE])) == entry["body"]
    if "clear" in entry:
        assert value[:CLEAR_SIZE].hex() == entry["clear"]


@pytest.mark.parametrize("name", list(VALUES))
def test_reencode(name: str) -> None:
    """(b) Re-encoding from the same inputs and patched randomness gives the same bytes."""
    table = gen.builders(_stored_offers())
    if name.startswith("answer_"):  # rebuild its offer first (as generate.py does)
        gen.build_value(name.replace("answer", "offer"), KEM, table)
    entry = VALUES[name]
    fresh = gen.build_value(name, KEM, table)
    assert fresh["aead"] == entry["aead"]
    assert fresh["fields"] == entry["fields"]
    assert (fresh["kind"], fresh["size"]) == (entry["kind"], entry["size"])
    if "clear" in entry:  # sealed-sender: it opened (signature included) to the same fields
        for part in ("clear", "inner", "answer_key"):
            assert fresh.get(part) == entry.get(part)
    elif "signed" in entry:
        assert fresh["signed"] == entry["signed"]
        assert fresh["body"] == entry["body"]
        value = bytes.fromhex(fresh["value"])
        signer = bytes.fromhex(entry["body"]["2"])  # key 2 is the signer's public key in all
        assert verify_signature(signer, value[-SIGNATURE_SIZE:], value[:-SIGNATURE_SIZE])
    else:
        assert fresh["value"] == entry["value"]  # answers and acks: unsigned, fully exact


def test_signatures_are_by_the_fixed_identities() -> None:
    a, b = gen.identities()
    for name, entry in VALUES.items():
        if "clear" in entry:  # opening verifies the signature inside
            value = bytes.fromhex(entry["value"])
            sender = (decode_offer(value, b, now=gen.NOW).signer if name.startswith("offer_")
                      else open_envelope(value, b, gen.NOW).sender_fingerprint)
            assert sender == (
                a.fingerprint), name
        if "signed" in entry:
            value = bytes.fromhex(entry["value"])
            assert verify_signature(a.public_key, value[-SIGNATURE_SIZE:],
                                    value[:-SIGNATURE_SIZE]), name


def test_channel_frames() -> None:
    stored = WIRE["channel"]
    assert gen.channel_frames() == stored
    ctrl = bytes.fromhex(stored["control_stream_start"])
    assert ctrl[:1] == b"C"
    frames = ControlReader().feed(ctrl[1:] + bytes.fromhex(stored["ack_7"]))
    proof = bytes.fromhex(stored["proof_dialer"])
    assert frames[0] == Hello(2, 16 * 1024 * 1024, gen.DEFAULT_WINDOW, proof)
    binding = gen.example_binding()
    assert binding.key.hex() == stored["binding_key"]
    assert binding.verify(True, gen.EXPORTER, proof)
    assert binding.verify(False, gen.EXPORTER, bytes.fromhex(stored["proof_callee"]))
    assert frames[1].message_id == 7  # type: ignore[union-attr]
    reader = MessageReader(1 << 20)
    assert reader.feed(bytes.fromhex(stored["message_hello"] + stored["message_empty"])) == [
        b"hello", b""
    ]


def test_link_frames() -> None:
    from tierlink.wire.link_frames import (
        LinkAck,
        LinkMessage,
        decode_link_frame,
        encode_ack_frame,
        encode_message_frame,
    )

    stored = WIRE["channel"]
    message = LinkMessage(gen.MESSAGE_IDS[0], gen.T0, gen.T0 + 3_600_000, b"payload")
    assert decode_link_frame(bytes.fromhex(stored["link_message"])) == message
    assert encode_message_frame(*dataclasses.astuple(message)).hex() == stored["link_message"]
    ack = LinkAck(tuple(gen.MESSAGE_IDS))
    assert decode_link_frame(bytes.fromhex(stored["link_ack"])) == ack
    assert encode_ack_frame(gen.MESSAGE_IDS).hex() == stored["link_ack"]


def test_pmtu_probe() -> None:
    stored = WIRE["pmtu"]
    assert gen.pmtu_vectors(KEM) == stored
    probe = bytes.fromhex(stored["probes"][0])
    assert pmtu.is_probe_traffic(probe) and len(probe) == 64
    assert pmtu.answer(probe) == bytes.fromhex(stored["ack"])


@pytest.mark.skipif(shutil.which("dhtnode") is None, reason="dhtnode not installed")
async def test_recorded_dial(dht_node: Any) -> None:
    """The same dial writes the same sequence of values, reads the same keys, frames alike."""
    assert await gen.record_dial(dht_node.proxy_url) == DIAL
