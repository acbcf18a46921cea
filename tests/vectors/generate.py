"""Reference vectors of today's wire formats, for proving a rewrite byte-compatible.

Run ``PYTHONPATH=src python -m tests.vectors.generate`` (``--dial`` also records a dial on a
lone loopback ``dhtnode``). It writes ``wire.json`` (and ``dial.json``) next to this file;
``--channel`` rewrites only the ``channel`` section of an existing ``wire.json`` (every
other vector, signatures included, stays byte for byte), ``--new-values`` only adds the
value vectors it lacks (a new value kind): ``python -m tests.vectors.generate
--channel --dial`` regenerates what the channel frames change. ``--mailbox`` rewrites only
the mailbox vectors (the descriptor value, the mailboxes key and the ``mailbox`` frames,
built around the stored envelope and ack values).
The construction code is shared with ``tests/test_reference_vectors.py``.

What is fixed, and how (everything else in a value then follows deterministically):

* identities: ``Identity(bytes(range(32)), bytes(range(64)))`` is A, ``Identity(bytes(range(
  32, 64)), bytes(range(64, 128)))`` is B;
* time: explicit timestamps (``T0``) everywhere; ``tierlink.wire.signaling.now_ms`` (the offer's
  clock) is patched to return ``T0``; decoders run with ``now=NOW``;
* ``os.urandom`` (AES-GCM nonces in signaling, sealed and ack, PMTU probe nonces) is patched
  by :func:`fixed`: its call ``i`` (from 0, counted per value) returns
  ``SHAKE-256(b"tierlink-refvec/" + str(i)).digest(n)``;
* ML-KEM encapsulation cannot be seeded through ``cryptography``: ``kem_encapsulate`` is
  patched (in ``tierlink.wire.sealed``) to return one real encapsulation to B's key, stored
  under ``inputs.kem`` and reused on regeneration;
* ``AESGCM`` in that module, ``tierlink.wire.signaling`` and ``tierlink.wire.ack`` is wrapped
  to log (key, nonce, plaintext, aad) per value;
* the channel binding example uses a fixed offer-secret key (``BINDING_SECRET_KEY``) and a
  fixed TLS exporter value (``EXPORTER``); in the recorded dial, the HELLO proofs (which
  cover each connection's TLS exporter) are recorded as zero bytes.

Not fixable: ML-DSA-87 signing in ``cryptography`` is hedged (randomized), so the last
4627 bytes (the signature) of a signed value differ on every run; the bytes before it
(``signed`` = VERSION || KIND || BODY) are exact, and the signature verifies. A sealed-sender
value (the offer, the offline envelope) carries its signature inside its AEAD ciphertext, so
its ciphertext differs on every run: its ``clear`` part is exact, and so are its AEAD inputs
except the signature (logged as ``inner``, the plaintext without its last 4627 bytes).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import hashlib
import json
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar
from unittest import mock

import cbor2
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tierlink.identity import SIGNATURE_SIZE, Identity, kem_encapsulate
from tierlink.mailbox import codec as mbcodec
from tierlink.protocol import pmtu
from tierlink.transport.channel import DEFAULT_WINDOW
from tierlink.wire import ack as ackmod
from tierlink.wire import dhtkeys as keys
from tierlink.wire import envelope as envmod
from tierlink.wire import sealed as sealedmod
from tierlink.wire import signaling as sig
from tierlink.wire.channel_frames import (
    PROOF_SIZE,
    PROTOCOL_VERSION,
    TAG_CONTROL,
    TAG_MESSAGES,
    ChannelBinding,
    Hello,
    channel_binding,
    encode_ack,
    encode_hello,
    encode_length,
)
from tierlink.wire.records import CandidateInfo, PeerRecord, next_seq, record_times

HERE = Path(__file__).parent
WIRE_PATH = HERE / "wire.json"
DIAL_PATH = HERE / "dial.json"
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z in ms
NOW = T0 + 1_000  # the decoders' clock: every vector is still valid
SESSION_ID = bytes(range(0xA0, 0xB0))
MESSAGE_IDS = (bytes(range(16)), bytes(range(16, 32)))
ANSWER_LOCATOR = bytes(range(0xC0, 0xE0))
"""The locator the ``answer_key`` vector hashes (a real one is secret and per offer)."""
SIGNED_KINDS = {0x01, 0x06}
SEALED_SENDER_KINDS = {0x02, 0x04}
BINDING_SECRET_KEY = bytes(range(0xC0, 0xE0))  # an offer secret's key
EXPORTER = bytes(range(0xE0, 0x100))  # a connection's TLS exporter value
#: Where a HELLO's proof sits in a control stream: after C, type, version and two u64.
PROOF_OFFSET = 1 + 1 + 1 + 8 + 8


def identities() -> tuple[Identity, Identity]:
    """The fixed identities A (dialer, sender) and B (callee, recipient)."""
    return (Identity(bytes(range(32)), bytes(range(64))),
            Identity(bytes(range(32, 64)), bytes(range(64, 128))))


def candidates() -> tuple[CandidateInfo, ...]:
    """One candidate of each type (the relay one with its related address)."""
    return (
        CandidateInfo("1a2b3c", 1, "udp", 2130706431, "192.0.2.10", 40001, "host"),
        CandidateInfo("4d5e6f", 1, "udp", 1694498815, "198.51.100.7", 61002, "srflx",
                      "192.0.2.10", 40001),
        CandidateInfo("7a8b9c", 1, "udp", 1845501695, "198.51.100.7", 61003, "prflx",
                      "192.0.2.10", 40001),
        CandidateInfo("abcdef", 1, "udp", 16777215, "203.0.113.5", 3478, "relay",
                      "198.51.100.7", 61002),
    )


def params(full: bool) -> sig.SessionDescription:
    """ICE parameters; ``full`` sets every optional key (cert 4, limits 7, QUIC flight 8)."""
    if not full:
        return sig.SessionDescription("uFrg", "p" * 22, candidates()[:1])
    return sig.SessionDescription(
        "uFrg", "p" * 22, candidates(), bytes(range(100, 132)), "messages",
        (16 * 1024 * 1024, DEFAULT_WINDOW), (b"\xc0" + bytes(40), b"\xe1" * 7))


class _LoggingAESGCM:
    """AESGCM that logs what it encrypts (the plaintext and aad are the exact parts)."""

    log: ClassVar[list[dict[str, str]]] = []

    def __init__(self, key: bytes) -> None:
        self._key, self._real = key, AESGCM(key)

    def encrypt(self, nonce: bytes, data: bytes, aad: bytes | None) -> bytes:
        self.log.append({"key": self._key.hex(), "nonce": nonce.hex(),
                         "plaintext": data.hex(), "aad": (aad or b"").hex()})
        return self._real.encrypt(nonce, data, aad)

    def decrypt(self, nonce: bytes, data: bytes, aad: bytes | None) -> bytes:
        return self._real.decrypt(nonce, data, aad)


@contextlib.contextmanager
def fixed(kem: tuple[bytes, bytes]) -> Iterator[list[dict[str, str]]]:
    """Patch the randomness and clock named in the module docstring; yields the AEAD log."""
    counter = [0]

    def urandom(n: int) -> bytes:
        counter[0] += 1
        return hashlib.shake_256(f"tierlink-refvec/{counter[0] - 1}".encode()).digest(n)

    log: list[dict[str, str]] = []
    aead = type("LoggingAESGCM", (_LoggingAESGCM,), {"log": log})
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch("os.urandom", urandom))
        stack.enter_context(mock.patch.object(sig, "now_ms", lambda: T0))
        stack.enter_context(mock.patch.object(sealedmod, "kem_encapsulate", lambda _pk: kem))
        for mod in (sig, sealedmod, ackmod):
            stack.enter_context(mock.patch.object(mod, "AESGCM", aead))
        yield log


def jsonable(obj: Any) -> Any:
    """Decoded fields as JSON: bytes as hex, dataclasses as dicts, tuples as lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, bytes | bytearray):
        return bytes(obj).hex()
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    return obj


# -- the values: name -> (builder, decoder) -----------------------------------------------------
Builders = dict[str, tuple[Callable[[], bytes], Callable[[bytes], Any]]]


def builders(offers: dict[str, bytes]) -> Builders:
    """Every DHT value vector: how to build it and how to decode it with today's code.

    An answer is sealed with its offer's secret: ``offers`` maps "full"/"minimal" to the
    offer values (building an offer stores it there; offers come before answers).
    """
    a, b = identities()

    def secret(which: str) -> sig.OfferSecret:
        return sig.decode_offer(offers[which], b, now=NOW).secret

    def record(mode: str, cands: tuple[CandidateInfo, ...], cert: bytes | None) -> bytes:
        issued, expires = record_times(T0, 600.0)
        return PeerRecord(a.fingerprint, a.public_key, next_seq(0, issued), issued, expires,
                          cands, a.kem_public_key, mode, cert).encode(a)

    def offer(full: bool) -> bytes:
        value, _secret = sig.encode_offer(a, b.fingerprint, b.kem_public_key, SESSION_ID,
                                          params(full))
        offers["full" if full else "minimal"] = value
        return value

    def dec_record(v: bytes) -> Any:
        return PeerRecord.decode(v, now=NOW)

    def dec_descriptor(v: bytes) -> dict[str, Any]:
        d = mbcodec.open_descriptor(v, owner=a.fingerprint, now=NOW)
        return {f.name: getattr(d, f.name) for f in dataclasses.fields(d) if f.name != "value"}

    return {
        "peer_record_public": (lambda: record("public", candidates(), bytes(range(32))),
                               dec_record),
        "peer_record_private": (lambda: record("private", (), None), dec_record),
        "offer_full": (lambda: offer(True), lambda v: sig.decode_offer(v, b, now=NOW)),
        "offer_minimal": (lambda: offer(False), lambda v: sig.decode_offer(v, b, now=NOW)),
        "answer_full": (lambda: sig.encode_answer(secret("full"), params(True)),
                        lambda v: sig.decode_answer(v, secret("full"))),
        "answer_minimal": (lambda: sig.encode_answer(secret("minimal"), params(False)),
                           lambda v: sig.decode_answer(v, secret("minimal"))),
        "offline_envelope": (
            lambda: envmod.create_envelope(a, b.fingerprint, b.kem_public_key, b"hello offline",
                                           3600.0, MESSAGE_IDS[0], created_at_ms=T0)[0],
            lambda v: envmod.open_envelope(v, b, NOW)),
        "offline_ack": (
            lambda: ackmod.create_ack(envmod.ack_token(a, b.fingerprint), MESSAGE_IDS, 3600.0,
                                      created_at_ms=T0),
            lambda v: ackmod.open_ack(v, envmod.ack_token(a, b.fingerprint), NOW)),
        "restart_offer": (
            lambda: sig.encode_restart(example_secret(), sig.TO_CALLEE, restart()),
            lambda v: sig.decode_restart(v, example_secret(), sig.TO_CALLEE)),
        "mailbox_descriptor": (
            lambda: mbcodec.create_descriptor(a, [b.fingerprint], 7 * 24 * 3600.0, now=T0),
            dec_descriptor),
    }


def example_secret() -> sig.OfferSecret:
    """The offer secret of a dial of B by A in session SESSION_ID whose key is
    BINDING_SECRET_KEY (the channel binding and restart examples)."""
    a, b = identities()
    return sig.OfferSecret(BINDING_SECRET_KEY, SESSION_ID, a.fingerprint, b.fingerprint)


def restart() -> sig.Restart:
    """A's first restart offer: new credentials and the candidates of ``params``."""
    fresh = sig.SessionDescription("rstA", "restartpasswordofA0123", candidates()[:2])
    return sig.Restart(sig.RESTART_OFFER, 1, fresh)


def build_value(name: str, kem: tuple[bytes, bytes], table: Builders) -> dict[str, Any]:
    """One value vector: full value, its exact part, AEAD inputs, decoded fields."""
    build, decode = table[name]
    with fixed(kem) as aead:
        value = build()
    entry: dict[str, Any] = {"kind": value[1], "size": len(value), "value": value.hex()}
    if value[1] in SIGNED_KINDS:
        entry["signed"] = value[:-SIGNATURE_SIZE].hex()
        entry["body"] = jsonable(cbor2.loads(value[2:-SIGNATURE_SIZE]))
    if value[1] in SEALED_SENDER_KINDS:
        entry["clear"] = value[:sealedmod.CLEAR_SIZE].hex()
        for used in aead:  # the signature inside the plaintext is not reproducible
            used["inner"] = used.pop("plaintext")[:-2 * SIGNATURE_SIZE]
        entry["inner"] = jsonable(cbor2.loads(bytes.fromhex(aead[0]["inner"])))
    entry["aead"] = aead
    decoded = decode(value)
    entry["fields"] = jsonable(decoded)
    if isinstance(decoded, sig.Offer):
        entry["answer_key"] = decoded.secret.answer_key()
    return entry


def example_binding() -> ChannelBinding:
    """The binding of a dial of B by A in session SESSION_ID whose offer secret's key is
    BINDING_SECRET_KEY."""
    return channel_binding(example_secret())


def channel_frames() -> dict[str, str]:
    """Secure-channel stream bytes (channel_frames.py) and delivery.py's link frames."""
    binding = example_binding()
    proof = binding.proof(True, EXPORTER)
    hello = Hello(PROTOCOL_VERSION, 16 * 1024 * 1024, DEFAULT_WINDOW, proof)
    return {
        "binding_key": binding.key.hex(),
        "proof_dialer": proof.hex(),
        "proof_callee": binding.proof(False, EXPORTER).hex(),
        "control_stream_start": (TAG_CONTROL + encode_hello(hello)).hex(),
        "ack_7": encode_ack(7).hex(),
        "ack_max": encode_ack(2**64 - 1).hex(),
        "message_stream_start": TAG_MESSAGES.hex(),
        "message_hello": (encode_length(5) + b"hello").hex(),
        "message_empty": encode_length(0).hex(),
        "link_message": cbor2.dumps({0: "m", 1: MESSAGE_IDS[0], 2: T0, 3: T0 + 3_600_000,
                                     4: b"payload"}, canonical=True).hex(),
        "link_ack": cbor2.dumps({0: "a", 1: list(MESSAGE_IDS)}, canonical=True).hex(),
    }


def pmtu_vectors(kem: tuple[bytes, bytes]) -> dict[str, Any]:
    """A 64-byte probe above a 40-byte base, its acknowledgement and the size it yields."""
    with fixed(kem):
        prober = pmtu.PathMtuProber(40, (64,))
        probes = prober.start(0.0)
    ack = pmtu.answer(probes[0]) or b""
    return {"base": 40, "sizes": [64], "probes": [p.hex() for p in probes], "ack": ack.hex(),
            "new_size": prober.on_ack(ack)}


def dht_keys(fingerprint: str) -> dict[str, str]:
    """Every key function of keys.py for one fingerprint (the answer key: ANSWER_LOCATOR;
    the offline acks key: of A's ack token for B)."""
    a, b = identities()
    return {
        "ice_candidates_key": keys.ice_candidates_key(fingerprint),
        "offers_key": keys.offers_key(fingerprint),
        "answer_key": keys.answer_key(ANSWER_LOCATOR),
        "offline_queue_key": keys.offline_queue_key(fingerprint),
        "offline_acks_key": keys.offline_acks_key(envmod.ack_token(a, b.fingerprint)),
        "mailboxes_key": keys.mailboxes_key(fingerprint),
    }


#: Values a mailbox frame vector carries, by the name of their own vector: the document
#: writes ``<value.NAME>`` for their bytes instead of repeating them.
MAILBOX_EMBEDDED = ("mailbox_descriptor", "offline_envelope")


def mailbox_frames(values: dict[str, bytes]) -> dict[str, str]:
    """One frame of each mailbox type (mailbox/codec.py) between A (recipient of the
    descriptor, depositor of the envelope) and mailbox B, around the stored ``values``
    (mailbox_descriptor, offline_envelope, offline_ack) and handle 7."""
    _a, b = identities()
    desc, env, ack = (values[n] for n in ("mailbox_descriptor", "offline_envelope",
                                          "offline_ack"))
    frame = mbcodec.encode_frame
    out = {
        "register": mbcodec.register_frame(desc, {b.fingerprint}),
        "register_open": mbcodec.register_frame(desc, None),
        "revoke": frame(mbcodec.REVOKE),
        "deposit": mbcodec.deposit_frame(b.fingerprint, MESSAGE_IDS[0], env),
        "result_ok": mbcodec.result_frame(True, "", MESSAGE_IDS[0]),
        "result_duplicate": mbcodec.result_frame(True, "duplicate", MESSAGE_IDS[0]),
        "result_refused": mbcodec.result_frame(False, "full", MESSAGE_IDS[0]),
        "result_revoked": mbcodec.result_frame(True, dropped=2),
        "collect": frame(mbcodec.COLLECT),
        "item": frame(mbcodec.ITEM, {1: 7, 2: env}),
        "taken": frame(mbcodec.TAKEN, {1: 7, 2: ack}),
        "taken_undeliverable": frame(mbcodec.TAKEN, {1: 7}),
        "receipts_request": frame(mbcodec.RECEIPTS_REQ),
        "receipts": mbcodec.receipts_frame([(MESSAGE_IDS[0], ack), (MESSAGE_IDS[1], None)]),
        "done": frame(mbcodec.DONE, {1: list(MESSAGE_IDS)}),
    }
    return {name: f.hex() for name, f in out.items()}


def stored_values(doc: dict[str, Any]) -> dict[str, bytes]:
    """Every value of a wire.json document, as bytes."""
    return {n: bytes.fromhex(v["value"]) for n, v in doc["values"].items()}


def build_wire(kem: tuple[bytes, bytes]) -> dict[str, Any]:
    """The whole wire.json document."""
    a, b = identities()
    table = builders({})
    values = {name: build_value(name, kem, table) for name in table}
    return {
        "inputs": {
            "T0": T0, "NOW": NOW, "session_id": SESSION_ID.hex(),
            "answer_locator": ANSWER_LOCATOR.hex(),
            "message_ids": [m.hex() for m in MESSAGE_IDS],
            "identities": {n: json.loads(i.to_json()) for n, i in (("A", a), ("B", b))},
            "kem": {"shared_secret": kem[0].hex(), "ciphertext": kem[1].hex()},
            "candidates": jsonable(candidates()),
            "params_full": jsonable(params(True)), "params_minimal": jsonable(params(False)),
        },
        "identity_file_A": a.to_json(),
        "keys": dht_keys(a.fingerprint),
        "values": values,
        "channel": channel_frames(),
        "mailbox": mailbox_frames({n: bytes.fromhex(v["value"]) for n, v in values.items()}),
        "raw_datagrams": "raw_datagrams.RawDatagrams: the payload is the datagram, no framing",
        "pmtu": pmtu_vectors(kem),
    }


def stored_kem(doc: dict[str, Any]) -> tuple[bytes, bytes]:
    """The KEM pair recorded in a wire.json document."""
    return (bytes.fromhex(doc["inputs"]["kem"]["shared_secret"]),
            bytes.fromhex(doc["inputs"]["kem"]["ciphertext"]))


# -- the recorded dial ---------------------------------------------------------------------------
_IN_PUT: contextvars.ContextVar[bool] = contextvars.ContextVar("in_put", default=False)
PING, PONG = b"ping from A", b"pong from B"


def _roles(a: Identity, b: Identity) -> dict[str, str]:
    out = {}
    for who, ident in (("A", a), ("B", b)):
        fp = ident.fingerprint
        out[keys.ice_candidates_key(fp)] = f"record:{who}"
        out[keys.offers_key(fp)] = f"offers:{who}"
        out[keys.offline_queue_key(fp)] = f"offline_queue:{who}"
    out[keys.offline_acks_key(envmod.ack_token(a, b.fingerprint))] = "offline_acks:A->B"
    out[keys.offline_acks_key(envmod.ack_token(b, a.fingerprint))] = "offline_acks:B->A"
    return out


def _describe(
    value: bytes, b: Identity, roles: dict[str, str], offers: list[bytes]
) -> dict[str, Any]:
    """What is stable about a value: kind, body keys, plaintext keys, sizes where fixed."""
    out: dict[str, Any] = {"kind": value[0:2].hex()}
    if value[1] in SIGNED_KINDS:
        out["body_keys"] = sorted(cbor2.loads(value[2:-SIGNATURE_SIZE]))
    if value[1] == 0x01:
        out["size"] = len(value)  # private mode: every field has a fixed size
    if value[1] == 0x02:
        offer = sig.decode_offer(value, b)
        roles[offer.secret.answer_key()] = "answer"
        offers.append(value)
        out["params"] = _params_shape(offer.params)
    if value[1] == 0x03:
        secret = sig.decode_offer(offers[-1], b).secret
        out["params"] = _params_shape(sig.decode_answer(value, secret))
    return out


def _params_shape(p: sig.SessionDescription) -> dict[str, Any]:
    return {"purpose": p.purpose, "candidate_types": [c.type for c in p.candidates],
            "has_cert": p.cert_sha256 is not None, "channel_limits": list(p.channel_limits or ()),
            "quic_flight_datagrams": len(p.quic_flight)}


async def record_dial(proxy_url: str) -> dict[str, Any]:
    """Dial B from A by fingerprint, one message each way, close; record what is stable."""
    from aioquic.quic.connection import QuicConnection

    from tierlink.dht.client import DhtClient
    from tierlink.node import Node, NodeConfig

    a, b = identities()
    roles = _roles(a, b)
    sides: dict[int, str] = {}
    puts: list[tuple[int, str, bytes]] = []
    reads: set[tuple[int, str, str]] = set()
    streams: dict[tuple[str, int], bytes] = {}
    real_put, real_get, real_listen = DhtClient.put, DhtClient.get, DhtClient.listen
    real_values = DhtClient.values
    real_send = QuicConnection.send_stream_data

    async def put(self: DhtClient, key: str, value: bytes, **kw: Any) -> None:
        puts.append((id(self), key, bytes(value)))
        token = _IN_PUT.set(True)
        try:
            await real_put(self, key, value, **kw)
        finally:
            _IN_PUT.reset(token)

    async def get(self: DhtClient, key: str, **kw: Any) -> list[bytes]:
        if not _IN_PUT.get():  # a lone node's read-back after a put is not recorded
            reads.add((id(self), "get", key))
        return await real_get(self, key, **kw)

    def values(self: DhtClient, key: str) -> Any:  # a streamed get (the record lookup)
        reads.add((id(self), "get", key))
        return real_values(self, key)

    def listen(self: DhtClient, key: str, **kw: Any) -> Any:
        reads.add((id(self), "listen", key))
        return real_listen(self, key, **kw)

    def send_stream_data(self: QuicConnection, sid: int, data: bytes, *args: Any,
                         **kw: Any) -> None:
        side = "A" if self._is_client else "B"
        streams[(side, sid)] = streams.get((side, sid), b"") + bytes(data)
        real_send(self, sid, data, *args, **kw)

    def config(ident: Identity) -> NodeConfig:
        return NodeConfig(identity=ident, dht_proxy=proxy_url, host_addresses=["127.0.0.1"],
                          dial_timeout=10.0, ice_timeout=10.0,
                          data_dir=Path(tempfile.mkdtemp(prefix="tierlink-refvec-")))

    with mock.patch.object(DhtClient, "put", put), mock.patch.object(DhtClient, "get", get), \
            mock.patch.object(DhtClient, "listen", listen), \
            mock.patch.object(DhtClient, "values", values), \
            mock.patch.object(QuicConnection, "send_stream_data", send_stream_data):
        async with Node(config(b)) as node_b, Node(config(a)) as node_a:
            assert node_a.dht is not None and node_b.dht is not None
            sides.update({id(node_a.dht): "A", id(node_b.dht): "B"})
            conn = await node_a.connect(b.fingerprint)
            incoming = await node_b.accept(timeout=10.0)
            assert incoming is not None
            await conn.send(PING)
            got_b = await incoming.recv(timeout=10.0)
            await incoming.send(PONG)
            got_a = await conn.recv(timeout=10.0)
            await conn.close()
            await incoming.close()
    offers: list[bytes] = []
    described = [{"by": sides.get(c, "?"), **_describe(v, b, roles, offers)}
                 for c, _k, v in puts]  # roles learns the answer key from the offer
    for entry, (_c, key, _v) in zip(described, puts, strict=True):
        entry["key"] = roles.get(key, "unknown")
    return {
        "messages": [got_b.hex() if got_b else None, got_a.hex() if got_a else None],
        "puts": described,
        "reads": sorted(f"{sides.get(c, '?')} {op} {roles.get(k, 'unknown')}"
                        for c, op, k in reads),
        "first_streams": {f"{side}:{sid}": _without_proof(sid, data).hex()
                          for (side, sid), data in sorted(streams.items())
                          if sid in (2, 3, 6, 7)},
    }


def _without_proof(sid: int, data: bytes) -> bytes:
    """A stream's bytes, a control stream's HELLO proof (connection-specific) zeroed."""
    if sid not in (2, 3):
        return data
    end = PROOF_OFFSET + PROOF_SIZE
    return data[:PROOF_OFFSET] + bytes(PROOF_SIZE) + data[end:]


async def record_dial_on_lone_node() -> dict[str, Any]:
    """Start a lone dhtnode (as tests/conftest.py does), record the dial, stop it."""
    from tierlink.dht import DhtNodeProcess

    node = DhtNodeProcess(no_rate_limit=True)
    await node.start()
    try:
        return await record_dial(node.proxy_url)
    finally:
        await node.stop()


def _write(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")


def main() -> None:
    """Write wire.json (reusing its KEM pair if present; ``--channel``, ``--mailbox``: only
    those vectors; ``--new-values``: only the value vectors it lacks) and, with --dial,
    dial.json."""
    _a, b = identities()
    if "--channel" in sys.argv or "--mailbox" in sys.argv:
        doc = json.loads(WIRE_PATH.read_text())
        if "--channel" in sys.argv:
            doc["channel"] = channel_frames()
        if "--mailbox" in sys.argv:
            doc["values"]["mailbox_descriptor"] = build_value(
                "mailbox_descriptor", stored_kem(doc), builders({}))
            doc["keys"]["mailboxes_key"] = dht_keys(_a.fingerprint)["mailboxes_key"]
            doc["mailbox"] = mailbox_frames(stored_values(doc))
        _write(WIRE_PATH, doc)
    elif "--new-values" in sys.argv:
        doc = json.loads(WIRE_PATH.read_text())
        table = builders({})
        for name in table:
            if name.startswith("offer_"):  # answers need their offers built first
                build_value(name, stored_kem(doc), table)
        for name in table:
            if name not in doc["values"]:
                doc["values"][name] = build_value(name, stored_kem(doc), table)
        _write(WIRE_PATH, doc)
    else:
        kem = (stored_kem(json.loads(WIRE_PATH.read_text())) if WIRE_PATH.exists()
               else kem_encapsulate(b.kem_public_key))
        _write(WIRE_PATH, build_wire(kem))
    if "--dial" in sys.argv:
        _write(DIAL_PATH, asyncio.run(record_dial_on_lone_node()))


if __name__ == "__main__":
    main()
