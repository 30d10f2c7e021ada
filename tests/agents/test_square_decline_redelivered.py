"""A declined payment.create on a Square tenant, redelivered. Square keeps only a
successful answer under a key (its idempotency page): the decline is not replayed, the
request under the key runs again. paystream must still answer one `payment.failed`,
never a charge (through the Square gateway, against the tests' FAKE Square)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from cloudevents.core.v1.event import CloudEvent
from pydantic import SecretStr

from paystream.agents.pipeline import CommandProcessor, Emit
from paystream.gateways.base import (
    GatewayContext,
    PaymentGateway,
    PaymentStatus,
    RetrievePayment,
)
from paystream.gateways.registry import GatewayDeps
from paystream.gateways.square import SquareGateway
from paystream.settings import load_settings
from paystream.tenancy.gateways import GatewayPool
from paystream.tenancy.models import Tenant
from paystream.tenancy.policy import call_policy
from tests.agents.harness import Harness, data, kind, outcome_of
from tests.agents.test_applied_by_entity import _crash_back_to, _durable
from tests.agents.test_let_through_by_provider import _command
from tests.fixtures.square_fake import FAKE_SQUARE_LOCATION, FAKE_SQUARE_TOKEN

pytestmark = pytest.mark.asyncio

_DECLINED = {
    "payment_id": "p1",
    "amount": 800,
    "currency": "USD",
    "payment_method_token": "cnon:card-nonce-declined",
}


class _SquarePool(GatewayPool):
    """The pool, a Square tenant's gateway built with the fake's token (no sealed
    secrets in these tests)."""

    def _build(self, tenant: Tenant) -> PaymentGateway:
        if tenant.gateway != "square":
            return super()._build(tenant)
        ctx = GatewayContext(
            tenant_id=tenant.tenant_id,
            provider="square",
            credentials={"access_token": SecretStr(FAKE_SQUARE_TOKEN)},
            options=dict(tenant.gateway_options),
        )
        return SquareGateway.from_context(ctx, self.deps)


@pytest_asyncio.fixture
async def h(square_url: str) -> AsyncIterator[Harness]:
    settings = load_settings(
        square_api_base=square_url, gateway_backoff_base_ms=1, gateway_max_attempts=3
    )
    harness = Harness(settings, None)
    harness.pool = _SquarePool(GatewayDeps(settings=settings), call_policy=call_policy(settings))
    harness.processor = CommandProcessor(
        settings, harness.tables, harness.idempotency, harness.tenants, harness.pool
    )
    try:
        yield harness
    finally:
        await harness.pool.aclose()


def _square_tenant(h: Harness) -> str:
    return h.add_tenant(gateway="square", gateway_options={"location_id": FAKE_SQUARE_LOCATION})


async def _read(h: Harness, t: str, provider_payment_id: str) -> PaymentStatus:
    gateway = h.pool.get(Tenant.model_validate(h.tenants[t]))
    res = await gateway.retrieve_payment(
        RetrievePayment(provider_payment_id=provider_payment_id), idempotency_key="read"
    )
    return res.status


async def test_a_decline_redelivered_after_it_was_recorded_is_its_recorded_answer(
    h: Harness,
) -> None:
    """Its record kept: answered from it, Square not asked again."""
    t = _square_tenant(h)
    rec = _command(t, "payment.create", _DECLINED, "cmd-declined")
    first = await h.processor.process(rec)
    again = await h.processor.process(rec)
    [out] = [e for e in first if e.topic == h.settings.events_topic]
    [out_again] = [e for e in again if e.topic == h.settings.events_topic]
    assert out_again.record.value == out.record.value
    outcome = _outcome(h, first)
    assert kind(outcome) == "payment.failed", data(outcome)
    pid = h.tables.payments[f"{t}:p1"]["provider_payment_id"]
    assert pid and await _read(h, t, pid) is PaymentStatus.FAILED


async def test_a_decline_lost_at_a_crash_is_declined_again_once_never_charged(
    h: Harness,
) -> None:
    """Nothing of the batch durable: the command runs again, and Square (keeping no
    decline under the key) runs the request again. One `payment.failed`, the same event,
    the payment recorded failed with Square's FAILED payment, nothing charged."""
    t = _square_tenant(h)
    durable = _durable(h)
    rec = _command(t, "payment.create", _DECLINED, "cmd-declined-lost")
    first = _outcome(h, await h.processor.process(rec))
    assert kind(first) == "payment.failed", data(first)
    first_pid = h.tables.payments[f"{t}:p1"]["provider_payment_id"]
    _crash_back_to(h, durable)
    again = _outcome(h, await h.processor.process(rec))
    assert (kind(again), again.get_id()) == ("payment.failed", first.get_id()), data(again)
    assert data(again)["error"]["decline_code"] == "generic_decline"
    again_pid = h.tables.payments[f"{t}:p1"]["provider_payment_id"]
    assert again_pid and again_pid != first_pid  # (a new attempt at Square, not a replay)
    for pid in (first_pid, again_pid):
        assert await _read(h, t, pid) is PaymentStatus.FAILED
    assert h.tables.payments[f"{t}:p1"]["status"] == "failed"


def _outcome(h: Harness, emits: list[Emit]) -> CloudEvent:
    out = outcome_of(h.settings, emits)
    assert out is not None
    return out
