"""Run and supervise a ``dhtnode`` child process (Debian's OpenDHT node) with its REST proxy.

The child gets ``PR_SET_PDEATHSIG=SIGKILL`` so it dies with its parent even when the parent is
SIGKILLed: no orphan ``dhtnode`` is left behind. If it exits unexpectedly it is restarted on
the same ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import shutil
import signal
import socket
from collections.abc import Sequence

from tierlink.dht.client import DhtClient
from tierlink.errors import DhtError, DhtNodeMissing, DhtUnavailable

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "the 'dhtnode' program (OpenDHT) is not installed; on Debian/Ubuntu run "
    "'sudo apt-get install dhtnode', or pass --dht-proxy URL to use an existing OpenDHT proxy"
)
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """preexec hook: ask the kernel to SIGKILL us when the parent dies (Linux)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    """A port the kernel says is free right now (for UDP and TCP alike)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def parse_hostport(text: str, default_port: int = 4222) -> tuple[str, int]:
    """``host[:port]`` -> (host, port); ValueError with a clear message otherwise."""
    host, sep, port_s = text.rpartition(":")
    if not sep:
        host, port_s = text, str(default_port)
    host = host.strip("[]")
    try:
        port = int(port_s)
    except ValueError:
        raise ValueError(f"invalid address {text!r}: port must be a number") from None
    if not host or not 0 < port < 65536:
        raise ValueError(f"invalid address {text!r}: expected HOST:PORT")
    return host, port


class DhtNodeProcess:
    """A supervised ``dhtnode -s -p PORT --proxyserver PROXY_PORT`` child."""

    def __init__(
        self,
        *,
        port: int | None = None,
        proxy_port: int | None = None,
        proxy_host: str = "127.0.0.1",
        bootstrap: Sequence[tuple[str, int]] = (),
        no_rate_limit: bool = False,
        executable: str = "dhtnode",
        start_timeout: float = 10.0,
    ) -> None:
        self.port = port
        self.proxy_port = proxy_port
        self.proxy_host = proxy_host
        self.bootstrap = list(bootstrap)
        self.no_rate_limit = no_rate_limit
        self.executable = executable
        self.start_timeout = start_timeout
        self.restarts = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._watch: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def proxy_url(self) -> str:
        """The REST proxy's base URL."""
        return f"http://{self.proxy_host}:{self.proxy_port}"

    @property
    def pid(self) -> int | None:
        """The child's pid while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    def _argv(self) -> list[str]:
        exe = shutil.which(self.executable)
        if exe is None:
            raise DhtNodeMissing(INSTALL_HINT)
        argv = [exe, "-s", "-p", str(self.port), "--proxyserver", str(self.proxy_port),
                "--proxy-addr", self.proxy_host]
        if self.no_rate_limit:
            argv.append("-U")
        for host, port in self.bootstrap[:1]:
            argv += ["-b", f"{host}:{port}"]
        return argv

    async def start(self) -> None:
        """Start the child and wait until its proxy answers."""
        if self.port is None:
            self.port = free_port(socket.SOCK_DGRAM, "0.0.0.0")
        if self.proxy_port is None:
            self.proxy_port = free_port(socket.SOCK_STREAM, self.proxy_host)
        self._check_ports_free()
        self._stopping = False
        await self._spawn()
        self._watch = asyncio.create_task(self._supervise(), name="dhtnode-supervisor")

    def _check_ports_free(self) -> None:
        """Fail clearly if a port is taken (else we could mistake another node for ours)."""
        for kind, host, port, what in (
            (socket.SOCK_STREAM, self.proxy_host, self.proxy_port, "TCP proxy"),
            (socket.SOCK_DGRAM, "0.0.0.0", self.port, "UDP DHT"),
        ):
            with socket.socket(socket.AF_INET, kind) as s:
                try:
                    s.bind((host, port or 0))
                except OSError as exc:
                    raise DhtError(
                        f"{what} port {host}:{port} is not free: {exc.strerror}"
                    ) from None

    async def _spawn(self) -> None:
        argv = self._argv()
        self._proc = await asyncio.create_subprocess_exec(
            *argv,
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
        # Several bootstraps: dhtnode takes one on its command line; the others are pinged
        # through the proxy-less interactive command, so we simply rely on the first one.

    async def _wait_ready(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout
        async with DhtClient(self.proxy_url, timeout=1.0) as client:
            while True:
                proc = self._proc
                if proc is None or proc.returncode is not None:
                    code = proc.returncode if proc is not None else None
                    raise DhtError(
                        f"dhtnode exited at start (code {code}); is UDP port {self.port} "
                        f"or TCP port {self.proxy_port} in use?"
                    )
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
