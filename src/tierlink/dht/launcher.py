"""The one way to run ``dhtnode`` (Debian's OpenDHT node) with its REST proxy.

Everything that runs a dhtnode goes through here: the Node's embedded DHT, ``tierlink dht
serve``, the demo, the benchmark, the tests (:func:`start_nodes`) and the NAT lab, which runs
:class:`DhtNodeCommand` inside a network namespace with its own process bookkeeping.

Ports. An unset UDP port is passed as ``-p 0``: the kernel picks it and we read back the port
the child actually bound from ``/proc/<pid>/net/udp``; that file shows the child's own
network namespace, so this works under ``ip netns exec`` as well. dhtnode reads proxy port 0
as "no proxy", so an unset proxy port is picked free here; the node counts as started only
once the listening TCP socket on that port belongs to the child, and a child that lost the
port to another program in between (dhtnode aborts) is started again on a fresh one.

:class:`DhtNodeProcess` is the supervised child: ``PR_SET_PDEATHSIG=SIGKILL`` makes it die with
its parent even when the parent is SIGKILLed, and an unexpected exit restarts it on the same
ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tierlink.dht.client import DhtClient
from tierlink.dht.proc_sockets import bound_udp_port
from tierlink.errors import DhtError, DhtNodeMissing, DhtUnavailable
from tierlink.hostport import format_hostport

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "the 'dhtnode' program (OpenDHT) is not installed; on Debian/Ubuntu run "
    "'sudo apt-get install dhtnode', or pass --dht-proxy URL to use an existing OpenDHT proxy"
)
_PR_SET_PDEATHSIG = 1
#: Starts with a freshly picked proxy port before giving up (a lost port race costs one).
_PROXY_PORT_TRIES = 3
#: What a node that cannot reach the DHT over UDP should do instead.
UDP_BLOCKED_HINT = (
    "UDP may be blocked on this network (many corporate and hotel networks block it); use an "
    "OpenDHT proxy reachable over TCP instead of the embedded node: --dht-proxy "
    "https://HOST/ (port 443) or http://HOST/ (port 80)"
)


def _die_with_parent() -> None:
    """preexec hook: ask the kernel to SIGKILL us when the parent dies (Linux)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    """A port the kernel says is free right now (for UDP and TCP alike)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class DhtNodeCommand:
    """One dhtnode command line: ``dhtnode -s -p PORT --proxyserver PROXY_PORT ...``.

    ``port`` 0 lets the kernel pick the UDP port. ``netns`` runs it through ``ip netns exec``
    (the pid stays the child's: ``ip`` execs dhtnode). dhtnode takes one bootstrap node.
    ``log_file``: write OpenDHT's verbose log (searches, requests, proxy stats) there.
    """

    proxy_port: int
    port: int = 0
    proxy_host: str = "127.0.0.1"
    bootstrap: tuple[str, int] | None = None
    no_rate_limit: bool = False
    netns: str | None = None
    executable: str = "dhtnode"
    log_file: str | None = None

    def argv(self) -> list[str]:
        """The argv to execute; DhtNodeMissing with the install hint if dhtnode is absent."""
        exe = shutil.which(self.executable)
        if exe is None:
            raise DhtNodeMissing(INSTALL_HINT)
        argv = [exe, "-s", "-p", str(self.port), "--proxyserver", str(self.proxy_port),
                "--proxy-addr", self.proxy_host]
        if self.no_rate_limit:
            argv.append("-U")
        if self.bootstrap is not None:
            argv += ["-b", format_hostport(*self.bootstrap)]
        if self.log_file is not None:
            argv += ["-v", "-l", self.log_file]
        if self.netns is not None:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        return argv


def wait_started(proc: subprocess.Popen[Any], proxy_port: int, timeout: float = 10.0) -> int:
    """Blocking: wait until a dhtnode started as ``proc`` (any namespace) listens on its proxy
    port; returns its UDP port. DhtError if it exits, loses the port, or times out."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise DhtError(f"dhtnode exited at start (code {proc.returncode})")
        port, taken = bound_udp_port(proc.pid, proxy_port)
        if port is not None:
            return port
        if taken:
            raise DhtError(f"TCP port {proxy_port} (dhtnode proxy) is taken by another program")
        if time.monotonic() > deadline:
            raise DhtError(f"dhtnode did not listen on TCP port {proxy_port} within {timeout} s")
        time.sleep(0.02)


class DhtNodeProcess:
    """A supervised ``dhtnode`` child with its REST proxy on ``proxy_host:proxy_port``.

    ``port`` None: the kernel picks the UDP port; :attr:`port` holds it once started.
    ``proxy_port`` None: a free one is picked. ``netns``: run inside that network namespace
    (``proxy_host`` must then be one of its addresses; readiness is checked through ``/proc``
    only, the proxy being unreachable from here). With ``bootstrap``, :meth:`start` waits up
    to ``join_timeout`` for the node to know another DHT node; dhtnode takes one bootstrap
    node per start, so a node that reached none is started again with the next one, in the
    order given. If none answers, :class:`DhtUnavailable` says to use a proxy over TCP
    (``--dht-proxy``). ``log_file``: OpenDHT's verbose log goes there.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        proxy_port: int | None = None,
        proxy_host: str = "127.0.0.1",
        bootstrap: Sequence[tuple[str, int]] = (),
        no_rate_limit: bool = False,
        netns: str | None = None,
        executable: str = "dhtnode",
        start_timeout: float = 10.0,
        join_timeout: float = 10.0,
        log_file: str | None = None,
    ) -> None:
        self.port = port
        self.proxy_port = proxy_port
        self.proxy_host = proxy_host
        self.bootstrap = list(bootstrap)
        self.no_rate_limit = no_rate_limit
        self.netns = netns
        self.executable = executable
        self.start_timeout = start_timeout
        self.join_timeout = join_timeout
        self.log_file = log_file
        self.restarts = 0
        #: Index in :attr:`bootstrap` of the node the child joins through.
        self.bootstrap_index = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._watch: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def proxy_url(self) -> str:
        """The REST proxy's base URL."""
        return f"http://{format_hostport(self.proxy_host, self.proxy_port or 0)}"

    @property
    def pid(self) -> int | None:
        """The child's pid while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    def command(self) -> DhtNodeCommand:
        """The command line of the next (re)start."""
        return DhtNodeCommand(
            proxy_port=self.proxy_port or 0, port=self.port or 0, proxy_host=self.proxy_host,
            bootstrap=self.bootstrap[self.bootstrap_index] if self.bootstrap else None,
            no_rate_limit=self.no_rate_limit, netns=self.netns, executable=self.executable,
            log_file=self.log_file,
        )

    async def start(self) -> None:
        """Start the child and wait until its proxy answers; :attr:`port` is then the bound
        UDP port."""
        self.command().argv()  # DhtNodeMissing before anything else
        pick_proxy = self.proxy_port is None
        if not pick_proxy and self.netns is None:
            self._check_free(socket.SOCK_STREAM, self.proxy_host, self.proxy_port, "TCP proxy")
        if self.port and self.netns is None:
            self._check_free(socket.SOCK_DGRAM, "0.0.0.0", self.port, "UDP DHT")
        self._stopping = False
        for attempt in range(1, _PROXY_PORT_TRIES + 1):
            if pick_proxy:  # in another namespace: a port free here (its own are fresh)
                here = "127.0.0.1" if self.netns is not None else self.proxy_host
                self.proxy_port = free_port(socket.SOCK_STREAM, here)
            try:
                await self._spawn()
                break
            except DhtUnavailable:
                raise
            except DhtError as exc:
                if not pick_proxy or attempt == _PROXY_PORT_TRIES:
                    raise
                log.debug("dhtnode start on proxy port %s failed (%s); new port",
                          self.proxy_port, exc)
        if self.bootstrap and self.netns is None:
            try:
                await self._join()
            except BaseException:
                await self._kill()
                raise
        self._watch = asyncio.create_task(self._supervise(), name="dhtnode-supervisor")

    @staticmethod
    def _check_free(kind: int, host: str, port: int | None, what: str) -> None:
        """Fail clearly when a port asked for explicitly is taken."""
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind((host, port or 0))
            except OSError as exc:
                raise DhtError(f"{what} port {host}:{port} is not free: {exc.strerror}") from None

    async def _spawn(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            *self.command().argv(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
            start_new_session=True,
        )
        try:
            await self._wait_ready()
        except BaseException:
            await self._kill()
            raise

    async def _wait_ready(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout
        proxy_port = self.proxy_port or 0
        while True:
            proc = self._proc
            if proc is None or proc.returncode is not None:
                code = proc.returncode if proc is not None else None
                raise DhtError(
                    f"dhtnode exited at start (code {code}); is UDP port {self.port or 'any'} "
                    f"or TCP port {proxy_port} in use?"
                )
            port, taken = bound_udp_port(proc.pid, proxy_port)
            if port is not None:
                self.port = port
                break
            if taken:
                raise DhtError(f"TCP port {proxy_port} (dhtnode proxy) is taken by another "
                               "program")
            if loop.time() > deadline:
                raise DhtUnavailable(f"dhtnode did not listen on {self.proxy_url} within "
                                     f"{self.start_timeout:.0f} s")
            await asyncio.sleep(0.02)
        if self.netns is None:
            await self._wait_answers(deadline)

    async def _wait_answers(self, deadline: float) -> None:
        """Wait until the proxy answers a node-info request."""
        loop = asyncio.get_running_loop()
        async with DhtClient(self.proxy_url, timeout=1.0) as client:
            while True:
                try:
                    await client.info()
                    return
                except DhtUnavailable:
                    if loop.time() > deadline:
                        raise DhtUnavailable(
                            f"dhtnode did not answer on {self.proxy_url} within "
                            f"{self.start_timeout:.0f} s"
                        ) from None
                    await asyncio.sleep(0.05)

    async def _join(self) -> None:
        """Join through the first bootstrap node that answers, in the order given: the
        child is started again with the next one while it knows no other DHT node."""
        for index in range(len(self.bootstrap)):
            if index:
                log.warning("dhtnode reached no DHT node through %s; trying %s",
                            format_hostport(*self.bootstrap[index - 1]),
                            format_hostport(*self.bootstrap[index]))
                await self._kill()
                self.bootstrap_index = index
                await self._spawn()
            if await self._wait_joined():
                return
        self.bootstrap_index = 0
        where = ", ".join(format_hostport(*b) for b in self.bootstrap)
        raise DhtUnavailable(
            f"the embedded dhtnode reached no DHT node through {where} within "
            f"{self.join_timeout:.0f} s each: {UDP_BLOCKED_HINT}"
        )

    async def _wait_joined(self) -> bool:
        """Whether the node comes to know another DHT node (its bootstrap answered) within
        ``join_timeout``; a node that hears from none is cut off from the DHT, most often by
        a firewall dropping UDP."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.join_timeout
        async with DhtClient(self.proxy_url, timeout=1.0) as client:
            while True:
                info = await client.info()
                if _known_nodes(info) > 0:
                    return True
                if loop.time() > deadline:
                    return False
                await asyncio.sleep(0.05)

    async def _supervise(self) -> None:
        while not self._stopping:
            proc = self._proc
            if proc is None:
                return
            code = await proc.wait()
            if self._stopping:
                return
            self.restarts += 1
            log.warning("dhtnode exited with code %s; restarting (%d)", code, self.restarts)
            await asyncio.sleep(min(0.2 * self.restarts, 2.0))
            try:
                await self._spawn()
            except DhtError as exc:
                log.error("could not restart dhtnode: %s", exc)
                return

    async def _kill(self) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 3.0)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    async def stop(self) -> None:
        """Stop the child (SIGTERM, then SIGKILL after 3 s) and the supervisor."""
        self._stopping = True
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
        await self._kill()
        self._proc = None

    async def __aenter__(self) -> DhtNodeProcess:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _known_nodes(info: dict[str, Any]) -> int:
    """Good and dubious nodes in a dhtnode status object (both address families)."""
    counts = [info.get(f) for f in ("ipv4", "ipv6")]
    return sum(c.get(k, 0) for c in counts if isinstance(c, dict) for k in ("good", "dubious")
               if isinstance(c.get(k, 0), int))


@dataclass(frozen=True)
class NodePlace:
    """Where one node of :func:`start_nodes` runs: a namespace (None: this one) and the
    address its proxy listens on and the others bootstrap to; ``log_file``: its verbose log."""

    netns: str | None = None
    address: str = "127.0.0.1"
    log_file: str | None = None


async def start_nodes(
    n: int, *, places: Sequence[NodePlace] = (), no_rate_limit: bool = True
) -> list[DhtNodeProcess]:
    """Start a bootstrap node plus ``n - 1`` nodes joined to it; all stopped if one fails.

    ``places[i]`` says where node ``i`` runs (default: here, on 127.0.0.1). Stop them with
    :func:`stop_nodes`.
    """
    if n < 1:
        raise ValueError("start_nodes needs n >= 1")
    where = list(places) + [NodePlace()] * (n - len(places))
    nodes: list[DhtNodeProcess] = []
    try:
        for i, place in enumerate(where[:n]):
            boot = [] if i == 0 else [(where[0].address, nodes[0].port or 0)]
            node = DhtNodeProcess(bootstrap=boot, no_rate_limit=no_rate_limit, netns=place.netns,
                                  proxy_host=place.address, log_file=place.log_file)
            nodes.append(node)
            await node.start()
    except BaseException:
        await stop_nodes(nodes)
        raise
    return nodes


async def stop_nodes(nodes: Sequence[DhtNodeProcess]) -> None:
    """Stop every node (each stop is idempotent)."""
    for node in reversed(nodes):
        await node.stop()
