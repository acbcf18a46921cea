"""The asyncio side of direct-first checks: one check's STUN transaction, and the nominator.

:class:`CheckTransaction` is aioice's ``stun.Transaction`` (aioice/stun.py lines 336-410)
with a first retransmission timeout chosen per check and :meth:`CheckTransaction.resend_now`;
:class:`Nominator` runs :func:`tierlink.protocol.nomination.decide` on the controlling
agent. Both serve :class:`~.aioice_checks.ScheduledChecks`.

Every aioice name used here that aioice does not export is listed in :data:`PRIVATE_NAMES`;
``tests/test_aioice_adapter.py`` resolves each one on the installed aioice.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable
from typing import Any

from aioice import stun
from aioice.ice import StunProtocol

from tierlink.protocol.nomination import (
    MAX_EARLY_RESENDS,
    GraceSettings,
    Nominate,
    PairFacts,
    decide,
)

__all__ = ["CHECK_TRANSMISSIONS", "PRIVATE_NAMES", "CheckTransaction", "Nominator", "canonical"]

#: aioice names this module relies on that aioice (0.13.0) does not export; a trailing
#: ``(...)`` lists the parameters a called function must still take.
PRIVATE_NAMES: tuple[str, ...] = (
    # CheckTransaction: the protocol hands responses to transactions[transaction_id]
    "aioice.ice.StunProtocol.transactions",
    "aioice.ice.StunProtocol.send_stun(message, addr)",
    "aioice.stun.Message(message_method, message_class, transaction_id, attributes)",
    "aioice.stun.Message.add_message_integrity(key)",
    "aioice.stun.Message.check_message_integrity(key)",
    "aioice.stun.Message.transaction_id",
    "aioice.stun.Message.message_method",
    "aioice.stun.Message.message_class",
    "aioice.stun.Message.attributes",
    "aioice.stun.Class.RESPONSE",
    "aioice.stun.TransactionFailed(response)",
    "aioice.stun.TransactionTimeout",
)

#: Transmissions of one check before it fails (aioice: 1 + stun.RETRY_MAX).
CHECK_TRANSMISSIONS = 7
Address = tuple[str, int]


def canonical(addr: tuple[Any, ...]) -> Address:
    """``(host, port)`` with the host in one text form (IPv6 has several)."""
    try:
        return str(ipaddress.ip_address(addr[0])), int(addr[1])
    except ValueError:
        return str(addr[0]), int(addr[1])


class CheckTransaction:
    """One check: aioice's ``stun.Transaction`` with a first retransmission timeout chosen per
    check, :meth:`resend_now`, and a fresh transaction id on every copy.

    Each copy is a new STUN transaction of the same request (RFC 8445 section 7.2.5.4 makes
    every triggered check a new one), so a response says which copy it answers and the RTT
    is exact even when copies were resent (a retransmitted STUN transaction's RTT is
    ambiguous: with a 100 ms first timeout and a 250 ms path, every check would be).
    ``request`` is unsigned; each copy is signed with ``integrity_key``. ``on_send``
    (``True``: a retransmission on timeout, ``False``: an early resend) is told of every
    copy after the first.
    """

    def __init__(
        self, request: stun.Message, addr: Address, protocol: StunProtocol,
        integrity_key: bytes, rto: float, on_send: Callable[[bool], None],
    ) -> None:
        self.request = request
        self.addr = canonical(addr)
        self._raw_addr = addr
        self._protocol = protocol
        self._key = integrity_key
        self._delay = rto
        self._on_send = on_send
        self._loop = asyncio.get_running_loop()
        self._future: asyncio.Future[tuple[stun.Message, Address]] = self._loop.create_future()
        self._timer: asyncio.TimerHandle | None = None
        self._copies: dict[bytes, float] = {}  # transaction id -> loop time sent
        self._retries = 0
        self._early = 0
        #: Seconds from sending the copy that was answered to its response.
        self.rtt: float | None = None

    @property
    def copies(self) -> int:
        """Copies sent so far."""
        return len(self._copies)

    def response_received(self, message: stun.Message, addr: Address) -> None:
        """Called by the protocol for a response to one of our copies."""
        sent = self._copies.get(message.transaction_id)
        if self._future.done() or sent is None:
            return
        if not message.check_message_integrity(self._key):
            return  # unauthenticated: retransmissions go on (RFC 8489 section 9.1.4)
        self.rtt = self._loop.time() - sent
        if message.message_class == stun.Class.RESPONSE:
            self._future.set_result((message, addr))
        else:
            self._future.set_exception(stun.TransactionFailed(message))

    async def run(self) -> tuple[stun.Message, Address]:
        """Send the check (and its retransmissions); the response, or TransactionError."""
        try:
            self._retry()
            return await self._future
        finally:
            for tid in self._copies:
                self._protocol.transactions.pop(tid, None)
            if self._timer is not None:
                self._timer.cancel()

    def resend_now(self) -> bool:
        """Send one more copy now (not counted as a retransmission try); False if the
        check ended, has not started, or already resent MAX_EARLY_RESENDS copies."""
        if self._future.done() or not self._copies or self._early >= MAX_EARLY_RESENDS:
            return False
        self._early += 1
        self._send()
        self._on_send(False)
        return True

    def _send(self) -> None:
        attributes = {k: v for k, v in self.request.attributes.items()
                      if k not in ("MESSAGE-INTEGRITY", "FINGERPRINT")}
        copy = stun.Message(self.request.message_method, self.request.message_class,
                            attributes=attributes)  # a fresh random transaction id
        copy.add_message_integrity(self._key)
        self._copies[copy.transaction_id] = self._loop.time()
        self._protocol.transactions[copy.transaction_id] = self  # type: ignore[assignment]
        self._protocol.send_stun(copy, self._raw_addr)

    def _retry(self) -> None:
        if self._future.done():
            return
        if self._retries >= CHECK_TRANSMISSIONS:
            self._future.set_exception(stun.TransactionTimeout())
            return
        if self._retries:
            self._on_send(True)
        self._retries += 1
        self._send()
        self._timer = self._loop.call_later(self._delay, self._retry)
        self._delay *= 2


class Nominator:
    """Lets exactly one succeeded pair nominate, when :func:`decide` says so.

    ``facts()`` describes every pair now. A pair whose check succeeded awaits
    :meth:`chosen`; :meth:`changed` (after every check outcome, and at the grace deadline)
    asks the policy again.
    """

    def __init__(self, settings: GraceSettings, facts: Callable[[], list[PairFacts]]) -> None:
        self.settings = settings
        self._facts = facts
        self._waiting: dict[int, asyncio.Future[bool]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._nominating: int | None = None
        #: The decision that picked the pair being nominated (None before one).
        self.decision: Nominate | None = None

    async def chosen(self, key: int) -> None:
        """Return once the pair ``key`` (its check succeeded) is picked to nominate (a pair
        never picked waits until the agent completes and cancels its check)."""
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting[key] = fut
        self.changed()
        try:
            await fut
        finally:
            self._waiting.pop(key, None)

    def changed(self) -> None:
        """Ask the policy again (a check ended, or the grace deadline came)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._nominating is not None:
            return
        loop = asyncio.get_running_loop()
        decision = decide(self._facts(), loop.time(), self.settings)
        if isinstance(decision, Nominate):
            fut = self._waiting.get(decision.key)
            if fut is not None and not fut.done():
                self._nominating = decision.key
                self.decision = decision
                fut.set_result(True)
        elif decision.until is not None:
            self._timer = loop.call_at(decision.until, self.changed)

    def failed(self, key: int) -> None:
        """The pair ``key`` could not be nominated: pick again."""
        if self._nominating == key:
            self._nominating = None
            self.changed()

    def close(self) -> None:
        """Stop the grace timer."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
