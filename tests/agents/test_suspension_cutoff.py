"""A suspension takes effect for commands the broker appended after it.

Nothing of a batch is durable before it is delivered, so a worker killed after a
provider call leaves no trace of the command: its redelivery looks like a first
delivery. Refused because the tenant was suspended meanwhile, a customer charged by the
provider would be told no payment happened (K1). So `tenants suspend` records when it
suspended, and a record appended before that runs as it would have (the provider
answers a repeat from its idempotency key); one appended at or after it is refused.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from paystream.client import build_command
from paystream.gateways.simulator import SimulatorGateway
from paystream.tenancy.mirror import RegistryState
from paystream.tenancy.models import Tenant, TenantStatus
from paystream.tenancy.registry import tenant_record
from tests.agents.harness import Harness, data, kind

CHARGE = {"amount": 800, "currency": "USD", "payment_method_token": "pm_card_visa"}
SUSPENDED_AT = 1_790_000_000_000


def _suspend(h: Harness, t: str, at_ms: int | None) -> None:
    tenant = Tenant.model_validate(h.tenants[t])
    if at_ms is None:  # as a version before suspension times wrote it
        h.tenants[t] = {**h.tenants[t], "status": "suspended"}
    else:
        h.tenants[t] = tenant.suspended(at_ms).model_dump(mode="json")


async def _charges(h: Harness, t: str) -> int:
    gateway = h.pool.get(Tenant.model_validate(h.tenants[t]))
    assert isinstance(gateway, SimulatorGateway)
    return sum(1 for e in await gateway.effects() if e.kind == "charge")


async def _send(h: Harness, t: str, at_ms: int, command_id: str) -> Any:
    cmd = build_command("payment.create", t, dict(CHARGE), command_id=command_id)
    _, out = await h.send_event(cmd, timestamp_ms=at_ms, offset=at_ms % 1_000_000)
    assert out is not None
    return out


@pytest.mark.asyncio
async def test_a_command_appended_after_the_suspension_is_refused(harness: Harness) -> None:
    t = harness.add_tenant()
    _suspend(harness, t, SUSPENDED_AT)
    for at in (SUSPENDED_AT, SUSPENDED_AT + 60_000):
        out = await _send(harness, t, at, f"after-{at}")
        assert data(out)["reason"] == "tenant_suspended"
    assert await _charges(harness, t) == 0


@pytest.mark.asyncio
async def test_a_backlog_appended_before_the_suspension_runs(harness: Harness) -> None:
    """Queued behind a slow or restarting worker when the operator suspended the tenant:
    the broker had them first, as the worker might have."""
    t = harness.add_tenant()
    _suspend(harness, t, SUSPENDED_AT)
    out = await _send(harness, t, SUSPENDED_AT - 1, "queued")
    assert kind(out) == "payment.succeeded", data(out)
    assert await _charges(harness, t) == 1
    again = await _send(harness, t, SUSPENDED_AT - 1, "queued")  # redelivered
    assert again.get_id() == out.get_id()
    assert await _charges(harness, t) == 1


@pytest.mark.asyncio
async def test_a_suspension_without_a_time_refuses_everything(harness: Harness) -> None:
    """Written by a version before suspension times (or read from a record this version
    cannot parse but that says "suspended"): no record is known to predate it."""
    t = harness.add_tenant()
    _suspend(harness, t, None)
    out = await _send(harness, t, 1_000, "old")
    assert data(out)["reason"] == "tenant_suspended"


@pytest.mark.asyncio
async def test_a_refusal_stands_after_reactivation(harness: Harness) -> None:
    """A refused record redelivered once the tenant is active again keeps its answer."""
    t = harness.add_tenant()
    _suspend(harness, t, SUSPENDED_AT)
    refused = await _send(harness, t, SUSPENDED_AT + 5, "refused")
    harness.tenants[t] = (
        Tenant.model_validate(harness.tenants[t]).activated().model_dump(mode="json")
    )
    again = await _send(harness, t, SUSPENDED_AT + 5, "refused")
    assert again.get_id() == refused.get_id() and data(again)["reason"] == "tenant_suspended"
    assert await _charges(harness, t) == 0


def test_suspending_keeps_the_first_time_and_activating_clears_it() -> None:
    tenant = Tenant(tenant_id="acme")
    assert tenant.suspended_at_ms is None
    suspended = tenant.suspended(100)
    assert (suspended.status, suspended.suspended_at_ms) == (TenantStatus.SUSPENDED, 100)
    # Suspending again must not let through what was appended between the two.
    assert suspended.suspended(200).suspended_at_ms == 100
    active = suspended.activated()
    assert (active.status, active.suspended_at_ms) == (TenantStatus.ACTIVE, None)
    assert active.suspended(300).suspended_at_ms == 300


def test_the_registry_record_carries_the_time_only_when_suspended() -> None:
    """An active tenant's record stays readable by a worker not yet upgraded (its model
    forbids fields it does not know); a suspended one's is read as suspended by it."""
    active = tenant_record(Tenant(tenant_id="acme"))
    assert "suspended_at_ms" not in active
    suspended = tenant_record(Tenant(tenant_id="acme").suspended(SUSPENDED_AT))
    assert suspended["suspended_at_ms"] == SUSPENDED_AT
    assert Tenant.model_validate(suspended).suspended_at_ms == SUSPENDED_AT
    with pytest.raises(ValueError):
        Tenant.model_validate({**suspended, "suspended_at_ms": -1})


def test_a_record_this_version_cannot_read_that_says_suspended_refuses_everything() -> None:
    mirror = RegistryState()
    mirror.apply(b'"acme"', json.dumps(tenant_record(Tenant(tenant_id="acme"))).encode())
    newer = {**tenant_record(Tenant(tenant_id="acme").suspended(5)), "from_the_future": 1}
    mirror.apply(b'"acme"', json.dumps(newer).encode())
    kept = mirror.tenants["acme"]
    assert kept.status is TenantStatus.SUSPENDED and kept.suspended_at_ms is None
