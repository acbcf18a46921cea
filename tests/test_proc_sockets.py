"""Reading a child's sockets from /proc: a socket opened mid-read is never another program's."""

from __future__ import annotations

import socket
import subprocess
import sys

from tierlink.dht import proc_sockets

PROXY = 18080
LISTEN = (PROXY, True, "0A", "777")
UDP = (4222, True, "07", "778")


class OpensMidRead:
    """A child that opens its proxy and DHT sockets right after the first /proc read."""

    def __init__(self) -> None:
        self.reads = 0

    def _opened(self) -> bool:
        self.reads += 1
        return self.reads > 1

    def table(self, pid: int, name: str) -> list[tuple[int, bool, str, str]]:
        if not self._opened():
            return []
        return {"tcp": [LISTEN], "udp": [UDP]}.get(name, [])

    def inodes(self, pid: int) -> set[str]:
        return {"777", "778"} if self._opened() else set()


def test_socket_opened_between_reads_is_not_taken(monkeypatch) -> None:
    child = OpensMidRead()
    monkeypatch.setattr(proc_sockets, "_table", child.table)
    monkeypatch.setattr(proc_sockets, "_socket_inodes", child.inodes)
    assert proc_sockets.bound_udp_port(1, PROXY) == (None, False)
    assert proc_sockets.bound_udp_port(1, PROXY) == (4222, False)


def test_real_child_listening_is_ours_and_a_squatter_is_taken() -> None:
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    code = (
        "import socket,sys;t=socket.socket();t.bind(('127.0.0.1',0));t.listen();"
        "u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);u.bind(('127.0.0.1',0));"
        "print(t.getsockname()[1],u.getsockname()[1],flush=True);sys.stdin.read()"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        tcp_port, udp_port = map(int, child.stdout.readline().split())
        assert proc_sockets.bound_udp_port(child.pid, tcp_port) == (udp_port, False)
        assert proc_sockets.bound_udp_port(child.pid, taken) == (None, True)
    finally:
        child.kill()
        child.wait()
        squatter.close()
