"""A/B of the sans-IO channel core alone (protocol/ and wire/): CPU per 1 KiB message.

    python bench/ab_core.py --rounds 9 A=/path/to/old/src B=/path/to/new/src

No sockets, no event loop, no QUIC: a dialer's and a callee's ChannelProtocol, opened, pass
1 KiB messages in batches of 64 (the bench's send window); the dialer's stream writes reach
the callee cut into 1,400-byte pieces (what a 1,452-byte QUIC packet carries), the callee's
application takes every message it is handed and one cumulative ACK per batch goes back.
Each side's calls are timed apart (``time.perf_counter``). Each variant runs in a fresh
interpreter with that ``PYTHONPATH``; rounds alternate ABBA; figures are medians (min-max).
"""

from __future__ import annotations

from ab_rounds import compare

MESSAGES = 64 * 800
PIECE = 1400

CHILD = r"""
import json, sys, time
from tierlink.protocol import channel_events as ev
from tierlink.protocol.channel import ChannelProtocol
from tierlink.wire.channel_frames import PROTOCOL_VERSION, ChannelBinding, Hello, encode_hello

BINDING = ChannelBinding(bytes(range(32)), bytes(16), b"\xaa" * 64, b"\xbb" * 64)
EXPORTER = bytes(range(100, 132))
MESSAGES, PIECE = int(sys.argv[1]), int(sys.argv[2])

def core(client):
    return ChannelProtocol(is_client=client, binding=BINDING, max_message_size=1 << 24,
                           window=4 << 20, queue_capacity=16)

def carry(src, dst, piece):
    for c in src.pop_commands():
        if isinstance(c, ev.WriteStream):
            data = c.data
            step = piece or len(data) or 1
            for i in range(0, len(data), step):
                dst.handle_event(ev.StreamDataReceived(c.stream_id, data[i:i + step]))

a, b = core(True), core(False)
for side in (a, b):
    side.handle_event(ev.KeysReady(EXPORTER))
    side.handle_event(ev.HandshakeCompleted())
carry(a, b, 0)
carry(b, a, 0)
a.pop_events(); b.pop_events()
assert a.opened and b.opened
payload = bytes(1024)
tx = rx = 0.0
got = 0
clock = time.perf_counter
for _ in range(MESSAGES // 64):
    t0 = clock()
    for _ in range(64):
        a.send_message(payload)
    writes = [c for c in a.pop_commands()]
    t1 = clock()
    pieces = []
    for c in writes:
        data = c.data
        pieces += [(c.stream_id, data[i:i + PIECE]) for i in range(0, len(data), PIECE)]
    t2 = clock()
    for sid, piece in pieces:
        b.handle_event(ev.StreamDataReceived(sid, piece))
        while True:
            events = b.pop_events()
            if not events:
                break
            for e in events:
                if type(e) is ev.MessageReceived:
                    got += 1
                    b.message_consumed()
    b.write_ack()
    acks = b.pop_commands()
    t3 = clock()
    for c in acks:
        a.handle_event(ev.StreamDataReceived(c.stream_id, c.data))
    a.pop_events()
    t4 = clock()
    tx += (t1 - t0) + (t4 - t3)
    rx += t3 - t2
assert got == MESSAGES, got
print(json.dumps({"dialer_us_per_msg": tx / MESSAGES * 1e6,
                  "callee_us_per_msg": rx / MESSAGES * 1e6}))
"""



def main() -> None:
    compare(CHILD, [str(MESSAGES), str(PIECE)], ("dialer_us_per_msg", "callee_us_per_msg"))


if __name__ == "__main__":
    main()
