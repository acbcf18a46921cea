"""The test wait helper fails loudly on timeout and returns what it waited for."""

from __future__ import annotations

import pytest

from tests.waiting import eventually


async def test_eventually_returns_the_truthy_value() -> None:
    calls = []

    def ready() -> list[int]:
        calls.append(1)
        return calls if len(calls) >= 3 else []

    assert await eventually(ready, timeout=5) == [1, 1, 1]


async def test_eventually_awaits_coroutine_predicates() -> None:
    async def ready() -> str:
        return "yes"

    assert await eventually(ready, timeout=1) == "yes"


async def test_eventually_fails_with_a_message_on_timeout() -> None:
    with pytest.raises(AssertionError, match=r"timed out after 0\.1 s waiting for the thing"):
        await eventually(lambda: False, timeout=0.1, what="the thing")
