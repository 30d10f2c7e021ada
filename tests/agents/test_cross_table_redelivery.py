"""A batch that changes an entity other commands read without writing (a payment's
customer or payment method) lands its decisions first (agents/commands.py
`_delivery_order`; tests/agents/test_delivery_order.py). This is why that suffices: with
every decision landed and any part of the rest lost, a redelivered charge or attach is
answered as it was and its entity rebuilt, whatever the later command of the batch left.
(Review finding: with the decisions lost beside a landed detach, the charge's redelivery
was refused `invalid_state`, its card charged under that key and no payment recorded.)"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from cloudevents.core.v1.event import CloudEvent

from paystream.client import build_command
from paystream.gateways import base as gw
from paystream.gateways.simulator import SimulatorGateway
from paystream.money import Money
from paystream.tenancy.models import Tenant
from tests.agents.harness import Harness, data, kind

pytestmark = pytest.mark.asyncio

WHEN_MS = 1_700_000_000_000
ENTITIES = ("customers", "payment_methods", "payments", "refunds", "disputes")


def _snapshot(h: Harness) -> dict[str, Any]:
    return {name: copy.deepcopy(dict(getattr(h.tables, name))) for name in ENTITIES}


def _lose_all_but(h: Harness, landed: str, before: dict[str, Any]) -> None:
    """A crash after the decisions landed (idempotency kept) and, of the rest, only the
    ``landed`` table's changelog."""
    for name in ENTITIES:
        if name != landed:
            table = getattr(h.tables, name)
            table.clear()
            table.update(copy.deepcopy(before[name]))


async def _effects(h: Harness, tenant: str) -> list[tuple[str, str]]:
    gateway = h.pool.get(Tenant.model_validate(h.tenants[tenant]))
    assert isinstance(gateway, SimulatorGateway)
    return sorted((e.kind, e.idempotency_key) for e in await gateway.effects())


async def _batch(h: Harness, events: list[CloudEvent], first_offset: int) -> list[Any]:
    outs = []
    for i, event in enumerate(events):
        _, out = await h.send_event(event, timestamp_ms=WHEN_MS, offset=first_offset + i)
        outs.append(out)
    return outs


@pytest.mark.parametrize(
    ("later", "landed"),
    [
        (("payment_method.detach", {"payment_method_id": "pm1"}), "payment_methods"),
        (("customer.delete", {"customer_id": "cus1"}), "customers"),
    ],
    ids=["detach", "delete"],
)
async def test_a_charge_redelivered_beside_a_landed_detach_or_delete_is_answered_as_it_was(
    harness: Harness, later: tuple[str, dict[str, Any]], landed: str
) -> None:
    h = harness
    tenant = h.add_tenant()
    await h.send("customer.create", tenant, {"customer_id": "cus1", "email": "a@example.com"})
    attach = {"customer_id": "cus1", "token": "pm_card_visa", "payment_method_id": "pm1"}
    assert kind(await h.send("payment_method.attach", tenant, attach)) == "payment_method.attached"
    before = _snapshot(h)
    pay = build_command(
        "payment.create",
        tenant,
        {
            "payment_id": "pay1",
            "amount": 1000,
            "currency": "USD",
            "customer_id": "cus1",
            "payment_method_id": "pm1",
        },
    )
    batch = [pay, build_command(later[0], tenant, later[1])]
    first = await _batch(h, batch, 100)
    assert kind(first[0]) == "payment.succeeded", data(first[0])
    effects = await _effects(h, tenant)
    _lose_all_but(h, landed, before)
    again = await _batch(h, batch, 100)
    assert [kind(o) for o in again] == [kind(o) for o in first]
    assert again[0].get_id() == first[0].get_id()
    assert h.tables.payments[f"{tenant}:pay1"]["status"] == "succeeded"
    assert await _effects(h, tenant) == effects  # charged once


async def test_an_attach_redelivered_beside_a_landed_customer_delete_is_answered_as_it_was(
    harness: Harness,
) -> None:
    h = harness
    tenant = h.add_tenant()
    await h.send("customer.create", tenant, {"customer_id": "cus1", "email": "a@example.com"})
    before = _snapshot(h)
    attach = build_command(
        "payment_method.attach",
        tenant,
        {"customer_id": "cus1", "token": "pm_card_visa", "payment_method_id": "pm1"},
    )
    batch = [attach, build_command("customer.delete", tenant, {"customer_id": "cus1"})]
    first = await _batch(h, batch, 200)
    assert kind(first[0]) == "payment_method.attached"
    _lose_all_but(h, "customers", before)
    again = await _batch(h, batch, 200)
    assert [kind(o) for o in again] == [kind(o) for o in first]
    assert again[0].get_id() == first[0].get_id()
    assert f"{tenant}:pm1" in h.tables.payment_methods


async def test_a_failed_refund_redelivered_beside_a_later_refunds_payment_is_answered_alike(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refund the provider answers failed writes the refund only, decided on its
    payment, which a later refund of the batch writes (review finding: with the decisions
    lost too, its redelivery was refused `invalid_state` on the later refund's state)."""
    h = harness
    real = SimulatorGateway.create_refund

    async def create_refund(self: Any, req: gw.CreateRefund, *, idempotency_key: str) -> Any:
        if req.amount == 700:  # (Stripe may answer a refund failed at once)
            return gw.RefundResult(
                provider_refund_id="re_failed_700",
                provider_payment_id=req.provider_payment_id,
                status=gw.RefundStatus.FAILED,
                amount=Money(amount=700, currency="USD"),
                failure_code="expired_or_canceled_card",
            )
        return await real(self, req, idempotency_key=idempotency_key)

    monkeypatch.setattr(SimulatorGateway, "create_refund", create_refund)
    tenant = h.add_tenant()
    pay = {
        "payment_id": "pay1",
        "amount": 1000,
        "currency": "USD",
        "payment_method_token": "pm_card_visa",
    }
    assert kind(await h.send("payment.create", tenant, pay)) == "payment.succeeded"
    before = _snapshot(h)
    batch = [
        build_command(
            "refund.create", tenant, {"payment_id": "pay1", "refund_id": "r1", "amount": 700}
        ),
        build_command(
            "refund.create", tenant, {"payment_id": "pay1", "refund_id": "r2", "amount": 600}
        ),
    ]
    first = await _batch(h, batch, 300)
    assert [kind(o) for o in first] == ["refund.failed", "refund.succeeded"]
    _lose_all_but(h, "payments", before)
    again = await _batch(h, batch, 300)
    assert [kind(o) for o in again] == [kind(o) for o in first], [data(o) for o in again]
