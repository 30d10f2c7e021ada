"""A re-drive that reaches the worker past the provider's idempotency-key window, for a
tenant suspended or removed since: parked again (`stale`), never a final rejection."""

from __future__ import annotations

import time

import pytest

from paystream.agents.pipeline import Inbound
from paystream.client import build_command
from paystream.gateways.simulator import SimulatorGateway
from paystream.settings import CloudEventsMode
from paystream.streams.codec import encode_event
from paystream.tenancy.models import Tenant
from tests.agents.harness import Harness, new_tenant_id, outcome_of

_BODY = {"amount": 5000, "currency": "USD", "payment_method_token": "pm_card_visa",
         "payment_id": "p1"}  # fmt: skip


def _record(tenant: str, offset: int, headers: dict[str, bytes] | None = None) -> Inbound:
    event = build_command("payment.create", tenant, _BODY, command_id="c1")
    rec = encode_event(event, tenant.encode(), CloudEventsMode.BINARY)
    return Inbound(rec.key, rec.value, {**dict(rec.headers), **(headers or {})},
                   int(time.time() * 1000), "paystream.commands", 0, offset)  # fmt: skip


@pytest.mark.asyncio
@pytest.mark.parametrize("change", ["suspended", "removed"])
async def test_a_stale_redrive_of_a_suspended_or_removed_tenant_is_parked_not_refused(
    harness: Harness, change: str
) -> None:
    """The provider charged p1 but its answers were lost: parked. `dlq replay` re-sent it
    inside the window; the worker reaches it a day later (lag after an outage), after its
    idempotency record expired, and meanwhile the tenant was suspended (or removed). An
    active tenant's command is parked again as `stale` (never a final answer: the
    provider may have charged). A suspended or removed tenant's got a final rejection,
    `tenant_suspended` / `unknown_tenant`: its sender, told it failed, pays again."""
    t = new_tenant_id()
    harness.add_tenant(t, gateway_options={"lose_response_first": {f"pse:{t}:payment:p1": 3}})
    emits = await harness.processor.process(_record(t, 1))
    assert [e.topic for e in emits] == [harness.settings.retry_topic]
    gateway = harness.pool.get(Tenant.model_validate(harness.tenants[t]))
    assert isinstance(gateway, SimulatorGateway)
    assert sum(1 for e in await gateway.effects() if e.kind == "charge") == 1
    key = f"{t}:c1"
    harness.idempotency[key] = {**harness.idempotency[key], "expires_at": time.time() - 1}
    if change == "suspended":
        harness.tenants[t] = {**harness.tenants[t], "status": "suspended"}
    else:
        del harness.tenants[t]
    day_ago = int(time.time() * 1000) - 25 * 3_600_000
    emits = await harness.processor.process(
        _record(t, 2, {"paystream-first-attempt-ms": str(day_ago).encode()})
    )
    out = outcome_of(harness.settings, emits)
    assert out is None, f"final answer {out.get_type() if out else None}: {out and out.get_data()}"
    [parked] = [e for e in emits if e.topic == harness.settings.retry_topic]
    assert dict(parked.record.headers)["paystream-park-reason"] == b"stale"
