"""asyncio's UDP transport reads each datagram into a 256 KiB buffer, which glibc maps and
unmaps per datagram in a process whose allocator is in its start-up state; tierlink's sockets
read into a 64 KiB one (:func:`tierlink.transport.aioice_socket.bound_read_buffer`). Counted
with glibc's ``mallinfo2`` (mapped blocks), no speed asserted."""

from __future__ import annotations

import asyncio
import importlib

from tests.mapped_blocks import run_probe
from tierlink.transport import aioice_socket
from tierlink.transport.aioice_adapter import IceConnection
from tierlink.transport.aioice_socket import RECV_SIZE, bound_read_buffer

#: In a fresh interpreter whose allocator is pinned to glibc's start-up state: one datagram
#: received through asyncio's transport (bounded when argv[1] == "bounded") and kept; how
#: many more mmapped blocks glibc holds then.
_PROBE = r"""
import asyncio, json, sys
from tierlink.bench import allocator
from tierlink.transport.aioice_socket import bound_read_buffer

assert allocator.pin("mmap")

class Keep(asyncio.DatagramProtocol):
    def __init__(self):
        self.got = asyncio.get_running_loop().create_future()
    def datagram_received(self, data, addr):
        self.got.set_result((data, mapped_blocks()))

async def main():
    loop = asyncio.get_running_loop()
    rx, keep = await loop.create_datagram_endpoint(Keep, local_addr=("127.0.0.1", 0))
    bounded = bound_read_buffer(rx) if sys.argv[1] == "bounded" else None
    tx, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                remote_addr=rx.get_extra_info("sockname"))
    before = mapped_blocks()
    tx.sendto(bytes(1024))
    data, during = await asyncio.wait_for(keep.got, 10)
    print(json.dumps({"bounded": bounded, "mapped": during - before, "size": len(data)}))
    tx.close()
    rx.close()

asyncio.run(main())
"""


def _probe(how: str) -> dict[str, object]:
    return run_probe(_PROBE, how)


def test_a_bounded_read_is_not_mmapped_where_asyncios_is() -> None:
    shipped, bounded = _probe("shipped"), _probe("bounded")
    assert shipped["size"] == bounded["size"] == 1024
    assert shipped["mapped"] == 1  # the 256 KiB buffer, still mapped while the datagram lives
    assert bounded["bounded"] is True
    assert bounded["mapped"] == 0


def test_the_asyncio_names_it_relies_on_resolve() -> None:
    """Fails when this Python's asyncio renames what the bound relies on (the stdlib has no
    version pin but the interpreter's)."""
    for spec in aioice_socket.ASYNCIO_PRIVATE_NAMES:
        module, klass, attribute = spec.rsplit(".", 2)
        owner = getattr(importlib.import_module(module), klass)
        assert isinstance(getattr(owner, attribute, None), int), f"asyncio changed: {spec}"


def test_only_asyncios_selector_transport_is_bounded() -> None:
    class Other:  # e.g. aioice's TurnTransport or uvloop's UDPTransport: no max_size
        def is_closing(self) -> bool:
            return False

    assert bound_read_buffer(Other()) is False
    assert bound_read_buffer(None) is False


async def test_tierlinks_sockets_are_bounded_and_the_raw_baselines_are_not() -> None:
    ours = IceConnection(controlling=True, host_addresses=["127.0.0.1"])
    shipped = IceConnection(controlling=True, host_addresses=["127.0.0.1"], batch_receive=False)
    try:
        for ice in (ours, shipped):
            await ice.gather_candidates()
        assert [p.transport.max_size for p in ours._protocols] == [RECV_SIZE]
        assert [p.transport.max_size for p in shipped._protocols] == [256 * 1024]
    finally:
        await asyncio.gather(ours.close(), shipped.close())
