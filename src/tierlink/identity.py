"""A peer's identity: an ML-DSA-87 signing key, an ML-KEM-1024 key, and the fingerprint.

The fingerprint (lowercase hex SHA3-512 of the raw ML-DSA-87 public key, 128 characters)
names the peer everywhere. The key file stores only the two seeds, as JSON with mode 0600,
plus the fingerprint so that loading detects a corrupt or edited file. Key file format:
docs/PROTOCOL.md, section "Identity".
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

import platformdirs
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import mldsa, mlkem

from tierlink.errors import KeyFileError

ALGORITHM = "ML-DSA-87"
KEM_ALGORITHM = "ML-KEM-1024"
KEY_FILE_FORMAT = "tierlink-identity"
KEY_FILE_VERSION = 1
PUBLIC_KEY_SIZE = 2592
SIGNATURE_SIZE = 4627
KEM_PUBLIC_KEY_SIZE = 1568
KEM_CIPHERTEXT_SIZE = 1568
FINGERPRINT_HEX_LEN = 128
#: A key file is a few hundred bytes; anything much larger is not one (read no further).
MAX_KEY_FILE_SIZE = 64 * 1024


def fingerprint_of(public_key: bytes) -> str:
    """Lowercase hex SHA3-512 of a raw ML-DSA-87 public key."""
    return hashlib.sha3_512(public_key).hexdigest()


def is_fingerprint(text: str) -> bool:
    """True if ``text`` looks like a fingerprint: 128 lowercase hex characters."""
    return len(text) == FINGERPRINT_HEX_LEN and all(c in "0123456789abcdef" for c in text)


def verify_signature(public_key: bytes, signature: bytes, data: bytes) -> bool:
    """Verify an ML-DSA-87 signature; False on any failure (bad key, bad signature)."""
    try:
        mldsa.MLDSA87PublicKey.from_public_bytes(public_key).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True


def kem_encapsulate(kem_public_key: bytes) -> tuple[bytes, bytes]:
    """Encapsulate to an ML-KEM-1024 public key: returns (shared_secret, ciphertext)."""
    try:
        key = mlkem.MLKEM1024PublicKey.from_public_bytes(kem_public_key)
    except ValueError as exc:
        raise ValueError(f"invalid ML-KEM-1024 public key: {exc}") from exc
    return key.encapsulate()


def default_identity_path() -> Path:
    """Where ``tierlink id new`` writes by default: the user's XDG data dir."""
    return Path(platformdirs.user_data_dir("tierlink")) / "identity.json"


@dataclass(frozen=True)
class Identity:
    """A private identity: signs records and decapsulates KEM ciphertexts.

    Its repr names only the fingerprint: the seeds never reach logs or tracebacks.
    """

    signing_seed: bytes
    kem_seed: bytes

    def __post_init__(self) -> None:
        object.__setattr__(self, "_sk", mldsa.MLDSA87PrivateKey.from_seed_bytes(self.signing_seed))
        object.__setattr__(self, "_kem", mlkem.MLKEM1024PrivateKey.from_seed_bytes(self.kem_seed))
        pk = self._sk.public_key().public_bytes_raw()
        object.__setattr__(self, "public_key", pk)
        object.__setattr__(self, "fingerprint", fingerprint_of(pk))
        object.__setattr__(self, "kem_public_key", self._kem.public_key().public_bytes_raw())

    # Filled in by __post_init__ (declared for type checkers).
    public_key: bytes = b""
    fingerprint: str = ""
    kem_public_key: bytes = b""
    _sk: mldsa.MLDSA87PrivateKey = None  # type: ignore[assignment]
    _kem: mlkem.MLKEM1024PrivateKey = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Identity(fingerprint={self.fingerprint!r})"

    __str__ = __repr__

    @classmethod
    def generate(cls) -> Identity:
        """A fresh random identity."""
        return cls(os.urandom(32), os.urandom(64))

    def sign(self, data: bytes) -> bytes:
        """ML-DSA-87 signature over ``data`` (4627 bytes)."""
        return self._sk.sign(data)

    def kem_decapsulate(self, ciphertext: bytes) -> bytes:
        """Recover the 32-byte shared secret from an ML-KEM-1024 ciphertext."""
        return self._kem.decapsulate(ciphertext)

    def to_json(self) -> str:
        """The key file's text (contains the private seeds)."""
        return json.dumps(
            {
                "format": KEY_FILE_FORMAT,
                "version": KEY_FILE_VERSION,
                "algorithm": ALGORITHM,
                "signing_seed": self.signing_seed.hex(),
                "kem_algorithm": KEM_ALGORITHM,
                "kem_seed": self.kem_seed.hex(),
                "fingerprint": self.fingerprint,
            },
            indent=2,
        )

    def save(self, path: Path, *, force: bool = False) -> None:
        """Write the key file with mode 0600; refuse to overwrite unless ``force``.

        The text goes to a fresh temp file beside the target (``O_EXCL|O_NOFOLLOW``: a file
        or symlink planted at that name is refused, never written through), is fsynced,
        renamed over the target, and the directory is fsynced so the rename survives a crash.
        """
        path = Path(path)
        if path.exists() and not force:
            raise KeyFileError(f"{path} already exists; use --force to overwrite it")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(tmp, flags, 0o600)
        except OSError as exc:
            raise KeyFileError(f"cannot create {tmp}: {exc.strerror}") from None
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self.to_json() + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)

    @classmethod
    def load(cls, path: Path) -> Identity:
        """Read a key file; raise KeyFileError if missing, unsafe, corrupt or of another version."""
        path = Path(path)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise KeyFileError(
                f"no identity at {path}; create one with 'tierlink id new'"
            ) from None
        except OSError as exc:
            raise KeyFileError(f"cannot read identity {path}: {exc.strerror}") from None
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyFileError(
                f"{path} holds a private key but is accessible by others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); run 'chmod 600 {path}'"
            )
        if st.st_size > MAX_KEY_FILE_SIZE:
            raise KeyFileError(f"{path} is not an identity file: {st.st_size} bytes")
        try:
            with path.open("rb") as f:
                raw = f.read(MAX_KEY_FILE_SIZE + 1)
            if len(raw) > MAX_KEY_FILE_SIZE:
                raise KeyFileError(f"{path} is not an identity file: too large")
            doc = json.loads(raw.decode("utf-8"))
        except (OSError, ValueError) as exc:  # ValueError: bad UTF-8, JSON, over-long integer
            raise KeyFileError(f"{path} is not a readable identity file: {exc}") from None
        except RecursionError:
            raise KeyFileError(f"{path} is not an identity file: nested too deeply") from None
        return cls.from_document(doc, str(path))

    @classmethod
    def from_document(cls, doc: object, where: str = "identity") -> Identity:
        """Validate a parsed key file document."""
        if not isinstance(doc, dict) or doc.get("format") != KEY_FILE_FORMAT:
            raise KeyFileError(f"{where} is not a tierlink identity file")
        if doc.get("version") != KEY_FILE_VERSION:
            raise KeyFileError(
                f"{where} has key file version {doc.get('version')!r}; "
                f"this tierlink reads version {KEY_FILE_VERSION}"
            )
        if doc.get("algorithm") != ALGORITHM or doc.get("kem_algorithm") != KEM_ALGORITHM:
            raise KeyFileError(f"{where}: unsupported algorithm {doc.get('algorithm')!r}")
        try:
            sseed = bytes.fromhex(doc["signing_seed"])
            kseed = bytes.fromhex(doc["kem_seed"])
        except (KeyError, TypeError, ValueError, AttributeError):
            raise KeyFileError(f"{where} is corrupt: seeds missing or not hex") from None
        if len(sseed) != 32 or len(kseed) != 64:
            raise KeyFileError(f"{where} is corrupt: seeds have the wrong length")
        ident = cls(sseed, kseed)
        if doc.get("fingerprint") != ident.fingerprint:
            raise KeyFileError(f"{where} is corrupt: its fingerprint does not match its key")
        return ident


def _fsync_dir(directory: Path) -> None:
    """Make a rename inside ``directory`` durable (best effort where directories cannot be
    opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
