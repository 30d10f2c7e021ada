"""A provider call whose first attempt may have charged (its answer lost) and whose retry
is refused before the provider reads the request (the tenant's key rolled meanwhile):
parked, not rejected (review finding: it was answered `gateway_not_configured`, its
idempotency record deleted, while Stripe held the charge).

Through the real pipeline, call policy and Stripe gateway, over a fake HTTP transport
(tests/gateways/stripe/test_stripe_transport.py's) that answers as Stripe does.
"""

from __future__ import annotations

from typing import Any

import stripe
from cloudevents.core.v1.event import CloudEvent
from pydantic import SecretStr

from paystream.agents.pipeline import CommandProcessor
from paystream.client import build_command
from paystream.gateways.base import GatewayContext, PaymentGateway
from paystream.gateways.registry import GatewayDeps
from paystream.gateways.stripe import StripeGateway
from paystream.settings import load_settings
from paystream.tenancy.gateways import GatewayPool
from paystream.tenancy.models import Tenant
from paystream.tenancy.policy import call_policy
from tests.agents.harness import Harness, kind
from tests.gateways.stripe.test_stripe_transport import PI, FakeStripe

PAYMENT = {
    "payment_id": "p1",
    "amount": 2000,
    "currency": "USD",
    "payment_method_token": "pm_card_visa",
}


class _StripeOver(GatewayPool):
    """Every tenant's Stripe gateway talks to one fake transport."""

    def __init__(self, fake: FakeStripe, deps: GatewayDeps, **kw: Any) -> None:
        super().__init__(deps, **kw)
        self.fake = fake

    def _build(self, tenant: Tenant) -> PaymentGateway:
        ctx = GatewayContext(
            tenant_id=tenant.tenant_id,
            provider="stripe",
            credentials={"api_key": SecretStr("sk_test_x")},
        )
        return StripeGateway.from_context(ctx, self.deps, http_client=self.fake)


def _harness(fake: FakeStripe) -> Harness:
    settings = load_settings(gateway_backoff_base_ms=1, gateway_max_attempts=3)
    h = Harness(settings, None)
    h.pool = _StripeOver(fake, GatewayDeps(settings=settings), call_policy=call_policy(settings))
    h.processor = CommandProcessor(settings, h.tables, h.idempotency, h.tenants, h.pool)
    return h


async def test_a_charge_whose_answer_was_lost_is_parked_when_the_retry_is_refused() -> None:
    charged: list[str] = []

    def stripe_side(req: dict[str, Any]) -> Any:
        if not charged:
            charged.append(req["headers"]["Idempotency-Key"])  # charged; answer lost
            raise stripe.APIConnectionError("network", should_retry=True) from TimeoutError()
        # The key was rolled meanwhile: 401, before Stripe looks the idempotency key up.
        error = {"type": "invalid_request_error", "message": "Invalid API Key provided"}
        return 401, {"error": error}

    h = _harness(FakeStripe(stripe_side))
    t = h.add_tenant(gateway="stripe")
    emits, outcome = await h.send_event(_command(t))
    assert charged, "the first attempt reached the fake provider"
    assert outcome is None, kind(outcome)
    assert [e.topic for e in emits] == [h.settings.retry_topic]
    assert h.idempotency[f"{t}:order-1"]["state"] == "parked"


async def test_a_refused_first_attempt_is_still_answered() -> None:
    """Nothing sent before: the 401 is the answer (not remembered, so the same key runs
    once the credentials are fixed)."""

    def stripe_side(req: dict[str, Any]) -> Any:
        return 401, {"error": {"type": "invalid_request_error", "message": "Invalid API Key"}}

    h = _harness(FakeStripe(stripe_side))
    t = h.add_tenant(gateway="stripe")
    _, outcome = await h.send_event(_command(t))
    assert outcome is not None and kind(outcome) == "command.rejected"
    assert f"{t}:order-1" not in h.idempotency


async def test_a_lost_answer_then_the_providers_answer_finishes() -> None:
    """The retry under the same key gets the provider's answer: the command finishes."""
    calls: list[str] = []

    def stripe_side(req: dict[str, Any]) -> Any:
        calls.append(req["headers"]["Idempotency-Key"])
        if len(calls) == 1:
            raise stripe.APIConnectionError("network", should_retry=True) from TimeoutError()
        return 200, PI

    h = _harness(FakeStripe(stripe_side))
    t = h.add_tenant(gateway="stripe")
    _, outcome = await h.send_event(_command(t))
    assert outcome is not None and kind(outcome) == "payment.succeeded"
    assert len(calls) == 2 and calls[0] == calls[1]


def _command(tenant: str) -> CloudEvent:
    return build_command("payment.create", tenant, PAYMENT, idempotency_key="order-1")
