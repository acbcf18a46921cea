"""What sockets a child process has bound, read from ``/proc``.

``/proc/<pid>/net/*`` shows the child's own network namespace, so this works for a dhtnode
started under ``ip netns exec`` as well; only sockets whose inode appears among the child's
file descriptors count as its own.
"""

from __future__ import annotations

import contextlib
import os

_TCP_LISTEN = "0A"


def _socket_inodes(pid: int) -> set[str]:
    inodes: set[str] = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    return inodes


def _table(pid: int, name: str) -> list[tuple[int, bool, str, str]]:
    """(local port, remote unset, state, inode) of each socket in the child's namespace."""
    rows: list[tuple[int, bool, str, str]] = []
    with contextlib.suppress(OSError), open(f"/proc/{pid}/net/{name}") as f:
        for line in f.readlines()[1:]:
            cols = line.split()
            if len(cols) < 10:
                continue
            port = int(cols[1].rpartition(":")[2], 16)
            unset = set(cols[2].partition(":")[0]) == {"0"}
            rows.append((port, unset, cols[3], cols[9]))
    return rows


def bound_udp_port(pid: int, proxy_port: int) -> tuple[int | None, bool]:
    """(the DHT UDP port the child bound or None, whether someone else listens on the proxy
    port). The UDP port is returned only once the child also listens on ``proxy_port``.

    The socket tables are read before the child's descriptors: a socket the child opens
    between the two reads is then missing from the tables (seen next time), never present
    in them without its descriptor (which would make it look like another program's)."""
    tcp = [row for name in ("tcp", "tcp6") for row in _table(pid, name)]
    udp = [row for name in ("udp", "udp6") for row in _table(pid, name)]
    mine = _socket_inodes(pid)
    proxy_ours = proxy_taken = False
    for port, _, state, inode in tcp:
        if port == proxy_port and state == _TCP_LISTEN:
            if inode in mine:
                proxy_ours = True
            else:
                proxy_taken = True
    if not proxy_ours:
        return None, proxy_taken
    ports = sorted(p for p, unset, _, inode in udp if unset and inode in mine)
    return (ports[0] if ports else None), False
