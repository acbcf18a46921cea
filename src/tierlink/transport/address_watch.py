"""Noticing that a connection's local address went away, without polling.

One :class:`AddressWatch` per event loop listens to the kernel's address changes (Linux
rtnetlink, groups ``RTMGRP_IPV4_IFADDR`` and ``RTMGRP_IPV6_IFADDR``): no timer and no
traffic, the loop wakes only when an address is added or removed. After a change, every
watched connection whose selected pair sends from an address that can no longer be bound
is told its path is suspect (``address``). Where rtnetlink is not available the watch does
nothing; dead paths are then noticed by their unanswered packets alone
(:mod:`tierlink.transport.path_migration`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import weakref
from collections.abc import Callable

log = logging.getLogger(__name__)

RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV6_IFADDR = 0x100
#: Most bytes read from the netlink socket per change (the messages are only a wake-up).
_READ_SIZE = 65536


def address_usable(address: str) -> bool:
    """True if a UDP socket can still be bound to ``address`` (it is configured here)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.bind((address, 0))
    except OSError as exc:
        return exc.errno not in (errno.EADDRNOTAVAIL, errno.EINVAL)
    return True


class AddressWatch:
    """Calls each watched path's ``on_gone()`` once its local address stops being usable."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        #: path id -> (its local address, called once it is gone)
        self._paths: dict[int, tuple[Callable[[], str | None], Callable[[], None]]] = {}
        self._ids = 0
        self._sock: socket.socket | None = None
        self._check_handle: asyncio.Handle | None = None
        self.changes = 0
        """Address changes the kernel reported (batches of netlink messages)."""

    @property
    def listening(self) -> bool:
        """True while the netlink socket is open (only while something is watched)."""
        return self._sock is not None

    def watch(self, address: Callable[[], str | None], on_gone: Callable[[], None]) -> int:
        """Watch the address ``address()`` gives (None: nothing to check now); returns the
        id to :meth:`unwatch` with."""
        self._ids += 1
        self._paths[self._ids] = (address, on_gone)
        if self._sock is None:
            self._open()
        return self._ids

    def unwatch(self, path_id: int) -> None:
        """Stop watching; the netlink socket closes with the last path."""
        self._paths.pop(path_id, None)
        if not self._paths and self._sock is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    def _open(self) -> None:
        family = getattr(socket, "AF_NETLINK", None)
        if family is None:
            return
        try:
            sock = socket.socket(family, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        except OSError as exc:
            log.debug("no address change notifications: %s", exc)
            return
        try:
            sock.bind((0, RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))
            sock.setblocking(False)
            self._loop.add_reader(sock.fileno(), self._readable)
        except OSError as exc:
            log.debug("no address change notifications: %s", exc)
            sock.close()
            return
        self._sock = sock

    def _readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while sock.recv(_READ_SIZE):
                pass
        self.changes += 1
        if self._check_handle is None:
            self._check_handle = self._loop.call_soon(self.check)

    def check(self) -> None:
        """Tell every watched path whose address is gone (also run after each change)."""
        self._check_handle = None
        for address, on_gone in list(self._paths.values()):
            addr = address()
            if addr is not None and not address_usable(addr):
                on_gone()


_WATCHES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AddressWatch] = (
    weakref.WeakKeyDictionary()
)


def address_watch() -> AddressWatch:
    """The running loop's address watch (made on first use)."""
    loop = asyncio.get_running_loop()
    watch = _WATCHES.get(loop)
    if watch is None:
        watch = _WATCHES[loop] = AddressWatch(loop)
    return watch
