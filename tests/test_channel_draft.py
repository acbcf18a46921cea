"""ChannelDraft: the dialer's QUIC client and first flight built before ICE connects."""

from __future__ import annotations

import asyncio

import pytest

from tests.test_channel import connect_ice
from tierlink.certs import LocalCertificate
from tierlink.channel import ChannelDraft, open_channel
from tierlink.errors import HandshakeFailed


@pytest.mark.parametrize("stale", [False, True])
async def test_draft_prepared_before_ice_opens_a_working_channel(stale: bool) -> None:
    ca, cb = LocalCertificate.generate(), LocalCertificate.generate()
    liveness = 0.5 if stale else 15.0
    draft = ChannelDraft(certificate=ca, liveness_timeout=liveness)  # before any ICE
    a, b = await connect_ice()
    try:
        if stale:
            await asyncio.sleep(liveness + 0.1)  # rebuilt at open
        dialer, callee = await asyncio.gather(
            draft.open(a, cb.sha256),
            open_channel(b, is_client=False, certificate=cb, peer_cert_sha256=ca.sha256),
        )
        assert await dialer.send(b"prepared") == 1
        assert await callee.recv(5) == b"prepared"
        await dialer.close()
        await callee.close()
        with pytest.raises(RuntimeError, match="one channel"):
            await draft.open(a, cb.sha256)
    finally:
        await a.close()
        await b.close()


async def test_draft_still_enforces_the_pin_given_at_open() -> None:
    """The pin is set after the ClientHello was built: a wrong callee is still refused."""
    ca, cb, impostor = (LocalCertificate.generate() for _ in range(3))
    draft = ChannelDraft(certificate=ca)
    a, b = await connect_ice()
    try:
        results = await asyncio.gather(
            draft.open(a, cb.sha256),
            open_channel(b, is_client=False, certificate=impostor, peer_cert_sha256=ca.sha256),
            return_exceptions=True,
        )
        assert all(isinstance(r, HandshakeFailed) for r in results), results
        assert impostor.sha256.hex() in str(results[0]) and "does not match" in str(results[0])
    finally:
        await a.close()
        await b.close()
