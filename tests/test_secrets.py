"""Secrets never show in a repr or str: identities, node configs, TURN credentials."""

from __future__ import annotations

import base64

from tierlink.identity import Identity
from tierlink.node import NodeConfig
from tierlink.transport.ice import IceSettings, TurnServer

PASSWORD = "correct-horse-battery-staple"


def spellings(secret: bytes) -> list[str]:
    """The ways a secret could leak into text: hex, base64, Python's bytes repr."""
    return [secret.hex(), base64.b64encode(secret).decode(), repr(secret)[2:-1]]


def leaks(text: str, ident: Identity) -> list[str]:
    """The secret spellings (or the TURN password) that appear in ``text``."""
    found = [s for seed in (ident.signing_seed, ident.kem_seed) for s in spellings(seed)
             if s[:16] in text]
    return found + ([PASSWORD] if PASSWORD in text else [])


def test_identity_repr_shows_the_fingerprint_only() -> None:
    ident = Identity.generate()
    for text in (repr(ident), str(ident), f"{ident}", f"{ident!r}"):
        assert leaks(text, ident) == []
        assert ident.fingerprint in text


def test_turn_server_and_ice_settings_hide_the_password() -> None:
    ident = Identity.generate()
    turn = TurnServer("127.0.0.1", 3478, "alice", PASSWORD)
    ice = IceSettings(turn_servers=(turn,), relay_only=True)
    for text in (repr(turn), str(turn), repr(ice), str(ice)):
        assert leaks(text, ident) == []
    assert "alice" in repr(turn) and "3478" in repr(turn)


def test_node_config_repr_holds_no_secret() -> None:
    ident = Identity.generate()
    cfg = NodeConfig(identity=ident, turn_servers=[TurnServer("127.0.0.1", 3478, "u", PASSWORD)])
    for text in (repr(cfg), str(cfg), repr(cfg.ice_settings())):
        assert leaks(text, ident) == []
    assert ident.fingerprint in repr(cfg)
