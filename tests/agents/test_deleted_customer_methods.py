"""A deleted customer's payment methods are detached with it at the provider (Stripe:
"deleting customers removes all credit card details"), which then refuses to detach
them again. paystream's table kept them attached, and the provider's refusal of their
detach left them attached here for good: it now means detached (review finding)."""

from __future__ import annotations

from typing import Any

import pytest

from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.gateways.simulator import SimulatorGateway
from paystream.tenancy.models import Tenant
from tests.agents.harness import Harness, data, kind

pytestmark = pytest.mark.asyncio


async def test_a_deleted_customer_s_method_refused_detach_at_the_provider_is_detached(
    harness: Harness,
) -> None:
    h = harness
    t = h.add_tenant()
    await h.send("customer.create", t, {"customer_id": "cus1", "email": "a@example.com"})
    attach = {"customer_id": "cus1", "token": "pm_card_visa", "payment_method_id": "pm1"}
    assert kind(await h.send("payment_method.attach", t, attach)) == "payment_method.attached"
    assert kind(await h.send("customer.delete", t, {"customer_id": "cus1"})) == "customer.deleted"
    gateway = h.pool.get(Tenant.model_validate(h.tenants[t]))
    assert isinstance(gateway, SimulatorGateway)
    effects = len(await gateway.effects())
    out = await h.send("payment_method.detach", t, {"payment_method_id": "pm1"})
    assert kind(out) == "payment_method.detached", data(out)
    assert data(out)["object"]["attached"] is False
    assert h.tables.payment_methods[f"{t}:pm1"]["attached"] is False
    assert len(await gateway.effects()) == effects  # (refused there: no effect)
    again = await h.send("payment_method.detach", t, {"payment_method_id": "pm1"})
    assert data(again)["reason"] == "invalid_state"


@pytest.mark.parametrize("deleted", [True, False])
async def test_stripe_s_refusal_of_a_deleted_customer_s_method_means_detached(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, deleted: bool
) -> None:
    """Stripe refuses with an invalid_request_error of no documented code ("not attached
    to a customer so detachment is impossible"); for a live customer it stays refused."""
    h = harness
    t = h.add_tenant()
    await h.send("customer.create", t, {"customer_id": "cus1", "email": "a@example.com"})
    attach = {"customer_id": "cus1", "token": "pm_card_visa", "payment_method_id": "pm1"}
    await h.send("payment_method.attach", t, attach)
    if deleted:
        await h.send("customer.delete", t, {"customer_id": "cus1"})
    gateway = h.pool.get(Tenant.model_validate(h.tenants[t]))

    async def refused(req: Any, idempotency_key: str) -> Any:
        raise GatewayError(
            ErrorCode.INVALID_REQUEST,
            "The payment method you provided is not attached to a customer so detachment "
            "is impossible.",
            provider="stripe",
            http_status=400,
        )

    monkeypatch.setattr(gateway, "detach_payment_method", refused)
    out = await h.send("payment_method.detach", t, {"payment_method_id": "pm1"})
    if deleted:
        assert kind(out) == "payment_method.detached", data(out)
    else:
        assert kind(out) == "command.rejected", data(out)
        assert h.tables.payment_methods[f"{t}:pm1"]["attached"] is True
