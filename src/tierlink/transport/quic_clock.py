"""The clock of aioquic's ``now`` and of its timer deadlines: :func:`quic_clock`."""

from __future__ import annotations

import time

#: The clock of aioquic's ``now`` and of its timer deadlines: CLOCK_MONOTONIC at full
#: resolution, read afresh each time. Not ``loop.time()``: uvloop's is libuv's millisecond
#: clock, so aioquic's pacer (which refills by the time elapsed since its last look) would
#: let through one burst per millisecond, at most 16 packets: ~23 MB/s at 1452-byte packets,
#: with the loop spinning between ticks. asyncio's ``loop.time()`` is this same clock.
quic_clock = time.monotonic
