"""The engine's fake clock moves forward only, by exactly what it is told."""

from __future__ import annotations

import pytest

from placement.engine.clock import FakeClock, MonotonicClock


def test_the_fake_clock_moves_only_forward() -> None:
    c = FakeClock(start=10.0)
    assert c.now() == 10.0
    assert c.advance(0) == 10.0  # standing still is fine
    assert c.advance(2.5) == 12.5 and c.now() == 12.5
    c.set(12.5)
    c.set(20.0)
    assert c.now() == 20.0
    for move in (lambda: c.advance(-0.1), lambda: c.set(19.9)):
        with pytest.raises(ValueError) as e:
            move()
        assert str(e.value) == "a monotonic clock does not go back"
    assert c.now() == 20.0
    assert FakeClock().now() == 1000.0


def test_the_real_clock_is_monotonic() -> None:
    c = MonotonicClock()
    a = c.now()
    assert c.now() >= a
