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


def test_a_circuit_says_in_the_log_when_it_opens_and_closes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The on-call learns of a provider outage from the log too, and of what to do once it
    is over (review h67g: the circuits logged nothing)."""
    clock = Clock()
    breaker = CircuitBreaker(2, 5.0, clock=clock, name="acme at stripe")
    with caplog.at_level("INFO", logger="paystream.gateways.retry"):
        breaker.on_failure()
        breaker.on_failure()
        clock.now += 5.0
        assert breaker.before_call() is None
        breaker.on_failure()  # the trial fails: open again, not said again
        clock.now += 5.0
        assert breaker.before_call() is None
        breaker.on_success()
        breaker.on_success()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert lines[0].startswith("circuit of acme at stripe opened after 2 transient failures")
    assert "paystream dlq replay" in lines[0] and "5 s" in lines[0]
    assert lines[1].startswith("circuit of acme at stripe closed")
