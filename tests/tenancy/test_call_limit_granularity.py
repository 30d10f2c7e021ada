"""A provider call's time limit overruns by at most a tenth of itself (and 100 ms): the
shared deadline timer ticks at that granularity, so a short limit is kept short."""

from __future__ import annotations

import pytest

from paystream.settings import load_settings
from paystream.tenancy.policy import call_policy


def test_the_deadline_timer_ticks_at_a_tenth_of_a_short_limit() -> None:
    assert call_policy(load_settings(gateway_timeout_seconds=0.05)).deadlines.tick == (
        pytest.approx(0.005)
    )
    assert call_policy(load_settings(gateway_timeout_seconds=30.0)).deadlines.tick == (
        pytest.approx(0.1)
    )
