"""Connectivity checks on aioice's agent: regular nomination by priority, fast retransmission.

aioice (0.13.0) nominates aggressively: the controlling agent puts USE-CANDIDATE on every
check, so the first pair whose check succeeds wins, and with TURN that is often the relay
while a direct pair was one retransmission away. Its checks retransmit after 500 ms, 1.5 s,
3.5 s, ..., and a check that arrives from the peer on a pair whose own check is in progress
changes nothing, so a check filtered by a NAT that had not yet seen the peer waits 500 ms.

:class:`ScheduledChecks` (the base of :class:`~.aioice_adapter.IceConnection`) replaces
aioice's ``connect`` and ``check_start`` and extends ``check_incoming``:

* ``connect`` is aioice's check loop without its idle waits: aioice sleeps one pacing
  interval (Ta, 20 ms) after starting the *last* check, and sees a completed check list
  only at its next Ta; here the loop ends once nothing is left to start and returns the
  moment the list completes, and Ta is ``check_interval`` (10 ms by default);
* the controlling agent checks without USE-CANDIDATE; each success is reported to a
  :class:`~.aioice_transaction.Nominator`, which applies
  :func:`tierlink.protocol.nomination.decide` (a direct pair at once; a relayed one only
  after a grace scaled by the relay's RTT) and lets exactly one succeeded pair send the
  nominating check. The controlled agent is aioice's: it nominates the pair the
  controlling agent's USE-CANDIDATE names;
* every check runs as a :class:`~.aioice_transaction.CheckTransaction`: the first
  retransmission after :func:`~tierlink.protocol.nomination.check_rto` (100 ms, then 2x the
  largest RTT seen, 50-500 ms), doubling, 7 transmissions like aioice; and resent at once
  when a valid check arrives from the address it goes to (RFC 8445 section 7.3.1.4's
  triggered check: the peer's NAT has now seen us, so the copy the NAT dropped gets
  through; at most ``MAX_EARLY_RESENDS`` per check).

Every check goes out through the protocol's ``send_stun``, so the amplification budget of
``limit_unvalidated_checks`` still counts each copy. Every aioice name used here that aioice
does not export is listed in :data:`PRIVATE_NAMES`; ``tests/test_aioice_adapter.py``
resolves each one on the installed aioice.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aioice
from aioice import stun
from aioice.ice import (
    ICE_COMPLETED,
    ICE_FAILED,
    CandidatePair,
    StunProtocol,
    candidate_pair_priority,
)

from tierlink.protocol.nomination import GraceSettings, PairFacts, PairState, check_rto
from tierlink.transport.aioice_transaction import (
    Address,
    CheckTransaction,
    Nominator,
    canonical,
)

__all__ = ["DEFAULT_CHECK_INTERVAL", "MIN_CHECK_INTERVAL", "PRIVATE_NAMES", "ScheduledChecks"]

#: aioice names this module relies on that aioice (0.13.0) does not export; a trailing
#: ``(...)`` lists the parameters a called or overridden function must still take.
PRIVATE_NAMES: tuple[str, ...] = (
    # overridden: aioice calls them on itself (connect: the application)
    "aioice.ice.Connection.connect()",
    "aioice.ice.Connection.check_start(pair)",
    "aioice.ice.Connection.check_incoming(message, addr, protocol)",
    # connect(): aioice's check loop
    "aioice.ice.Connection._local_candidates_end",
    "aioice.ice.Connection._remote_candidates",
    "aioice.ice.Connection._pair_remote_candidate(remote_candidate)",
    "aioice.ice.Connection.sort_check_list()",
    "aioice.ice.Connection._unfreeze_initial()",
    "aioice.ice.Connection._early_checks",
    "aioice.ice.Connection._early_checks_done",
    "aioice.ice.Connection._check_periodic()",
    "aioice.ice.Connection._remote_candidates_expected()",
    "aioice.ice.Connection._check_list",
    "aioice.ice.Connection._check_list_state",
    "aioice.ice.Connection._query_consent_task",
    "aioice.ice.Connection.query_consent()",
    "aioice.ice.CandidatePair.state",
    "aioice.ice.CandidatePair.task",
    "aioice.ice.CandidatePair.State.WAITING",
    "aioice.ice.CandidatePair.State.FROZEN",
    "aioice.ice.ICE_COMPLETED",
    "aioice.ice.ICE_FAILED",
    # check_start(): aioice's, with our transaction and nomination
    "aioice.ice.Connection.check_state(pair, state)",
    "aioice.ice.Connection.check_complete(pair)",
    "aioice.ice.Connection.build_request(pair, nominate)",
    "aioice.ice.Connection.switch_role(ice_controlling)",
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
    "aioice.stun.Message.error_code",
    "aioice.stun.TransactionError",
)

#: The pacing of connectivity checks (Ta; aioice's is 20 ms, RFC 8445 section 14.2 forbids
#: < 5 ms). The pair that works is often the second or fifth of a list ordered by priority
#: (the peer's LAN address comes first), so Ta multiplies into every connect time.
DEFAULT_CHECK_INTERVAL = 0.01
MIN_CHECK_INTERVAL = 0.005
_UNSTARTED = (CandidatePair.State.WAITING, CandidatePair.State.FROZEN)


class ScheduledChecks(aioice.Connection):
    """aioice's agent with the checks described in the module docstring; call
    :meth:`_tl_init_checks` from ``__init__``."""

    def _tl_init_checks(self, grace: GraceSettings, check_interval: float) -> None:
        if check_interval < MIN_CHECK_INTERVAL:
            raise ValueError(f"check_interval must be >= {MIN_CHECK_INTERVAL} s (RFC 8445 Ta)")
        self._tl_check_interval = check_interval
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

    # -- the check loop ---------------------------------------------------------------------
    async def connect(self) -> None:
        """aioice's ``connect`` (RFC 8445 checks, nomination as in the module docstring)
        minus the idle Ta.

        Starts one check per ``check_interval`` like aioice, but stops pacing as soon as no
        pair is left to start (and no remote candidate is expected) or the check list
        completes, so the result is seen the moment it is known. Raises ConnectionError if
        ICE fails.
        """
        # A copy of aioice/ice.py Connection.connect (lines 608-657). Differs only in the
        # check loop ("Perform the checks", lines 636-640: ``while True: if not
        # self._check_periodic(): break; await asyncio.sleep(0.02)``): the sleep is
        # check_interval and ends early when the check list completes or fails (aioice
        # would see that only at its next Ta), and the loop ends without it once every
        # pair's check has started (a started pair has its task set before its state leaves
        # WAITING/FROZEN) and no remote candidate is expected: aioice's next
        # Connection._check_periodic call (lines 995-1019) would start nothing and return
        # False.
        if not self._local_candidates_end:
            raise ConnectionError("Local candidates gathering was not performed")
        if self.remote_username is None or self.remote_password is None:
            raise ConnectionError("Remote username or password is missing")
        loop = asyncio.get_running_loop()
        self._tl_times["started"] = loop.time()
        for remote_candidate in self._remote_candidates:
            self._pair_remote_candidate(remote_candidate)
        self.sort_check_list()
        self._unfreeze_initial()
        for early_check in self._early_checks:
            self.check_incoming(*early_check)
        self._early_checks.clear()
        self._early_checks_done = True
        outcome = asyncio.ensure_future(self._check_list_state.get())
        try:
            while self._check_periodic():
                if not self._remote_candidates_expected() and not any(
                    p.state in _UNSTARTED and p.task is None for p in self._check_list
                ):
                    break  # aioice would sleep Ta here only to find nothing left to start
                await asyncio.wait([outcome], timeout=self._tl_check_interval)
                if outcome.done():
                    break  # completed or failed: no need to wait out the Ta
            res = await outcome if self._check_list else ICE_FAILED
        finally:
            outcome.cancel()
            self._tl_nominator.close()
        for check in self._check_list:
            if check.task:
                check.task.cancel()
        self._tl_times["ended"] = loop.time()
        if res != ICE_COMPLETED:
            raise ConnectionError("ICE negotiation failed")
        self._query_consent_task = asyncio.create_task(self.query_consent())

    # -- checks ---------------------------------------------------------------------------
    async def _tl_transact(
        self, pair: CandidatePair, request: stun.Message
    ) -> tuple[stun.Message, Address, float | None]:
        assert self.remote_password is not None
        key = self.remote_password.encode("utf8")
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
