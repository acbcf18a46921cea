"""A/B of the whole channel stack without sockets: CPU per 1 KiB reliable message.

    python bench/ab_stack.py --rounds 9 A=/path/to/old/src B=/path/to/new/src

Two SecureChannels (open_channel: aioquic, the pump, the channel core, the receive queue)
in one process, joined by an in-memory ICE stand-in that hands every datagram sent in one
loop pass to the peer's handler in one batch on the next (asking ``keep_reading`` between,
as the batch reader does). The dialer pipelines 1 KiB messages with ``submit`` (at most 64
pending, the bench's window), the callee reads them with ``recv``. Process CPU per message
(both sides together; no kernel, no socket). Each variant runs in a fresh interpreter with
that ``PYTHONPATH``; rounds alternate ABBA; figures are medians (min-max).
"""

from __future__ import annotations

from ab_rounds import compare

MESSAGES = 30_000

CHILD = r"""
import asyncio, json, sys, time
from tierlink.transport.certs import LocalCertificate
from tierlink.transport.channel import open_channel
from tierlink.wire.channel_frames import ChannelBinding

BINDING = ChannelBinding(bytes(range(32)), bytes(range(16)), b"\xaa" * 64, b"\xbb" * 64)
MESSAGES = int(sys.argv[1])


class MemoryIce:
    # What the pump and the channel use of IceConnection; a relayed pair: no MTU probing.
    is_relayed = True
    _query_consent_task = None

    def __init__(self):
        self.peer = None
        self._handler = self._keep = None
        self._inbox, self._scheduled = [], False

    def selected_pair(self):
        return ("memory", "memory")

    def forbid_fragmentation(self):
        return False

    def set_datagram_handler(self, handler, keep_reading=None):
        self._handler, self._keep = handler, keep_reading

    def send_nowait(self, data):
        peer = self.peer
        peer._inbox.append(bytes(data))
        if not peer._scheduled:
            peer._scheduled = True
            asyncio.get_running_loop().call_soon(peer._deliver)

    def send_batch(self, datagrams):
        for data in datagrams:
            self.send_nowait(data)

    def _deliver(self):
        self._scheduled = False
        inbox, self._inbox = self._inbox, []
        for i, data in enumerate(inbox):
            if self._handler is not None:
                self._handler(data)
            if i and self._keep is not None and not self._keep():
                self._inbox[:0] = inbox[i + 1:]
                if self._inbox and not self._scheduled:
                    self._scheduled = True
                    asyncio.get_running_loop().call_soon(self._deliver)
                return


async def main():
    a, b = MemoryIce(), MemoryIce()
    a.peer, b.peer = b, a
    ca, cb = LocalCertificate.generate(), LocalCertificate.generate()
    dialer, callee = await asyncio.gather(
        open_channel(a, binding=BINDING, is_client=True, certificate=ca,
                     peer_cert_sha256=cb.sha256),
        open_channel(b, binding=BINDING, is_client=False, certificate=cb,
                     peer_cert_sha256=ca.sha256),
    )
    payload = bytes(1024)

    async def send():
        pending = set()
        for _ in range(MESSAGES):
            if len(pending) >= 64:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            pending.add(dialer.submit(payload))
        await asyncio.gather(*pending)

    async def receive():
        for _ in range(MESSAGES):
            assert await callee.recv(10) is not None

    c0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(send(), receive())
    c1, t1 = time.process_time(), time.perf_counter()
    await dialer.close()
    await callee.close()
    print(json.dumps({"us_per_msg": (c1 - c0) / MESSAGES * 1e6,
                      "msgs_per_s": MESSAGES / (t1 - t0)}))

asyncio.run(main())
"""



def main() -> None:
    compare(CHILD, [str(MESSAGES)], ("us_per_msg", "msgs_per_s"))


if __name__ == "__main__":
    main()
