"""An open circuit stays open for its whole reset delay, not only at the instant it
opened: a provider that is down gets no call from the tenant until the delay is up,
and the wait it reports counts down."""

from __future__ import annotations

import pytest

from paystream.gateways.retry import CircuitBreaker, CircuitState


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_open_circuit_holds_calls_back_until_the_reset_delay_is_up() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=2, reset_seconds=5.0, clock=clock)
    breaker.on_failure()
    assert breaker.before_call() is None  # one failure: still closed
    breaker.on_failure()
    assert breaker.state is CircuitState.OPEN
    clock.now += 1.0
    assert breaker.before_call() == pytest.approx(4.0)
    clock.now += 3.9
    assert breaker.before_call() == pytest.approx(0.1)
    assert breaker.state is CircuitState.OPEN
    clock.now += 0.1
    assert breaker.before_call() is None  # the one trial call
    assert breaker.state is CircuitState.HALF_OPEN
    assert breaker.before_call() == pytest.approx(5.0)  # no second probe meanwhile
