import hashlib
import json
import os
from pathlib import Path

import pytest

from tierlink.errors import KeyFileError
from tierlink.identity import Identity, fingerprint_of, is_fingerprint, verify_signature
from tierlink.wire.dhtkeys import ice_candidates_key, infohash, offline_queue_key, sha3_512_hex


def test_fingerprint_is_sha3_512_of_public_key() -> None:
    ident = Identity.generate()
    assert ident.fingerprint == hashlib.sha3_512(ident.public_key).hexdigest()
    assert fingerprint_of(ident.public_key) == ident.fingerprint
    assert len(ident.public_key) == 2592 and is_fingerprint(ident.fingerprint)


def test_sign_verify() -> None:
    a, b = Identity.generate(), Identity.generate()
    sig = a.sign(b"data")
    assert verify_signature(a.public_key, sig, b"data")
    assert not verify_signature(b.public_key, sig, b"data")
    assert not verify_signature(a.public_key, sig, b"other")
    assert not verify_signature(b"short", sig, b"data")


def test_kem_roundtrip() -> None:
    from tierlink.identity import kem_encapsulate

    ident = Identity.generate()
    secret, ct = kem_encapsulate(ident.kem_public_key)
    assert ident.kem_decapsulate(ct) == secret


def test_ice_key_derivation_matches_hashlib_vector() -> None:
    fp = "ab" * 64
    inner = hashlib.sha3_512((fp + ":ice_candidates").encode()).hexdigest()
    assert sha3_512_hex(fp + ":ice_candidates") == inner
    assert ice_candidates_key(fp) == hashlib.sha1(inner.encode()).hexdigest()
    # A fixed vector guards against silent changes of the derivation.
    assert infohash("abc") == "a9993e364706816aba3e25717850c26c9cd0d89d"
    assert offline_queue_key(fp) == hashlib.sha1(
        hashlib.sha3_512((fp + ":offline_queue").encode()).hexdigest().encode()
    ).hexdigest()


def test_key_file_roundtrip_and_mode(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "id.json"
    ident = Identity.generate()
    ident.save(path)
    assert (path.stat().st_mode & 0o777) == 0o600
    loaded = Identity.load(path)
    assert loaded.fingerprint == ident.fingerprint
    assert loaded.kem_public_key == ident.kem_public_key


def test_key_file_refuses_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "id.json"
    Identity.generate().save(path)
    with pytest.raises(KeyFileError, match="--force"):
        Identity.generate().save(path)
    other = Identity.generate()
    other.save(path, force=True)
    assert Identity.load(path).fingerprint == other.fingerprint


def test_key_file_rejections(tmp_path: Path) -> None:
    path = tmp_path / "id.json"
    ident = Identity.generate()
    ident.save(path)
    os.chmod(path, 0o640)
    with pytest.raises(KeyFileError, match="accessible by others"):
        Identity.load(path)
    os.chmod(path, 0o600)

    doc = json.loads(path.read_text())
    changes: list[tuple[dict[str, object], str]] = [
        ({"version": 2}, "version 2"),
        ({"format": "x"}, "not a tierlink identity"),
        ({"signing_seed": "zz"}, "corrupt"),
        ({"kem_seed": "00"}, "corrupt"),
        ({"fingerprint": "00" * 64}, "fingerprint does not match"),
    ]
    for change, match in changes:
        bad = {**doc, **change}
        path.write_text(json.dumps(bad))
        with pytest.raises(KeyFileError, match=match):
            Identity.load(path)
    path.write_bytes(b"\x00\xff garbage")
    with pytest.raises(KeyFileError, match="not a readable identity"):
        Identity.load(path)
    with pytest.raises(KeyFileError, match="no identity"):
        Identity.load(tmp_path / "missing.json")


def test_key_file_is_never_written_through_a_planted_symlink(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "id.json"
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    (tmp_path / "id.json.tmp").symlink_to(victim)  # the name a fixed-suffix writer would use
    first = Identity.generate()
    first.save(path)
    assert victim.read_text() == "untouched"
    assert Identity.load(path).fingerprint == first.fingerprint
    # The random temp name guessed and planted as a symlink: refused, nothing written.
    monkeypatch.setattr("tierlink.identity.secrets.token_hex", lambda n: "guessed")
    (tmp_path / ".id.json.guessed.tmp").symlink_to(victim)
    with pytest.raises(KeyFileError, match="cannot create"):
        Identity.generate().save(path, force=True)
    assert victim.read_text() == "untouched"
    assert Identity.load(path).fingerprint == first.fingerprint
    monkeypatch.undo()
    # The target itself a symlink: the rename replaces the link, the victim stays as it was.
    path.unlink()
    path.symlink_to(victim)
    ident = Identity.generate()
    ident.save(path, force=True)
    assert victim.read_text() == "untouched" and not path.is_symlink()
    assert Identity.load(path).fingerprint == ident.fingerprint
    assert (path.stat().st_mode & 0o777) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == [
        ".id.json.guessed.tmp", "id.json.tmp"]  # no temp file of ours left behind


@pytest.mark.parametrize("content", [
    b"[" * 50_000 + b"]" * 50_000,  # nested past the JSON decoder's recursion limit
    b'{"a": ' * 20_000 + b"1" + b"}" * 20_000,
    b" " * (1 << 20) + b"{}",  # far larger than any key file
    b"[1, 2, 3]",
    b'"tierlink-identity"',
    b"null",
    b'{"format": "tierlink-identity", "version": 1, "algorithm": "ML-DSA-87", '
    b'"kem_algorithm": "ML-KEM-1024", "signing_seed": 5, "kem_seed": []}',
], ids=["nested-list", "nested-object", "huge", "list", "string", "null", "seed-types"])
def test_hostile_key_files_are_clean_errors(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "id.json"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(KeyFileError):
        Identity.load(path)
