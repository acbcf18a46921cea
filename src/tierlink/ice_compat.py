"""The one place tierlink touches aioice's private attributes.

aioice (0.13) gathers host candidates from every interface except 127.0.0.1, queues every
received datagram in an unbounded ``asyncio.Queue`` and sends through a coroutine. tierlink
needs three things it does not offer publicly:

* gathering restricted to an allow-list of local addresses (loopback included);
* a synchronous receive callback (the QUIC pump and the bounded receive queue sit behind it);
* a synchronous send on the nominated pair, and the nominated pair itself.

``tests/test_ice_compat.py`` checks every private name used here, so an aioice upgrade that
renames one fails loudly there instead of misbehaving at run time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import aioice
from aioice import Candidate
from aioice.ice import StunProtocol, TransportPolicy, get_host_addresses

__all__ = ["PRIVATE_ATTRIBUTES", "IceConnection", "get_host_addresses"]

#: Private aioice.Connection attributes this adapter relies on (checked by the tests).
PRIVATE_ATTRIBUTES = (
    "_local_candidates_start",
    "_local_candidates_end",
    "_local_candidates",
    "_components",
    "_transport_policy",
    "_nominated",
    "_use_ipv4",
    "_use_ipv6",
)

DatagramHandler = Callable[[bytes], None]


class IceConnection(aioice.Connection):
    """An aioice Connection with an address allow-list, a receive callback and sync send."""

    def __init__(
        self,
        *,
        controlling: bool,
        host_addresses: Sequence[str] | None = None,
        stun_server: tuple[str, int] | None = None,
        turn_server: tuple[str, int] | None = None,
        turn_username: str | None = None,
        turn_password: str | None = None,
        relay_only: bool = False,
        use_ipv6: bool = False,
        local_username: str | None = None,
        local_password: str | None = None,
    ) -> None:
        super().__init__(
            ice_controlling=controlling,
            components=1,
            stun_server=stun_server,
            turn_server=turn_server,
            turn_username=turn_username,
            turn_password=turn_password,
            use_ipv4=True,
            use_ipv6=use_ipv6,
            transport_policy=TransportPolicy.RELAY if relay_only else TransportPolicy.ALL,
            local_username=local_username,
            local_password=local_password,
        )
        self._tl_allowed = list(host_addresses) if host_addresses is not None else None
        self._tl_handler: DatagramHandler | None = None
        self._tl_pending: list[bytes] = []

    async def gather_candidates(self) -> None:
        """Gather host candidates only on the allowed addresses (all but 127.0.0.1 if None)."""
        if self._local_candidates_start:
            return
        self._local_candidates_start = True
        addresses: list[str] = []
        if self._transport_policy == TransportPolicy.ALL:
            if self._tl_allowed is None:
                addresses = get_host_addresses(use_ipv4=self._use_ipv4, use_ipv6=self._use_ipv6)
            else:
                addresses = list(self._tl_allowed)
        for component in self._components:
            self._local_candidates += await self.get_component_candidates(
                component=component, addresses=addresses
            )
        self._local_candidates_end = True

    # -- receiving ------------------------------------------------------------------------
    def set_datagram_handler(self, handler: DatagramHandler | None) -> None:
        """Deliver every received datagram to ``handler`` synchronously (None: aioice queue)."""
        self._tl_handler = handler
        if handler is not None:
            pending, self._tl_pending = self._tl_pending, []
            for data in pending:
                handler(data)

    def data_received(self, data: bytes, component: int) -> None:
        """Called by aioice's protocols for every application datagram."""
        handler = self._tl_handler
        if handler is not None:
            handler(data)
        elif len(self._tl_pending) < 64:
            # Datagrams that arrive between ICE completion and the handler being set.
            self._tl_pending.append(data)

    # -- sending --------------------------------------------------------------------------
    def send_nowait(self, data: bytes) -> None:
        """Send one datagram on the nominated pair without awaiting.

        A host/srflx pair sends straight on its UDP socket; a TURN pair may need a channel
        binding first, so its coroutine is scheduled (tasks run in creation order).
        """
        pair = self._nominated.get(1)
        if pair is None:
            raise ConnectionError("ICE connection has no selected pair")
        protocol = pair.protocol
        if type(protocol) is StunProtocol:
            protocol.transport.sendto(data, pair.remote_addr)
        else:
            task = asyncio.ensure_future(protocol.send_data(data, pair.remote_addr))
            task.add_done_callback(_swallow)

    def selected_pair(self) -> tuple[Candidate, Candidate] | None:
        """(local candidate, remote candidate) of the nominated pair, or None."""
        pair = self._nominated.get(1)
        if pair is None:
            return None
        return pair.local_candidate, pair.remote_candidate

    @property
    def is_relayed(self) -> bool:
        """True if the nominated pair goes through a TURN relay on our side."""
        sel = self.selected_pair()
        return sel is not None and sel[0].type == "relay"


def _swallow(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()
