"""The one backoff helper: delays grow, cap and reset (computed, never slept)."""

from __future__ import annotations

import math

import pytest

from tierlink.backoff import Backoff


def test_delays_grow_by_the_factor_up_to_the_maximum() -> None:
    b = Backoff(1.0, 2.0, 10.0)
    assert [b.next_delay() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_reset_starts_over() -> None:
    b = Backoff(0.5, 3.0)
    assert [b.next_delay() for _ in range(3)] == [0.5, 1.5, 4.5]
    b.reset()
    assert b.next_delay() == 0.5


def test_peek_does_not_advance() -> None:
    b = Backoff(0.1)
    assert b.peek() == b.peek() == 0.1
    assert b.next_delay() == 0.1 and b.peek() == pytest.approx(0.2)


def test_factor_one_is_a_fixed_delay_and_default_is_uncapped() -> None:
    fixed = Backoff(5.0, 1.0)
    assert {fixed.next_delay() for _ in range(5)} == {5.0}
    assert Backoff(1.0).maximum == math.inf


@pytest.mark.parametrize(
    ("initial", "factor", "maximum"), [(0.0, 2.0, 1.0), (1.0, 0.5, 2.0), (2.0, 2.0, 1.0)]
)
def test_nonsense_is_refused(initial: float, factor: float, maximum: float) -> None:
    with pytest.raises(ValueError):
        Backoff(initial, factor, maximum)
