"""With every limit taken off a tenant, its limits state is kept while payments hold
against the day (review h67i). Any other command (a customer.create here) took the
"limits since removed" branch and, once no uncommitted decision was left, deleted the
state, the parked payment's hold with it: put back the same day, the volume limit then
admitted a payment the hold should have refused, and the parked payment, re-driven
(unchecked: admitted before), took the day over its limit. The second test is the
control: a payment.create in the same place."""

from __future__ import annotations

from typing import Any

import pytest

from tests.agents.conftest import running_harness
from tests.agents.harness import data, kind, new_tenant_id, outcome_of
from tests.agents.test_limits_hold_release import T0, _pay, _record

pytestmark = pytest.mark.asyncio


async def _between(redis_url: str, command_type: str, body: dict[str, Any]) -> Any:
    commit = {0: -1}
    async with running_harness(redis_url, committed=lambda partition: commit[0]) as h:
        t = new_tenant_id()
        h.add_tenant(
            t,
            gateway_options={"fail_first": {f"pse:{t}:payment:p1": 3}},
            limits={"daily_payment_volume": {"USD": 1000}},
        )
        a = {**_pay(900), "payment_id": "p1"}
        parked = await h.processor.process(_record("payment.create", t, a, "a", T0, 100))
        assert [e.topic for e in parked] == [h.settings.retry_topic]  # holds 900
        commit[0] = 150  # the park committed long since
        h.add_tenant(t, limits={})  # every limit taken off
        await h.processor.process(_record(command_type, t, body, "x", T0 + 1, 200))
        commit[0] = 201
        h.add_tenant(t, limits={"daily_payment_volume": {"USD": 1000}})  # put back
        later = await h.processor.process(_record("payment.create", t, _pay(950), "c", T0 + 2, 202))
        out = outcome_of(h.settings, later)
        assert out is not None
        return out


async def test_another_command_while_limits_are_off_keeps_a_parked_payments_hold(
    redis_url: str,
) -> None:
    out = await _between(redis_url, "customer.create", {"email": "x@example.com"})
    assert kind(out) == "command.rejected", (kind(out), data(out))
    assert data(out)["reason"] == "quota_exceeded"


async def test_control_a_payment_while_limits_are_off_keeps_it(redis_url: str) -> None:
    out = await _between(redis_url, "payment.create", _pay(10))
    assert kind(out) == "command.rejected", (kind(out), data(out))
    assert data(out)["reason"] == "quota_exceeded"
