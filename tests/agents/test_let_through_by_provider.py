"""K1: a command whose whole batch a crash lost after the provider call is known by the
provider, not refused because its tenant was suspended meanwhile.

Nothing of a batch is durable before it is delivered, so after such a crash the only
record of the command is the provider's, under the idempotency key of its first call.
Before refusing a suspended tenant's command it has no record of, the worker asks the
provider, read-only, whether it knows that key: if so the command finishes (the
provider answers from the key: no second effect, the same event); if not, or if the
provider cannot tell (Stripe), it is refused as before, and the provider is asked
nothing else: suspension still stops every new charge.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest

from paystream.agents import pipeline
from paystream.gateways.simulator import SimulatorGateway
from paystream.tenancy.models import Tenant
from tests.agents.harness import Harness, data, kind, outcome_of
from tests.agents.test_applied_by_entity import SCENARIOS, _effects, _entities
from tests.agents.test_let_through import _answer, _command

pytestmark = pytest.mark.asyncio

CHARGE = {"amount": 800, "currency": "USD", "payment_method_token": "pm_card_visa"}


def _durable(h: Harness) -> tuple[Any, ...]:
    return (
        copy.deepcopy(h.idempotency),
        _entities(h),
        copy.deepcopy(dict(h.processor.limits.table)),
    )


def _crash_back_to(h: Harness, durable: tuple[Any, ...]) -> None:
    """What survives a worker killed after the provider call, before delivery."""
    h.idempotency.clear()
    h.idempotency.update(durable[0])
    for name, rows in durable[1].items():
        getattr(h.tables, name).clear()
        getattr(h.tables, name).update(rows)
    h.processor.limits.table.clear()
    h.processor.limits.table.update(durable[2])


def _suspend(h: Harness, t: str) -> None:
    h.tenants[t] = {**h.tenants[t], "status": "suspended"}


# A customer delete (customer.delete, customer.erase) takes no provider key, as on
# Stripe: nothing to ask the provider by (its retry meets "not found", answered as such).
KEYED = sorted(
    name for name in SCENARIOS if not name.startswith(("customer.delete", "customer.erase"))
)


@pytest.mark.parametrize("scenario", KEYED)
async def test_a_command_lost_whole_at_a_crash_finishes_once_suspended(
    harness: Harness, scenario: str
) -> None:
    h = harness
    t = h.add_tenant()
    record = dict(h.tenants[t])
    command_type, body = await SCENARIOS[scenario](h, t)
    durable = _durable(h)
    rec = _command(t, command_type, body, "cmd-k1")
    first = await _answer(h, rec)
    assert not kind(first).endswith("rejected"), data(first)
    effects = await _effects(h, record)
    _crash_back_to(h, durable)
    _suspend(h, t)
    again = await _answer(h, rec)
    assert (kind(again), again.get_id()) == (kind(first), first.get_id()), data(again)
    assert await _effects(h, record) == effects  # the provider acted once
    third = await _answer(h, rec)  # and so it stays
    assert (third.get_id(), data(third)) == (again.get_id(), data(again))


async def test_a_charge_lost_whole_at_a_crash_passes_a_limit_lowered_since(
    harness: Harness,
) -> None:
    """A limit lowered (or the day's volume spent) since is no reason to refuse a
    charge the provider already made: admitted as let through, answered as it was,
    and its money counted once."""
    h = harness
    t = h.add_tenant(limits={"daily_payment_volume": {"USD": 100_000}})
    record = dict(h.tenants[t])
    durable = _durable(h)
    rec = _command(t, "payment.create", {**CHARGE, "payment_id": "p1"}, "cmd-limited")
    first = await _answer(h, rec)
    assert kind(first) == "payment.succeeded"
    _crash_back_to(h, durable)
    h.tenants[t] = {**h.tenants[t], "limits": {"daily_payment_volume": {"USD": 100}}}
    again = await _answer(h, rec)
    assert (kind(again), again.get_id()) == (kind(first), first.get_id()), data(again)
    assert [k for k, _ in await _effects(h, record)] == ["charge"]
    volume = h.processor.limits.table[f"{t}:limits"].get("volume") or {}
    assert volume.get("USD") == 800, volume  # counted once
    new = await _answer(h, _command(t, "payment.create", dict(CHARGE), "cmd-new"))
    assert data(new)["reason"] == "quota_exceeded"  # a new charge is still refused


async def test_a_declined_charge_lost_at_a_crash_keeps_its_decline(harness: Harness) -> None:
    """The provider's record under the key is a refusal: the command was let through,
    and its answer is the decline, not `tenant_suspended`."""
    h = harness
    t = h.add_tenant()
    durable = _durable(h)
    body = {**CHARGE, "payment_method_token": "pm_card_chargeDeclined", "payment_id": "p1"}
    rec = _command(t, "payment.create", body, "cmd-declined")
    first = await _answer(h, rec)
    assert kind(first) == "payment.failed"
    _crash_back_to(h, durable)
    _suspend(h, t)
    again = await _answer(h, rec)
    assert (kind(again), again.get_id()) == ("payment.failed", first.get_id())


async def test_a_suspended_tenants_new_command_is_refused_and_charges_nothing(
    harness: Harness,
) -> None:
    """The kill switch: a command the provider never saw is refused, whenever appended."""
    h = harness
    t = h.add_tenant()
    record = dict(h.tenants[t])
    _suspend(h, t)
    for command_id in ("new-1", "new-2"):
        out = await _answer(h, _command(t, "payment.create", dict(CHARGE), command_id))
        assert data(out)["reason"] == "tenant_suspended"
    assert await _effects(h, record) == []


async def test_a_provider_that_cannot_tell_leaves_it_refused(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stripe has no read-only lookup by idempotency key (StripeGateway answers None):
    the command is refused as before (README: the K1 gap left for such providers)."""
    h = harness
    t = h.add_tenant()
    durable = _durable(h)
    rec = _command(t, "payment.create", {**CHARGE, "payment_id": "p1"}, "cmd-stripe-like")
    assert kind(await _answer(h, rec)) == "payment.succeeded"
    _crash_back_to(h, durable)
    _suspend(h, t)

    async def cannot_tell(self: SimulatorGateway, idempotency_key: str) -> bool | None:
        return None

    monkeypatch.setattr(SimulatorGateway, "knows_idempotency_key", cannot_tell)
    out = await _answer(h, rec)
    assert data(out)["reason"] == "tenant_suspended"


async def test_a_provider_that_does_not_answer_holds_the_batch_only_briefly(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness
    t = h.add_tenant()
    durable = _durable(h)
    rec = _command(t, "payment.create", {**CHARGE, "payment_id": "p1"}, "cmd-hung")
    assert kind(await _answer(h, rec)) == "payment.succeeded"
    _crash_back_to(h, durable)
    _suspend(h, t)

    async def hangs(self: SimulatorGateway, idempotency_key: str) -> bool | None:
        await asyncio.Event().wait()
        return True

    monkeypatch.setattr(SimulatorGateway, "knows_idempotency_key", hangs)
    monkeypatch.setattr(pipeline, "PROVIDER_LOOKUP_SECONDS", 0.05)
    out = outcome_of(h.settings, await asyncio.wait_for(h.processor.process(rec), 10))
    assert out is not None and data(out)["reason"] == "tenant_suspended"


async def test_the_simulator_knows_the_keys_it_took(harness: Harness) -> None:
    h = harness
    t = h.add_tenant()
    gateway = h.pool.get(Tenant.model_validate(h.tenants[t]))
    assert isinstance(gateway, SimulatorGateway)
    key = f"ps:{t}:cmd-known"
    assert await gateway.knows_idempotency_key(key) is False
    await _answer(h, _command(t, "payment.create", dict(CHARGE), "cmd-known"))
    assert await gateway.knows_idempotency_key(key) is True
    other = h.add_tenant()  # keys are the tenant's own
    elsewhere = h.pool.get(Tenant.model_validate(h.tenants[other]))
    assert await elsewhere.knows_idempotency_key(key) is False
