"""Rejections kept for their records' redeliveries are all kept, however many pile up
before a commit: past a cap of 800 a partition (or 256 KiB, which 134 long validation
errors of one tenant filled) a rejection was not kept, and its redelivery, decided
afresh once the tenant was resumed, charged a payment its sender had been told was
refused (review finding, reproduced by these)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.agents.harness import Harness, data, kind, new_tenant_id, outcome_of
from tests.agents.test_limits import T0, _charges, _pay, _record, _run

pytestmark = pytest.mark.asyncio


def _same(first: list[Any], again: list[Any]) -> bool:
    return [e.record for e in again] == [e.record for e in first]


async def _refused_then_resumed_and_redelivered(h: Harness, offset: int) -> None:
    t = h.add_tenant(status="suspended")
    rec = _record("payment.create", t, {**_pay(100), "payment_id": "p1"}, "r1", T0, offset)
    first, out = await _run(h, rec)
    assert data(out)["reason"] == "tenant_suspended"
    h.tenants[t] = {**h.tenants[t], "status": "active"}  # resumed
    again, out2 = await _run(h, rec)  # the crash's redelivery (nothing was committed)
    assert _same(first, again), f"redelivered it is {kind(out2)}"
    assert await _charges(h, t) == 0


async def test_a_rejection_after_a_thousand_others_is_kept(harness: Harness) -> None:
    stranger = new_tenant_id("unregistered")
    for offset in range(1_000):
        rec = _record("payment.create", stranger, _pay(100), f"s{offset}", T0, offset)
        out = outcome_of(harness.settings, await harness.raw(rec))
        assert out is not None and data(out)["reason"] == "unknown_tenant"
    await _refused_then_resumed_and_redelivered(harness, 1_000)


async def test_a_rejection_after_another_tenant_s_long_validation_errors_is_kept(
    harness: Harness,
) -> None:
    noisy = harness.add_tenant()
    bad = {f"field_{'x' * 300}_{i}": "x" for i in range(20)}  # ~1.9 KB kept each
    for offset in range(200):
        rec = _record("payment.create", noisy, {**_pay(100), **bad}, f"v{offset}", T0, offset)
        out = outcome_of(harness.settings, await harness.raw(rec))
        assert out is not None and data(out)["reason"] == "validation_error"
    stranger = new_tenant_id("unregistered")  # and what room is left, filled
    for offset in range(200, 300):
        rec = _record("payment.create", stranger, _pay(100), f"s{offset}", T0, offset)
        out = outcome_of(harness.settings, await harness.raw(rec))
        assert out is not None and data(out)["reason"] == "unknown_tenant"
    await _refused_then_resumed_and_redelivered(harness, 300)
