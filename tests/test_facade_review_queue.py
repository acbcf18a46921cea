"""Receive-queue wake-ups under cancellation, and its timeout argument: a receiver or sender
cancelled after it was woken hands its wake-up on, so an item (or free room) is never left
behind while another waits; a timeout that is not a number of seconds is refused."""

from __future__ import annotations

import asyncio
import math

import pytest

from tests.waiting import eventually
from tierlink.errors import BadTimeout, ConnectionClosed, TierlinkError
from tierlink.transport.recv_queue import RecvQueue


async def test_a_woken_getter_cancelled_before_it_runs_passes_the_item_on() -> None:
    q: RecvQueue[bytes] = RecvQueue()
    first = asyncio.create_task(q.get())
    second = asyncio.create_task(q.get())
    await eventually(lambda: q.waiting == 2, what="two receivers waiting")
    q.offer(b"only")  # wakes the first receiver...
    first.cancel()  # ...which is cancelled before it takes the item (a wait_for timing out)
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await asyncio.wait_for(second, 5) == b"only"
    assert q.waiting == 0


async def test_a_woken_timed_getter_cancelled_before_it_runs_passes_the_item_on() -> None:
    q: RecvQueue[bytes] = RecvQueue()
    first = asyncio.create_task(q.get(60))
    second = asyncio.create_task(q.get(60))
    await eventually(lambda: q.waiting == 2, what="two receivers waiting")
    q.offer(b"only")
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await asyncio.wait_for(second, 5) == b"only"


async def test_a_woken_putter_cancelled_before_it_runs_passes_the_room_on() -> None:
    q: RecvQueue[bytes] = RecvQueue(capacity=1)
    q.offer(b"full")
    first = asyncio.create_task(q.put(b"first"))
    second = asyncio.create_task(q.put(b"second"))
    await eventually(lambda: q.waiting_to_put == 2, what="two senders waiting")
    assert q.get_nowait() == b"full"  # room for one: wakes the first sender...
    first.cancel()  # ...which is cancelled before it puts its item
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 5)
    assert q.get_nowait() == b"second"


async def test_close_wakes_every_getter_and_putter_with_connection_closed() -> None:
    empty: RecvQueue[bytes] = RecvQueue()
    full: RecvQueue[bytes] = RecvQueue(capacity=1)
    full.offer(b"queued")
    getters = [asyncio.create_task(empty.get(t)) for t in (None, 60, None)]
    putters = [asyncio.create_task(full.put(b"more")) for _ in range(2)]
    await eventually(lambda: empty.waiting == 3 and full.waiting_to_put == 2,
                     what="three receivers and two senders waiting")
    empty.close("closed by the test")
    full.close("closed by the test")
    for task in [*getters, *putters]:
        with pytest.raises(ConnectionClosed, match="closed by the test"):
            await asyncio.wait_for(task, 5)
    assert empty.waiting == 0 and full.waiting_to_put == 0
    assert full.get_nowait() == b"queued"  # what was queued stays readable
    with pytest.raises(ConnectionClosed):
        full.get_nowait()


@pytest.mark.parametrize("timeout", [math.nan, -math.nan])
async def test_nan_timeout_is_refused(timeout: float) -> None:
    q: RecvQueue[bytes] = RecvQueue()
    with pytest.raises(BadTimeout, match="NaN"):
        await q.get(timeout)
    assert isinstance(BadTimeout("x"), TierlinkError) and isinstance(BadTimeout("x"), ValueError)


@pytest.mark.parametrize("timeout", [True, False, "1", b"1", [1]])
async def test_timeout_of_a_wrong_type_is_refused(timeout: object) -> None:
    q: RecvQueue[bytes] = RecvQueue()
    q.offer(b"queued")  # even with an item ready: the argument is wrong, not the state
    with pytest.raises(TypeError, match="timeout"):
        await q.get(timeout)  # type: ignore[arg-type]
    assert q.get_nowait() == b"queued"


async def test_seconds_timeouts_that_stay_valid() -> None:
    q: RecvQueue[bytes] = RecvQueue()
    assert await q.get(0) is None
    assert await q.get(-3) is None  # past deadline: at once, as asyncio's timeouts
    assert await q.get(0.01) is None
    q.offer(b"a")
    assert await q.get(math.inf) == b"a"
