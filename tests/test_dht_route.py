"""A node whose address changes reconnects to its DHT proxy at once (root: namespaces).

The proxy lives in one namespace, the node in another behind a veth; the node's address is
replaced mid-run, as when a laptop moves to another network. Its pooled and listening HTTP
connections are bound to the vanished address and would hang; the node must notice through
rtnetlink and reconnect, then publish and be found again.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from tierlink import namespaces
from tierlink.dht.route import source_address

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("dhtnode") is None,
    reason="needs root (network namespaces), iproute2 and dhtnode",
)

NODE_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, subprocess, sys
    sys.path.insert(0, sys.argv[3])
    from tests.waiting import eventually
    from tierlink import Identity, Node, NodeConfig

    async def main(url, ns):
        config = NodeConfig(identity=Identity.generate(), dht_proxy=url,
                            host_addresses=["198.18.77.2"], dht_timeout=3.0)
        async with Node(config) as node:
            before = node.stats()["dht_route_changes"]
            subprocess.run(["ip", "addr", "del", "198.18.77.2/24", "dev", "v0"], check=True)
            subprocess.run(["ip", "addr", "add", "198.18.77.3/24", "dev", "v0"], check=True)
            await eventually(lambda: node.stats()["dht_route_changes"] > before, 10,
                             "the node noticed its DHT route's address went away")
            record = await node.publish()
            print(json.dumps({"before": before, "after": node.stats()["dht_route_changes"],
                              "published": record.seq}))

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


def test_source_address_is_a_route_lookup() -> None:
    assert source_address("http://127.0.0.1:4222/") == "127.0.0.1"
    assert source_address("http://localhost:4222/") is None  # names are not resolved
    assert source_address("not a url") is None


def test_node_reconnects_to_the_dht_when_its_address_changes(tmp_path) -> None:
    tag = f"tlrt{os.getpid() % 100000}"
    proxy_ns, node_ns = f"{tag}-p", f"{tag}-n"
    dht = None
    try:
        for ns in (proxy_ns, node_ns):
            subprocess.run(["ip", "netns", "add", ns], check=True)
            subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "link", "add", "v0", "netns", node_ns, "type", "veth", "peer",
                        "v1", "netns", proxy_ns], check=True)
        subprocess.run(["ip", "-n", proxy_ns, "addr", "add", "198.18.77.1/24", "dev", "v1"],
                       check=True)
        subprocess.run(["ip", "-n", node_ns, "addr", "add", "198.18.77.2/24", "dev", "v0"],
                       check=True)
        for ns, dev in ((proxy_ns, "v1"), (node_ns, "v0")):
            subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True)
        dht = subprocess.Popen(
            ["ip", "netns", "exec", proxy_ns, sys.executable, "-m", "tierlink.cli", "dht", "serve",
             "--port", "0", "--proxy-port", "8101", "--proxy-host", "198.18.77.1"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        assert dht.stdout is not None
        print(dht.stdout.readline())  # printed once the proxy listens
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        script = tmp_path / "node.py"
        script.write_text(NODE_SCRIPT)
        out = subprocess.run(
            ["ip", "netns", "exec", node_ns, sys.executable, str(script),
             "http://198.18.77.1:8101/", node_ns, repo],
            capture_output=True, text=True, timeout=90,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        result = json.loads(out.stdout.strip().splitlines()[-1])
        assert result["after"] > result["before"]
    finally:
        if dht is not None:
            dht.kill()
            dht.wait()
        for ns in (proxy_ns, node_ns):
            namespaces.remove(ns)
