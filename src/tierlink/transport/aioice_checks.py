"""Connectivity checks on aioice's agent: regular nomination by priority, fast retransmission.

aioice (0.13.0) nominates aggressively: the controlling agent puts USE-CANDIDATE on every
check, so the first pair whose check succeeds wins, and with TURN that is often the relay
while a direct pair was one retransmission away. Its checks retransmit after 500 ms, 1.5 s,
3.5 s, ..., and a check that arrives from the peer on a pair whose own check is in progress
changes nothing, so a check filtered by a NAT that had not yet seen the peer waits 500 ms.

:class:`ScheduledChecks` (the base of :class:`~.aioice_adapter.IceConnection`) replaces
aioice's ``check_start`` and extends ``check_incoming``:

* the controlling agent checks without USE-CANDIDATE; each success is reported to a
  :class:`Nominator`, which applies :func:`tierlink.protocol.nomination.decide` (a direct
  pair at once; a relayed one only after a grace scaled by the relay's RTT) and lets exactly
  one succeeded pair send the nominating check. The controlled agent is aioice's: it
  nominates the pair the controlling agent's USE-CANDIDATE names;
* every check runs as a :class:`CheckTransaction`: the first retransmission after
  :func:`~tierlink.protocol.nomination.check_rto` (100 ms, then 2x the largest RTT seen,
  50-500 ms), doubling, 7 transmissions like aioice; and resent at once when a valid check
  arrives from the address it goes to (RFC 8445 section 7.3.1.4's triggered check: the
  peer's NAT has now seen us, so the copy the NAT dropped gets through; at most
  ``MAX_EARLY_RESENDS`` per check).

Every check goes out through the protocol's ``send_stun``, so the amplification budget of
``limit_unvalidated_checks`` still counts each copy. Every aioice name used here that aioice
does not export is listed in :data:`PRIVATE_NAMES`; ``tests/test_aioice_adapter.py``
resolves each one on the installed aioice.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable
from typing import Any

import aioice
from aioice import stun
from aioice.ice import CandidatePair, StunProtocol, candidate_pair_priority

from tierlink.protocol.nomination import (
    MAX_EARLY_RESENDS,
    GraceSettings,
    Nominate,
    PairFacts,
    PairState,
    check_rto,
    decide,
)

__all__ = ["PRIVATE_NAMES", "CheckTransaction", "Nominator", "ScheduledChecks"]

#: aioice names this module relies on that aioice (0.13.0) does not export; a trailing
#: ``(...)`` lists the parameters a called or overridden function must still take.
PRIVATE_NAMES: tuple[str, ...] = (
    # overridden: aioice calls them on itself
    "aioice.ice.Connection.check_start(pair)",
    "aioice.ice.Connection.check_incoming(message, addr, protocol)",
    # check_start(): aioice's, with our transaction and nomination
    "aioice.ice.Connection.check_state(pair, state)",
    "aioice.ice.Connection.check_complete(pair)",
    "aioice.ice.Connection.build_request(pair, nominate)",
    "aioice.ice.Connection.switch_role(ice_controlling)",
    "aioice.ice.Connection._check_list",
    "aioice.ice.Connection._nominated",
    "aioice.ice.candidate_pair_priority(local, remote, ice_controlling)",
    "aioice.ice.CandidatePair.State.IN_PROGRESS",
    "aioice.ice.CandidatePair.State.SUCCEEDED",
    "aioice.ice.CandidatePair.State.FAILED",
    "aioice.ice.CandidatePair.nominated",
    "aioice.ice.CandidatePair.remote_nominated",
    "aioice.ice.CandidatePair.protocol",
    "aioice.ice.CandidatePair.remote_addr",
    "aioice.ice.CandidatePair.local_candidate",
    "aioice.ice.CandidatePair.remote_candidate",
    # CheckTransaction: the protocol hands responses to transactions[transaction_id]
    "aioice.ice.StunProtocol.transactions",
    "aioice.ice.StunProtocol.send_stun(message, addr)",
    "aioice.stun.Message.add_message_integrity(key)",
    "aioice.stun.Message.check_message_integrity(key)",
    "aioice.stun.Message.transaction_id",
    "aioice.stun.Message.error_code",
    "aioice.stun.Class.RESPONSE",
    "aioice.stun.TransactionError",
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
    """One check's STUN transaction: aioice's ``stun.Transaction`` with a given first
    retransmission timeout and :meth:`resend_now`.

    ``on_send(retransmission, early)`` is told of every copy sent after the first.
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
        self._sent = 0
        self._early = 0
        self._first_sent = 0.0
        #: Seconds from the only transmission to the response; None if resent (ambiguous).
        self.rtt: float | None = None

    def response_received(self, message: stun.Message, addr: Address) -> None:
        """Called by the protocol for a response with our transaction id."""
        if self._future.done() or not message.check_message_integrity(self._key):
            return  # unauthenticated: retransmissions go on (RFC 8489 section 9.1.4)
        if self._sent == 1:
            self.rtt = self._loop.time() - self._first_sent
        if message.message_class == stun.Class.RESPONSE:
            self._future.set_result((message, addr))
        else:
            self._future.set_exception(stun.TransactionFailed(message))

    async def run(self) -> tuple[stun.Message, Address]:
        """Send the check (and its retransmissions); the response, or TransactionError."""
        tid = self.request.transaction_id
        self._protocol.transactions[tid] = self  # type: ignore[assignment]
        try:
            self._retry()
            return await self._future
        finally:
            self._protocol.transactions.pop(tid, None)
            if self._timer is not None:
                self._timer.cancel()

    def resend_now(self) -> bool:
        """Send one more copy now (not counted as a retransmission try); False if the
        transaction ended, has not started, or already resent MAX_EARLY_RESENDS copies."""
        if self._future.done() or not self._sent or self._early >= MAX_EARLY_RESENDS:
            return False
        self._early += 1
        self._send()
        self._on_send(False)
        return True

    def _send(self) -> None:
        if not self._sent:
            self._first_sent = self._loop.time()
        self._sent += 1
        self._protocol.send_stun(self.request, self._raw_addr)

    def _retry(self) -> None:
        if self._future.done():
            return
        if self._sent >= CHECK_TRANSMISSIONS:
            self._future.set_exception(stun.TransactionTimeout())
            return
        if self._sent:
            self._on_send(True)
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


class ScheduledChecks(aioice.Connection):
    """aioice's agent with the checks described in the module docstring; call
    :meth:`_tl_init_checks` from ``__init__``."""

    def _tl_init_checks(self, grace: GraceSettings) -> None:
        self._tl_nominator = Nominator(grace, self._tl_facts)
        self._tl_open: set[CheckTransaction] = set()
        self._tl_succeeded: dict[int, tuple[float, float | None]] = {}
        self._tl_largest_rtt: float | None = None
        self._tl_first_success: tuple[float, bool] | None = None
        self._tl_counts = {"checks_sent": 0, "checks_retransmitted": 0, "checks_resent_early": 0}
        #: loop times of connect()'s start ("started") and end ("ended"), set by connect()
        self._tl_times: dict[str, float] = {}

    def check_report(self) -> dict[str, Any]:
        """How this agent's checks went, JSON-ready (times in ms from the start of checks).

        ``first_success``/``first_success_ms``: the path class (``direct`` or ``relay``) and
        time of the first pair whose check succeeded (the first usable pair);
        ``nominated_ms``: when the selected pair was nominated (ICE completed), also
        ``direct_ms`` when that pair is direct (None on the relay); ``relay_wait_ms``: how long
        the nomination waited for a direct pair after a relayed one had succeeded (0 when a
        direct pair succeeded first); ``checks_*``: transmissions of checks (every copy),
        retransmissions on timeout, copies resent early because the peer's check arrived.
        """
        started = self._tl_times.get("started")

        def ms(t: float | None) -> float | None:
            return None if t is None or started is None else round((t - started) * 1000, 1)

        first = self._tl_first_success
        pair = self._nominated.get(1)
        nominated = self._tl_times.get("ended") if pair is not None else None
        wait = None
        if first is not None and nominated is not None:
            wait = round((nominated - first[0]) * 1000, 1) if first[1] else 0.0
        return {
            "first_success": None if first is None else ("relay" if first[1] else "direct"),
            "first_success_ms": ms(first[0] if first else None),
            "nominated_ms": ms(nominated),
            "direct_ms": ms(nominated) if pair is not None and not _relayed(pair) else None,
            "relay_wait_ms": wait,
            "pairs_succeeded": len(self._tl_succeeded),
            **self._tl_counts,
        }

    # -- the policy's view ----------------------------------------------------------------
    def _tl_facts(self) -> list[PairFacts]:
        facts = []
        for pair in self._check_list:
            key = id(pair)
            state: PairState
            if pair.state == CandidatePair.State.FAILED:
                state = "failed"
            elif key in self._tl_succeeded:
                state = "succeeded"
            else:
                state = "pending"
            at, rtt = self._tl_succeeded.get(key, (None, None))
            facts.append(PairFacts(
                key, _relayed(pair), candidate_pair_priority(
                    pair.local_candidate, pair.remote_candidate, self.ice_controlling),
                state, at, rtt,
            ))
        return facts

    # -- checks ---------------------------------------------------------------------------
    async def _tl_transact(
        self, pair: CandidatePair, request: stun.Message
    ) -> tuple[stun.Message, Address, float | None]:
        assert self.remote_password is not None
        key = self.remote_password.encode("utf8")
        request.add_message_integrity(key)
        transaction = CheckTransaction(
            request, pair.remote_addr, pair.protocol, key, check_rto(self._tl_largest_rtt),
            self._tl_count_resend,
        )
        self._tl_counts["checks_sent"] += 1
        self._tl_open.add(transaction)
        try:
            response, addr = await transaction.run()
        finally:
            self._tl_open.discard(transaction)
        if transaction.rtt is not None:
            self._tl_largest_rtt = max(self._tl_largest_rtt or 0.0, transaction.rtt)
        return response, addr, transaction.rtt

    def _tl_count_resend(self, retransmission: bool) -> None:
        self._tl_counts["checks_sent"] += 1
        self._tl_counts["checks_retransmitted" if retransmission else "checks_resent_early"] += 1

    def _tl_fail(self, pair: CandidatePair) -> None:
        self.check_state(pair, CandidatePair.State.FAILED)
        self.check_complete(pair)
        if self.ice_controlling:
            self._tl_nominator.failed(id(pair))
            self._tl_nominator.changed()

    async def check_start(self, pair: CandidatePair) -> None:
        """Run one pair's check (and, controlling, its nomination when the policy picks it).

        Follows aioice/ice.py ``Connection.check_start`` (lines 1021-1077). Differs: the
        request goes through a :class:`CheckTransaction`; the controlling agent never sets
        USE-CANDIDATE on the first check (aioice does, aggressive nomination), but after a
        success waits for :class:`Nominator` to pick this pair, then sends the nominating
        check (aioice's regular nomination sends it at once, for the first success).
        """
        self.check_state(pair, CandidatePair.State.IN_PROGRESS)
        request = self.build_request(pair, nominate=False)
        try:
            _, addr, rtt = await self._tl_transact(pair, request)
        except stun.TransactionError as exc:
            if exc.response is not None and exc.response.error_code == 487:
                # Role conflict (RFC 8445 section 7.2.5.1), as aioice handles it.
                self.switch_role(ice_controlling="ICE-CONTROLLED" in request.attributes)
                return await self.check_start(pair)
            self._tl_fail(pair)
            return
        if canonical(addr) != canonical(pair.remote_addr):
            self._tl_fail(pair)  # RFC 8445 section 7.2.5.2.1: source address mismatch
            return
        now = asyncio.get_running_loop().time()
        self._tl_succeeded[id(pair)] = (now, rtt)
        if self._tl_first_success is None:
            self._tl_first_success = (now, _relayed(pair))
        if self.ice_controlling:
            await self._tl_nominator.chosen(id(pair))
            try:
                await self._tl_transact(pair, self.build_request(pair, nominate=True))
            except stun.TransactionError:
                self._tl_fail(pair)
                return
            pair.nominated = True
        elif pair.remote_nominated:
            pair.nominated = True
        self.check_state(pair, CandidatePair.State.SUCCEEDED)
        self.check_complete(pair)

    def check_incoming(
        self, message: stun.Message, addr: tuple[str, int], protocol: StunProtocol
    ) -> None:
        """aioice's handling of a valid incoming check (triggered check, nomination flag),
        then every check of ours in progress towards ``addr`` is resent at once."""
        super().check_incoming(message, addr, protocol)
        source = canonical(addr)
        for transaction in list(self._tl_open):
            if transaction.addr == source:
                transaction.resend_now()


def _relayed(pair: CandidatePair) -> bool:
    return "relay" in (pair.local_candidate.type, pair.remote_candidate.type)
