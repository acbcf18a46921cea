"""One process of the many-connection bench (:mod:`tierlink.bench.crowd`):
``python -m tierlink.bench.crowd_worker ROLE``, a tierlink worker with the crowd commands.

The callee accepts connections and echoes every message on each; a dialer opens its share
of connections (``concurrency`` dials in flight), sends a message naming the dialer and the
connection on each and checks that exactly that message comes back (no mixing), then
closes them all. Both report RSS, open fds, asyncio tasks and CPU.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import resource
import statistics
import sys
from collections import Counter
from typing import Any

from tierlink.bench import loops
from tierlink.bench.base import BenchConn, JsonDict, now
from tierlink.bench.process_usage import cpu_s, rss_kb
from tierlink.bench.worker import Worker, serve

#: Descriptors a crowd process wants beyond its connections (dhtnode pipes, HTTP, logs).
FD_HEADROOM = 256
ECHO_TIMEOUT = 30.0


def raise_fd_limit(wanted: int) -> tuple[int, int]:
    """Raise this process's soft RLIMIT_NOFILE to ``wanted`` (capped at the hard limit);
    returns (soft, hard) as they are afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def open_fds() -> int:
    """Open file descriptors of this process."""
    return len(os.listdir("/proc/self/fd"))


def _ms_summary(values: list[float]) -> JsonDict:
    if not values:
        return {}
    ordered = sorted(values)
    return {
        "median": round(statistics.median(ordered), 2),
        "p95": round(ordered[max(0, int(0.95 * len(ordered)) - 1)], 2),
        "max": round(ordered[-1], 2),
    }


class CrowdWorker(Worker):
    """The crowd commands on top of the usual worker."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.crowd: list[BenchConn] = []
        self.echoers: list[asyncio.Task[None]] = []
        self.echoed = 0
        self.last_closed = 0.0
        self.accepting: asyncio.Task[JsonDict] | None = None

    async def cmd_crowd_limits(self, p: JsonDict) -> JsonDict:
        soft, hard = raise_fd_limit(int(p["connections"]) + FD_HEADROOM)
        return {"nofile_soft": soft, "nofile_hard": hard}

    async def cmd_crowd_stats(self, p: JsonDict) -> JsonDict:
        """RSS, fds, tasks and CPU of this process, after ``settle`` seconds and a GC."""
        await asyncio.sleep(float(p.get("settle", 0.0)))
        gc.collect()
        return {
            "rss_kb": rss_kb(),
            "fds": open_fds(),
            "tasks": len(asyncio.all_tasks()),
            "cpu_s": cpu_s(),
            "t": now(),
            "connections": len(self.crowd),
            "node": self.side.stats(),
        }

    async def _echo(self, conn: BenchConn) -> None:
        while True:
            try:
                data = await conn.recv(3600.0)
            except TimeoutError:
                continue
            except Exception:  # the connection closed: this echoer is done
                self.last_closed = max(self.last_closed, now())
                return
            self.echoed += 1
            await conn.send(data)

    async def _accept(self, n: int) -> JsonDict:
        """Accept as an application does (``async for`` over the node's incoming
        connections): one wake-up per connection, so the node's backlog does not fill."""
        first = last = 0.0
        async for conn in self.side.incoming():
            last = now()
            first = first or last
            self.crowd.append(conn)
            self.echoers.append(asyncio.create_task(self._echo(conn)))
            if len(self.crowd) >= n:
                break
        return {"accepted": len(self.crowd), "t_first": first, "t_last": last}

    async def cmd_crowd_accept(self, p: JsonDict) -> JsonDict:
        """Start accepting (until ``n`` connections are held) and echo on each; returns at
        once, so the loop runs before the first dial."""
        self.accepting = asyncio.create_task(self._accept(int(p["n"])))
        await asyncio.sleep(0)
        return {}

    async def cmd_crowd_accepted(self, p: JsonDict) -> JsonDict:
        """Wait for the accept loop (up to ``wait_s``; then stop it): what it accepted."""
        task, self.accepting = self.accepting, None
        if task is None:
            raise RuntimeError("crowd_accept was not started")
        done, _ = await asyncio.wait([task], timeout=float(p["wait_s"]))
        if not done:
            task.cancel()
            return {"accepted": len(self.crowd), "t_first": 0.0, "t_last": now()}
        return task.result()

    async def cmd_crowd_dial(self, p: JsonDict) -> JsonDict:
        """Open ``n`` connections, ``concurrency`` dials in flight; failures by error type."""
        n, sem = int(p["n"]), asyncio.Semaphore(int(p["concurrency"]))
        failures: Counter[str] = Counter()
        dial_ms: list[float] = []

        async def one() -> None:
            async with sem:
                t0 = now()
                try:
                    conn = await self.side.dial()
                except Exception as exc:  # counted by type: the bench reports what bit
                    failures[type(exc).__name__] += 1
                    return
                dial_ms.append((now() - t0) * 1000.0)
                self.crowd.append(conn)

        t_start = now()
        await asyncio.gather(*(one() for _ in range(n)))
        return {"opened": len(self.crowd), "failures": dict(failures), "t_start": t_start,
                "t_end": now(), "dial_ms": _ms_summary(dial_ms)}

    async def cmd_crowd_echo(self, p: JsonDict) -> JsonDict:
        """On every connection at once: send a message naming it, expect exactly it back."""
        tag = str(p["tag"])
        mixed = lost = 0
        rtt_ms: list[float] = []

        async def one(i: int, conn: BenchConn) -> None:
            nonlocal mixed, lost
            msg = f"{tag}/{i}".encode()
            t0 = now()
            try:
                await conn.send(msg)
                got = await conn.recv(ECHO_TIMEOUT)
            except Exception:  # closed or timed out: counted as lost
                lost += 1
                return
            rtt_ms.append((now() - t0) * 1000.0)
            if got != msg:
                mixed += 1

        await asyncio.gather(*(one(i, c) for i, c in enumerate(self.crowd)))
        return {"echoed": len(rtt_ms) - mixed, "mixed": mixed, "lost": lost,
                "rtt_ms": _ms_summary(rtt_ms)}

    async def cmd_crowd_close(self, p: JsonDict) -> JsonDict:
        """Close every crowd connection (all at once)."""
        conns, self.crowd = self.crowd, []
        t0 = now()
        await asyncio.gather(*(c.close() for c in conns))
        return {"closed": len(conns), "t_start": t0, "t_end": now()}

    async def cmd_crowd_wait_closed(self, p: JsonDict) -> JsonDict:
        """Wait until the peers closed every accepted connection (its echoer ends)."""
        echoers, self.echoers = self.echoers, []
        done, pending = await asyncio.wait(echoers, timeout=float(p["wait_s"])) if echoers \
            else (set(), set())
        t = self.last_closed if not pending else now()
        for task in pending:
            task.cancel()
        conns, self.crowd = self.crowd, []
        await asyncio.gather(*(c.close() for c in conns))
        return {"closed_by_peer": len(done), "still_open": len(pending), "t_all_closed": t,
                "echoed": self.echoed}


def main() -> None:
    """Entry point: ``python -m tierlink.bench.crowd_worker ROLE``."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format=f"%(created).3f crowd/{sys.argv[1]} %(name)s: %(message)s")
    loops.run(serve("tierlink", sys.argv[1], CrowdWorker))


if __name__ == "__main__":
    main()
