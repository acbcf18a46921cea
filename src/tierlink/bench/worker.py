"""One side of one benchmarked system, in its own process: ``python -m tierlink.bench.worker
SYSTEM ROLE``.

Protocol with the parent: JSON lines. stdin carries ``{"type": "cmd", "cmd": ..., ...}`` and
relayed ``{"type": "sig", ...}``; stdout carries ``{"type": "reply", ...}`` (one per command,
with ``error`` on failure) and ``{"type": "sig", ...}`` for the other worker. Commands run one
at a time; signals are delivered while a command runs.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
import traceback
from collections.abc import Awaitable, Callable

from tierlink.bench import allocator, loops
from tierlink.bench.base import BenchConn, BenchSide, JsonDict, Signal, now, stdout_for_protocol
from tierlink.bench.datagram_trials import DatagramCounter, send_paced
from tierlink.bench.latency import receive_probes, send_probes
from tierlink.bench.process_usage import cpu_s, rss_kb, usage_over

#: An idle receiver's timeout: longer than any idle phase.
IDLE_RECV_S = 3600.0


def make_side(system: str, role: str, signal: Signal) -> BenchSide:
    """The BenchSide of ``system`` (imports only that system's libraries)."""
    if system == "aioice_raw":
        from tierlink.bench.sys_aioice import IceSide

        return IceSide(role, signal)
    if system == "aiortc_datachannel":
        from tierlink.bench.sys_aiortc import RtcSide

        return RtcSide(role, signal)
    if system == "tierlink":
        from tierlink.bench.sys_tierlink import TierlinkSide

        return TierlinkSide(role, signal)
    raise ValueError(f"unknown system {system!r}")


class Worker:
    """Runs the commands of one side; the dialer sends, the callee receives."""

    def __init__(self, side: BenchSide) -> None:
        self.side = side
        self.dialer = side.role == "dialer"
        self.main: BenchConn | None = None
        self.extra: list[BenchConn] = []
        self.datagrams = DatagramCounter()
        self.idle_task: asyncio.Task[bytes] | None = None
        self.idle_conns: list[BenchConn] = []
        self.idle_waiters: list[asyncio.Task[bytes]] = []
        self.second: BenchConn | None = None  # the bulk stream's own connection (latency)

    @property
    def conn(self) -> BenchConn:
        if self.main is None:
            raise RuntimeError("no main connection (open_main first)")
        return self.main

    async def _open(self) -> BenchConn:
        return await (self.side.dial() if self.dialer else self.side.accept())

    # -- commands --------------------------------------------------------------------------
    async def cmd_setup(self, p: JsonDict) -> JsonDict:
        return await self.side.setup(p)

    async def cmd_connect_series(self, p: JsonDict) -> JsonDict:
        """n rounds: open, first message, delivery time back to the dialer, close.

        The dialer's start and the callee's delivery time are both CLOCK_MONOTONIC, so the
        difference is "dial started -> first message delivered to the callee".
        """
        sig = self.side.signal
        times_ms: list[float] = []
        open_ms: list[float] = []
        for i in range(int(p["n"])):
            if self.dialer:
                t0 = now()
                conn = await self.side.dial()
                open_ms.append((now() - t0) * 1000.0)
                await conn.send(b"first %d" % i)
                t1 = float((await sig.recv("delivered", 30.0))["t"])
                times_ms.append((t1 - t0) * 1000.0)
                await sig.recv("closed", 30.0)
                await conn.close()
            else:
                conn = await self.side.accept()
                await conn.recv(30.0)
                sig.send("delivered", {"t": now()})
                await conn.close()
                sig.send("closed", {})
        return {"connect_ms": times_ms, "open_ms": open_ms}

    async def cmd_open_main(self, p: JsonDict) -> JsonDict:
        self.main = await self._open()
        if self.dialer:
            await self.main.send(b"warm-up")
        else:
            await self.main.recv(20.0)
        return {}

    async def cmd_path(self, p: JsonDict) -> JsonDict:
        return {"path": self.conn.path_type()}

    async def cmd_packet_cap(self, p: JsonDict) -> JsonDict:
        """Cap (``size``) or uncap (null) the main connection's packet size."""
        size = p.get("size")
        if not self.conn.limit_packet_size(None if size is None else int(size)):
            raise NotImplementedError("this system has no packet size knob")
        return {}

    async def cmd_reliable(self, p: JsonDict) -> JsonDict:
        size, count, limit = int(p["size"]), int(p["count"]), float(p["limit"])
        conn = self.conn
        if self.dialer:
            payload = bytes(size)
            t0 = now()
            sent = await conn.send_many(payload, count, t0 + limit, int(p.get("window", 64)))
            return {"t0": t0, "t_end": now(), "sent": sent}
        deadline = now() + limit + 10.0
        received = nbytes = 0
        t_first = t_last = 0.0
        while received < count:
            left = deadline - now()
            if left <= 0:
                break
            try:
                data = await conn.recv(min(left, 5.0))
            except TimeoutError:
                break
            t_last = now()
            if received == 0:
                t_first = t_last
            received += 1
            nbytes += len(data)
        return {"received": received, "bytes": nbytes, "t_first": t_first, "t_last": t_last}

    async def cmd_dg_listen(self, p: JsonDict) -> JsonDict:
        """Start counting datagrams per trial (``sink``: see :meth:`DatagramCounter.listen`)."""
        self.datagrams.listen(self.conn, str(p.get("sink", "recv")))
        return {}

    async def cmd_malloc(self, p: JsonDict) -> JsonDict:
        """Pin the allocator state ``mode`` (null: the run's own, see :mod:`.allocator`)."""
        mode = p.get("mode") or allocator.chosen_mode()
        return {"mode": mode, "pinned": allocator.pin(str(mode))}

    async def cmd_dg_send(self, p: JsonDict) -> JsonDict:
        """Send ``count`` datagrams paced at ``rate``/s (catching up when late)."""
        return await send_paced(self.conn, int(p["trial"]), float(p["rate"]), int(p["count"]),
                                int(p["size"]))

    async def cmd_dg_collect(self, p: JsonDict) -> JsonDict:
        """Wait until the trial's datagrams stop arriving, then report what arrived."""
        return await self.datagrams.collect(self.conn, int(p["trial"]), float(p["quiet"]))

    async def cmd_idle(self, p: JsonDict) -> JsonDict:
        """CPU of this process over ``seconds`` while a task is blocked in recv."""
        seconds = float(p["seconds"])
        self.datagrams.stop()
        gc.collect()
        self.idle_task = asyncio.create_task(self.conn.recv(seconds + 60.0))
        await asyncio.sleep(0.5)
        c0, w0 = cpu_s(), now()
        await asyncio.sleep(seconds)
        c1, w1 = cpu_s(), now()
        return {"cpu_s": c1 - c0, "wall_s": w1 - w0, "percent": 100.0 * (c1 - c0) / (w1 - w0)}

    async def cmd_wake(self, p: JsonDict) -> JsonDict:
        """End the idle phase: each side sends one message, which ends the other's recv."""
        await self.conn.send(b"wake")
        task, self.idle_task = self.idle_task, None
        if task is not None:
            try:
                await asyncio.wait_for(task, 10.0)
            except TimeoutError:
                return {"woken": False}
        return {"woken": True}

    async def cmd_idle_open(self, p: JsonDict) -> JsonDict:
        """Open connections until ``n`` are idle (the main one counts), then block a task in
        recv on each of them."""
        self.datagrams.stop()
        while len(self.idle_conns) + 1 < int(p["n"]):
            self.idle_conns.append(await self._open())
        conns = [self.conn, *self.idle_conns]
        self.idle_waiters = [asyncio.create_task(c.recv(IDLE_RECV_S)) for c in conns]
        gc.collect()
        await asyncio.sleep(1.0)  # the opening's last packets and timers settle
        return {"connections": len(conns)}

    async def cmd_idle_window(self, p: JsonDict) -> JsonDict:
        """CPU of this process and its event loop's wake-ups (passes through the selector)
        over ``seconds`` while every idle connection is blocked in recv."""
        usage = await usage_over(float(p["seconds"]))
        return {**usage, "connections": 1 + len(self.idle_conns)}

    async def cmd_idle_close(self, p: JsonDict) -> JsonDict:
        """End the idle phase: stop the receivers, close every connection but the main one."""
        waiters, self.idle_waiters = self.idle_waiters, []
        for task in waiters:
            task.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
        conns, self.idle_conns = self.idle_conns, []
        for conn in conns:
            await conn.close()
        return {"closed": len(conns)}

    async def cmd_latency(self, p: JsonDict) -> JsonDict:
        """Probes on the main connection; bulk on none, it, or a second one (``mode``)."""
        mode = str(p["mode"])
        if mode == "other" and self.second is None:
            self.second = await self._open()
        bulk = {"idle": None, "same": self.conn, "other": self.second}[mode]
        if self.dialer:
            return await send_probes(self.conn, bulk, int(p["count"]), float(p["interval"]),
                                     int(p["window"]))
        return await receive_probes(self.conn, bulk, float(p["limit"]))

    async def cmd_rss(self, p: JsonDict) -> JsonDict:
        await asyncio.sleep(float(p.get("settle", 0.0)))
        gc.collect()
        return {"rss_kb": rss_kb()}

    async def cmd_mem_open(self, p: JsonDict) -> JsonDict:
        for _ in range(int(p["n"])):
            self.extra.append(await self._open())
        return {"open": len(self.extra)}

    async def cmd_mem_close(self, p: JsonDict) -> JsonDict:
        conns, self.extra = self.extra, []
        for conn in conns:
            await conn.close()
        return {"closed": len(conns)}

    async def cmd_shutdown(self, p: JsonDict) -> JsonDict:
        self.datagrams.stop()
        if self.idle_task is not None:
            self.idle_task.cancel()
        await self.cmd_mem_close(p)
        await self.cmd_idle_close(p)
        for conn in (self.main, self.second):
            if conn is not None:
                await conn.close()
        await self.side.shutdown()
        return {}


async def serve(system: str, role: str, worker_class: type[Worker] = Worker) -> None:
    """Run one worker of ``system`` in ``role`` until the parent says shutdown."""
    out = stdout_for_protocol()
    signal = Signal(out)
    side = make_side(system, role, signal)
    worker = worker_class(side)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 22)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    signal.write({"type": "reply", "ready": True})
    commands: asyncio.Queue[JsonDict | None] = asyncio.Queue()

    async def run_commands() -> None:
        while (msg := await commands.get()) is not None:
            name = str(msg["cmd"])
            handler: Callable[[JsonDict], Awaitable[JsonDict]] = getattr(worker, "cmd_" + name)
            try:
                result = await handler(msg)
                signal.write({"type": "reply", "cmd": name, **result})
            except Exception as exc:  # reported to the parent, which records it
                traceback.print_exc()
                error = f"{type(exc).__name__}: {exc}"
                signal.write({"type": "reply", "cmd": name, "error": error})
            if name == "shutdown":
                return

    runner = asyncio.create_task(run_commands())
    while not runner.done():
        line = await reader.readline()
        if not line:
            break
        msg = json.loads(line)
        if msg["type"] == "sig":
            signal.deliver(str(msg["kind"]), msg["data"])
        else:
            commands.put_nowait(msg)
    if not runner.done():
        commands.put_nowait({"type": "cmd", "cmd": "shutdown"})
        await asyncio.wait_for(runner, 30.0)


def main() -> None:
    """Entry point of a worker process."""
    system, role = sys.argv[1], sys.argv[2]
    allocator.pin(allocator.chosen_mode())  # before anything allocates: one state per run
    profile_dir = os.environ.get("TIERLINK_BENCH_PROFILE")
    if not profile_dir:
        loops.run(serve(system, role))
        return
    import cProfile  # a developer's switch: one profile file per worker process

    with cProfile.Profile() as prof:
        loops.run(serve(system, role))
    prof.dump_stats(os.path.join(profile_dir, f"{system}-{role}.prof"))


if __name__ == "__main__":
    main()
