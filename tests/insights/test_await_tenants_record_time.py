"""The record-time rule of InsightsRunner._tenant_unknown reads a record time Faust
gives as 0.0 (a record time of 0) or -0.001 (-1, Kafka's "no timestamp") as not known, as
_apply does, not as the oldest outcome there is: after any read to the end, a new
tenant's outcome with such a time was skipped unasked (review h62f)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.insights.test_await_tenants import _loaded, _outcome, _runner

pytestmark = pytest.mark.asyncio


@pytest.mark.parametrize("made", [0.0, -0.001])
async def test_an_outcome_without_a_record_time_still_asks(made: float) -> None:
    asked: list[int] = []
    tenants: dict[str, Any] = {"acme": object()}
    runner = _runner(tenants, _loaded(), asked)
    # One read to the end (a deleted tenant's outcome, say) sets the time of the last read.
    assert await runner.await_tenants([_outcome("gone", made=time.time())]) is True
    tenants.pop("new", None)  # ("new" is added by the next read to the end)
    # A payment of a tenant added since, its outcome's record time not known:
    assert await runner.await_tenants([_outcome("new", made=made)]) is True
    assert asked == [1, 1]
