"""ICE consent checks (RFC 7675) handed over to the secure channel's watchdog.

aioice sends a consent check (a STUN Binding request and its response) on the nominated
pair every 4-6 s from each side, for the life of the connection, and closes it after six
unanswered ones (about 30 s). Once a secure channel is open on the pair, its own watchdog
(:mod:`tierlink.transport.liveness`) proves the same thing more strictly: the client's
QUIC PINGs and the server's ACKs of them are authenticated with the connection's keys, a
third party cannot forge them, and the channel (and with it the ICE agent) is closed after
``liveness_timeout`` (15 s by default) without one, where consent would allow 30 s. The
checks then only add idle traffic and loop wake-ups on both sides, so they are stopped
when the channel opens. Raw mode has no channel: its consent checks keep running.

The aioice names used here that aioice (0.13.0) does not export are listed in
:data:`PRIVATE_NAMES` (resolved by ``tests/test_aioice_adapter.py``).
"""

from __future__ import annotations

import aioice

__all__ = ["PRIVATE_NAMES", "consent_checks_running", "stop_consent_checks"]

PRIVATE_NAMES: tuple[str, ...] = (
    # the consent task that aioice's connect() starts (and close() cancels when set)
    "aioice.ice.Connection._query_consent_task",
)


def stop_consent_checks(ice: aioice.Connection) -> bool:
    """Stop ``ice``'s consent checks; False if none were running (not connected yet, or
    already stopped or expired)."""
    task = ice._query_consent_task
    if task is None or task.done():
        return False
    task.cancel()
    ice._query_consent_task = None
    return True


def consent_checks_running(ice: aioice.Connection) -> bool:
    """True while ``ice`` sends consent checks."""
    task = ice._query_consent_task
    return task is not None and not task.done()
