"""Counting ML-DSA verifications: every signed value's check goes through one name, so a test
can prove structurally (not by timing) which values cost a signature verification."""

from __future__ import annotations

import pytest

import tierlink.wire.records as records_mod
from tierlink.identity import verify_signature


class VerifyCounter:
    """Counts calls to ``tierlink.wire.records.verify_signature`` while installed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0

        def counted(public_key: bytes, signature: bytes, data: bytes) -> bool:
            self.calls += 1
            return verify_signature(public_key, signature, data)

        monkeypatch.setattr(records_mod, "verify_signature", counted)


@pytest.fixture
def verifies(monkeypatch: pytest.MonkeyPatch) -> VerifyCounter:
    """A :class:`VerifyCounter` for this test."""
    return VerifyCounter(monkeypatch)
