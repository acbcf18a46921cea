"""A DHT lab at scale: many ``dhtnode`` processes, each in its own network namespace with its
own address behind one router, and churn (nodes leaving and fresh ones joining) at a set rate.

OpenDHT rate-limits requests per source IP, so nodes sharing one loopback address would
throttle each other; here every node and every tierlink peer has an address of its own in
198.18.0.0/15. Layout (names start with ``tldm<owner pid>-``): ``rt`` is the router; ``d<i>``
holds DHT node ``i``; ``p<i>`` holds tierlink peer ``i``. Each host namespace gets a veth
``eth0`` (its address as a /32) to the router, its only neighbour. Routed, not bridged: the
kernel's ARP table is shared by every namespace (``gc_thresh3``, 1024 entries by default),
and on one bridge 100 DHT nodes talking to each other overflow it ("neighbor table
overflow"): sends fail with ENOBUFS and OpenDHT waits for its request timeouts. Behind a
router each host needs one entry and the router one per host. The root namespace holds
nothing of ours.
Every process of the lab lives in one of these namespaces, so deleting them (on every exit:
normal, exception, Ctrl-C, SIGTERM, interpreter exit) ends everything; a lab whose owner
died outright is removed by the next one (:func:`remove_stale`).

Churn: every ``60 / churn_per_min`` seconds one of the churning nodes (``churn_share`` of the
nodes, never the bootstrap node 0) is stopped without notice, and ``down_s`` later a fresh
node (new node id, new UDP port) starts in its namespace, bootstrapped to a random live node.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ipaddress
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from tierlink import namespaces
from tierlink.dht.launcher import DhtNodeProcess, NodePlace, start_nodes, stop_nodes
from tierlink.errors import TierlinkError

LAB_HEAD = "tldm"
#: The lab's addresses: node ``i`` gets ``BASE + 16 + i``, peer ``i`` ``BASE + 8192 + i``.
NETWORK = ipaddress.ip_network("198.18.0.0/15")
PEER_OFFSET = 8192
#: The router's address on every host link (each host's only neighbour).
GATEWAY = str(NETWORK.network_address + 1)


class DhtLabError(TierlinkError):
    """The DHT lab cannot be built here (not root, ``ip``/``dhtnode`` missing, a command
    failed)."""


def check_can_run() -> None:
    """DhtLabError unless this process may create namespaces and run dhtnode."""
    if os.geteuid() != 0:
        raise DhtLabError("the DHT lab needs root: it puts every dhtnode in its own network "
                          "namespace (ip netns add); run it as root")
    for tool in ("ip", "dhtnode"):
        if shutil.which(tool) is None:
            raise DhtLabError(f"the DHT lab needs `{tool}` installed")


def _ip(args: Sequence[str], batch: str | None = None) -> None:
    argv = ["ip", *args] if batch is None else ["ip", *args, "-batch", "-"]
    proc = subprocess.run(argv, input=batch, capture_output=True, text=True, timeout=120,
                          check=False)
    if proc.returncode != 0:
        raise DhtLabError(f"ip {' '.join(args)} failed: {proc.stderr.strip()[:400]}")


def address_of(index: int) -> str:
    """The address of lab host ``index`` (nodes from 0, peers from :data:`PEER_OFFSET`)."""
    return str(NETWORK.network_address + 16 + index)


@dataclass(frozen=True)
class AccessLink:
    """What one direction of a peer's access link adds: ``delay_ms`` plus a jitter uniform on
    ``[-jitter_ms, +jitter_ms]``, ``loss`` (0..1) and ``rate_mbit`` (None: unshaped). ``name``
    is the link profile these are a per-link share of (the CLI resolves it)."""

    name: str
    delay_ms: float
    jitter_ms: float
    loss: float
    rate_mbit: float | None
    reorder: bool = False


#: TBF bucket and queue bound of a shaped access link.
TBF_BURST = "32kb"
TBF_LATENCY = "50ms"


def _shape(ns: str, dev: str, link: AccessLink) -> None:
    """Loss (nftables netdev egress, IP frames only) and rate (TBF) on one end of a link."""
    if link.loss > 0:
        threshold = round(link.loss * 1_000_000)
        ruleset = (f"table netdev le_{dev} {{\n chain egress {{\n  type filter hook egress "
                   f'device "{dev}" priority filter; policy accept;\n  meta protocol '
                   f"{{ ip, ip6 }} numgen random mod 1000000 < {threshold} drop\n }}\n}}\n")
        proc = subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=ruleset,
                              capture_output=True, text=True, timeout=60, check=False)
        if proc.returncode != 0:
            raise DhtLabError(f"nft on {ns}/{dev} failed: {proc.stderr.strip()[:400]}")
    if link.rate_mbit:
        proc = subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev,
                               "root", "tbf", "rate", f"{link.rate_mbit}mbit", "burst",
                               TBF_BURST, "latency", TBF_LATENCY],
                              capture_output=True, text=True, timeout=60, check=False)
        if proc.returncode != 0:
            raise DhtLabError(f"tc on {ns}/{dev} failed: {proc.stderr.strip()[:400]}")


def remove_stale() -> list[str]:
    """Delete lab namespaces whose owner process is gone; returns their names."""
    removed = []
    for name in sorted(namespaces.existing()):
        owner = name.removeprefix(LAB_HEAD).partition("-")[0]
        if name.startswith(LAB_HEAD) and owner.isdigit() and not namespaces.pid_alive(int(owner)):
            namespaces.remove(name)
            removed.append(name)
    return removed


class Hosts:
    """The lab's namespaces: a router and hosts behind it, each with one address."""

    def __init__(self) -> None:
        self.prefix = f"{LAB_HEAD}{os.getpid()}"
        self.router = f"{self.prefix}-rt"
        self.names: list[str] = []
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-"))
        #: Emulated access links: peer namespace -> (emulator process, statistics file).
        self.links: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}

    def _emulate(self, ns: str, port: str, link: AccessLink) -> None:
        """Join ``port`` (router side) and ``eth0`` (in ``ns``) through a link emulator in
        a namespace of its own, then shape both ends."""
        emu = f"{ns}-l"
        _ip([], f"netns add {emu}\n")
        self.names.append(emu)
        stats, err = self.workdir / f"{port}.json", self.workdir / f"{port}.err"
        argv = ["ip", "netns", "exec", emu, sys.executable, "-m", "tierlink.lab.linkemu",
                "--tap", port, "--tap", "eth0", "--delay-ms", str(link.delay_ms),
                "--jitter-ms", str(link.jitter_ms), "--stats", str(stats),
                "--seed", str(len(self.links) + 1), *(["--reorder"] if link.reorder else [])]
        with err.open("wb") as err_out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=err_out)
        self.links[ns] = (proc, stats)
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the emulator prints one line once its TAPs exist
        proc.stdout.close()
        if b"ready" not in line:
            raise DhtLabError(f"the link emulator of {ns} did not start: "
                              f"{err.read_text(errors='replace').strip()[-300:]}")
        _ip(["-n", emu], f"link set {port} netns {self.router}\nlink set eth0 netns {ns}\n")
        _shape(self.router, port, link)
        _shape(ns, "eth0", link)

    def link_stats(self) -> dict[str, dict[str, Any]]:
        """Each emulated access link's last statistics, by peer namespace."""
        out: dict[str, dict[str, Any]] = {}
        for ns, (_, path) in self.links.items():
            with contextlib.suppress(OSError, ValueError):
                out[ns] = json.loads(path.read_text())
        return out

    def create(self, roles: Sequence[tuple[str, int]],
               access: AccessLink | None = None) -> list[tuple[str, str]]:
        """Create a host namespace per (role letter, index) behind the router, peers behind
        ``access`` when given; their (namespace, address)."""
        fresh = [self.router] if not self.names else []
        hosts = [(f"{self.prefix}-{r}{i}", address_of(i + (PEER_OFFSET if r == "p" else 0)),
                  f"v{r}{i}") for r, i in roles]
        self.names += fresh + [ns for ns, _, _ in hosts]
        _ip([], "".join(f"netns add {ns}\n" for ns in fresh + [ns for ns, _, _ in hosts]))
        if fresh:
            subprocess.run(["ip", "netns", "exec", self.router, "sysctl", "-qw",
                            "net.ipv4.ip_forward=1"], check=True, timeout=30)
        emulated = {ns for ns, _, port in hosts if access is not None and port[1] == "p"}
        for ns, _, port in hosts:
            if ns in emulated:
                assert access is not None
                self._emulate(ns, port, access)
        lines = ["link set lo up\n"] if fresh else []
        for ns, addr, port in hosts:
            if ns not in emulated:
                lines.append(f"link add {port} type veth peer name eth0 netns {ns}\n")
            lines += [f"addr add {GATEWAY}/32 dev {port}\n", f"link set {port} up\n",
                      f"route add {addr}/32 dev {port}\n"]
        _ip(["-n", self.router], "".join(lines))
        for ns, addr, _ in hosts:
            _ip(["-n", ns], f"link set lo up\naddr add {addr}/32 dev eth0\nlink set eth0 up\n"
                            f"route add {GATEWAY}/32 dev eth0\n"
                            f"route add {NETWORK} via {GATEWAY} dev eth0\n")
        return [(ns, addr) for ns, addr, _ in hosts]

    def remove(self) -> None:
        """Kill every process in the lab's namespaces and delete them (idempotent)."""
        existing = namespaces.existing()
        for ns in self.names:
            if ns in existing:
                namespaces.kill_processes(ns)
        for ns in reversed(self.names):
            if ns in existing:
                namespaces.remove(ns)
        self.names.clear()
        for proc, _ in self.links.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)  # killed with its namespace: reap it
        self.links.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _raise_on_signal(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def lab_hosts() -> Iterator[Hosts]:
    """A :class:`Hosts` removed on every exit (SIGTERM and SIGHUP unwind like Ctrl-C)."""
    check_can_run()
    remove_stale()
    hosts = Hosts()
    atexit.register(hosts.remove)
    previous = {sig: signal.signal(sig, _raise_on_signal) for sig in (signal.SIGTERM,
                                                                        signal.SIGHUP)}
    try:
        yield hosts
    finally:
        hosts.remove()
        atexit.unregister(hosts.remove)
        for sig, old in previous.items():
            signal.signal(sig, old)


@dataclass
class Churn:
    """How the lab churns: ``per_min`` nodes leave per minute (each replaced ``down_s`` later
    by a fresh node), chosen among ``share`` of the nodes."""

    per_min: float = 0.0
    share: float = 0.5
    down_s: float = 5.0
    left: int = 0
    joined: int = 0
    failed_joins: list[str] = field(default_factory=list)
    #: (monotonic time, "leave" or "join", node index, address), to match against logs.
    events: list[tuple[float, str, int, str]] = field(default_factory=list)


class DhtLab:
    """``n`` dhtnodes in their own namespaces (see the module doc); use ``async with``.

    ``log_dir``: where :meth:`log_path` puts OpenDHT's verbose logs (of the peers, and with
    ``log_nodes`` of every lab node too: that costs CPU). ``access``: the peers' access link
    (None: plain veths like the nodes')."""

    def __init__(self, hosts: Hosts, n: int, *, seed: int = 1, rate_limit: bool = True,
                 log_dir: str | None = None, log_nodes: bool = False,
                 access: AccessLink | None = None) -> None:
        if n < 2:
            raise ValueError("the DHT lab needs at least 2 nodes")
        self.hosts = hosts
        self.n = n
        self.rate_limit = rate_limit
        self.log_dir = log_dir
        self.log_nodes = log_nodes
        self.seed = seed
        self.access = access
        self.rng = random.Random(seed)
        self.places: list[NodePlace] = []
        self.nodes: list[DhtNodeProcess] = []
        self.churn = Churn()
        self._churn_task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self._peers = 0

    async def start(self) -> None:
        """Create the namespaces and start every node (node 0 is everyone's bootstrap)."""
        made = await asyncio.to_thread(self.hosts.create, [("d", i) for i in range(self.n)])
        self.places = [NodePlace(ns, addr, self.log_path(f"d{i}") if self.log_nodes else None)
                       for i, (ns, addr) in enumerate(made)]
        self.nodes = await start_nodes(self.n, places=self.places,
                                       no_rate_limit=not self.rate_limit)

    def log_path(self, name: str) -> str | None:
        return None if self.log_dir is None else os.path.join(self.log_dir, f"{name}.log")

    async def add_peer_host(self) -> tuple[str, str]:
        """A new namespace (with its address) for a tierlink peer."""
        self._peers += 1
        made = await asyncio.to_thread(self.hosts.create, [("p", self._peers)], self.access)
        return made[0]

    def live(self) -> list[int]:
        """Indexes of nodes running now."""
        return [i for i, node in enumerate(self.nodes) if node.pid is not None]

    def contact(self, index: int | None = None) -> tuple[str, int]:
        """(address, UDP port) of node ``index`` if live, else of a random live node."""
        live = self.live()
        i = index if index is not None and index in live else self.rng.choice(live)
        return self.places[i].address, self.nodes[i].port or 0

    def pids(self) -> list[int]:
        """The pids of the running dhtnodes."""
        return [pid for node in self.nodes if (pid := node.pid) is not None]

    def churnable(self, share: float) -> list[int]:
        """The nodes that may leave at ``share`` (the same ones for one seed; never node 0):
        the others are the lab's stable nodes."""
        pool = list(range(1, self.n))
        random.Random(self.seed).shuffle(pool)
        return sorted(pool[:max(1, round(share * (self.n - 1)))])

    def start_churn(self, per_min: float, share: float = 0.5, down_s: float = 5.0) -> None:
        """Start churning (see :class:`Churn`); 0 per minute: none."""
        self.churn = Churn(per_min, share, down_s)
        if per_min > 0:
            self._churn_task = asyncio.create_task(self._churn_loop(), name="dht-churn")

    async def stop_churn(self) -> None:
        """Stop churning and wait for the nodes already leaving to be replaced."""
        if self._churn_task is not None:
            self._churn_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._churn_task
            self._churn_task = None
        if self._pending:
            await asyncio.wait(self._pending)

    async def _churn_loop(self) -> None:
        churning = self.churnable(self.churn.share)
        interval = 60.0 / self.churn.per_min
        while True:
            await asyncio.sleep(interval)
            candidates = [i for i in churning if self.nodes[i].pid is not None]
            if not candidates:
                continue
            i = self.rng.choice(candidates)
            await self.nodes[i].stop()
            self.churn.left += 1
            self.churn.events.append((time.monotonic(), "leave", i, self.places[i].address))
            task = asyncio.create_task(self._rejoin(i))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _rejoin(self, i: int) -> None:
        await asyncio.sleep(self.churn.down_s)
        place = self.places[i]
        node = DhtNodeProcess(bootstrap=[self.contact()], no_rate_limit=not self.rate_limit,
                              netns=place.netns, proxy_host=place.address,
                              log_file=place.log_file)
        try:
            await node.start()
        except TierlinkError as exc:
            self.churn.failed_joins.append(f"node {i}: {exc}")
            return
        self.nodes[i] = node
        self.churn.joined += 1
        self.churn.events.append((time.monotonic(), "join", i, place.address))

    async def close(self) -> None:
        """Stop churning and every node."""
        if self._churn_task is not None:
            self._churn_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._churn_task
        for task in list(self._pending):
            task.cancel()
        await stop_nodes(self.nodes)

    async def __aenter__(self) -> DhtLab:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
