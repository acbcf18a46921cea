"""tierlink through a TURN relay: a local coturn on 127.0.0.1 (TURN over UDP), both nodes
``relay_only``, so every packet goes dialer -> coturn -> coturn's relay port -> coturn ->
callee. Measured in ``plan.rounds`` rounds on one connection: reliable 1 KiB and 64 KiB
throughput, message latency idle and with a 64 KiB stream on the same connection; each
figure is the median of the rounds with its spread, under ``relay_*`` keys beside the
direct figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from tierlink.bench.base import JsonDict
from tierlink.bench.harness import BenchStepError, Plan
from tierlink.bench.latency import latency_step
from tierlink.bench.measure import measure_reliable_1k, measure_reliable_64k
from tierlink.bench.session import FIGURES, SystemRun, open_main

PREFIX = "relay_"
#: Measurements taken through the relay: (name, function, headline figure).
STEPS = (
    ("reliable_1k", measure_reliable_1k, "reliable_1k_msgs_per_s"),
    ("reliable_64k", measure_reliable_64k, "reliable_64k_mb_per_s"),
    ("latency_idle", latency_step("idle"), "latency_idle_p50_ms"),
    ("latency_same", latency_step("same"), "latency_same_p50_ms"),
)
START_TIMEOUT = 10.0


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    """Wait until coturn answers on its TCP port (it opens UDP and TCP together)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT
    while loop.time() < deadline:
        if proc.poll() is not None:
            raise BenchStepError(f"turnserver exited with {proc.returncode} at start")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        writer.close()
        return
    raise BenchStepError(f"turnserver not listening on {port} within {START_TIMEOUT:.0f} s")


@contextlib.asynccontextmanager
async def local_coturn(workdir: Path) -> AsyncIterator[JsonDict]:
    """coturn on 127.0.0.1 with one static user; yields the node's ``turn`` setup dict."""
    if shutil.which("turnserver") is None:
        raise BenchStepError("coturn is not installed (apt-get install coturn)")
    port, password = _free_udp_port(), secrets.token_hex(8)
    conf = workdir / "turnserver.conf"
    conf.write_text("\n".join([
        "listening-ip=127.0.0.1", "relay-ip=127.0.0.1", f"listening-port={port}",
        "lt-cred-mech", f"user=bench:{password}", "realm=tierlink.bench", "fingerprint",
        "no-tls", "no-dtls", "no-cli", "allow-loopback-peers", "no-multicast-peers",
        f"pidfile={workdir / 'turnserver.pid'}", f"userdb={workdir / 'turndb'}",
        f"log-file={workdir / 'turnserver.log'}", "simple-log", "",
    ]))
    proc = subprocess.Popen(["turnserver", "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        await _listening(port, proc)
        yield {"host": "127.0.0.1", "port": port, "username": "bench", "password": password,
               "transport": "udp"}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def measure_relay(plan: Plan, dht_proxy: str, logs: Path) -> JsonDict:
    """The relay figures of tierlink (``relay_*`` keys), or ``relay_error``."""
    run = SystemRun("tierlink")
    with tempfile.TemporaryDirectory(prefix="tierlink-bench-turn-") as tmp:
        try:
            async with local_coturn(Path(tmp)) as turn:
                setup = {"dht_proxy": dht_proxy, "turn": turn, "relay_only": True}
                await run.start(logs / "tierlink-relay.log", setup)
                await run.step("open_main", open_main, plan, required=True)
                if run.pair is not None and not run.stopped:
                    d, c = await run.pair.both("path", 10.0)
                    if "relay" not in (d["path"], c["path"]):
                        raise BenchStepError(f"not relayed: paths {d['path']}, {c['path']}")
                for _ in range(plan.rounds):
                    for name, fn, _headline in STEPS:
                        await run.step(name, fn, plan)
        except BenchStepError as exc:
            run.errors["relay"] = str(exc)
        finally:
            await run.stop()
    return relay_entry(run)


def relay_entry(run: SystemRun) -> JsonDict:
    """The relay run's figures, each key prefixed with ``relay_``."""
    out: JsonDict = {}
    for key, value in run.entry({name: headline for name, _fn, headline in STEPS}).items():
        if key == "errors":
            out[PREFIX + "errors"] = value
        elif key in FIGURES or key.removesuffix("_spread") in FIGURES:
            out[PREFIX + key] = value
    return out

