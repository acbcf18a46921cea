"""A throwaway ``dhtnode`` for the tierlink benchmark: lone node, REST proxy on 127.0.0.1,
rate limiting off (``-U``: all of loopback is one source IP). Fresh per run, always stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path


class DhtNodeError(RuntimeError):
    """dhtnode is missing or did not start."""


def _free_port(kind: socket.SocketKind) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _wait_listening(port: int, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if loop.time() > deadline:
                raise DhtNodeError(f"dhtnode proxy did not listen on {port}") from None
            await asyncio.sleep(0.05)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return


@contextlib.asynccontextmanager
async def dhtnode_proxy(log_path: Path) -> AsyncIterator[str]:
    """Run a dhtnode for the duration of the block; yields its proxy URL."""
    exe = shutil.which("dhtnode")
    if exe is None:
        raise DhtNodeError("dhtnode is not installed (Debian package: dhtnode)")
    udp, tcp = _free_port(socket.SOCK_DGRAM), _free_port(socket.SOCK_STREAM)
    with open(log_path, "ab") as log:
        proc = await asyncio.create_subprocess_exec(
            exe,
            "-s",
            "-p",
            str(udp),
            "--proxyserver",
            str(tcp),
            "--proxy-addr",
            "127.0.0.1",
            "-U",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            preexec_fn=_die_with_parent,
        )
        try:
            await _wait_listening(tcp, 10.0)
            yield f"http://127.0.0.1:{tcp}"
        finally:
            if proc.returncode is None:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 5.0)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the benchmark process dies (Linux)."""
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
