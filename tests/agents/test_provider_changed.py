"""A command let through to one provider account (parked after the provider may have
acted, or in flight at a crash) and re-driven after its tenant moved to another account
must not be sent there: a key that account never saw is a new charge (review finding).
Nor is one refused for good because the tenant's gateway was narrowed meanwhile."""

from __future__ import annotations

import time
from typing import Any

import redis.asyncio as aioredis
import stripe
from pydantic import SecretStr

from paystream.agents.pipeline import CommandProcessor, Emit, Inbound
from paystream.client import build_command
from paystream.gateways.base import GatewayContext, PaymentGateway
from paystream.gateways.registry import GatewayDeps
from paystream.gateways.simulator import SimulatorGateway
from paystream.gateways.stripe import StripeGateway
from paystream.settings import CloudEventsMode, Settings, load_settings
from paystream.streams.codec import encode_event
from paystream.tenancy.gateways import GatewayPool
from paystream.tenancy.models import Tenant
from paystream.tenancy.policy import call_policy
from tests.agents.harness import Harness
from tests.gateways.stripe.test_stripe_transport import PI, FakeStripe

_PAYMENT = {
    "payment_id": "p1",
    "amount": 2000,
    "currency": "USD",
    "payment_method_token": "pm_card_visa",
}


class _StripeFor(GatewayPool):
    """The pool, with tenants on Stripe reaching a fake Stripe HTTP transport."""

    def __init__(self, fake: FakeStripe, deps: GatewayDeps, settings: Settings) -> None:
        super().__init__(deps, call_policy=call_policy(settings))
        self.fake = fake

    def _build(self, tenant: Tenant) -> PaymentGateway:
        if tenant.gateway != "stripe":
            return super()._build(tenant)
        ctx = GatewayContext(
            tenant_id=tenant.tenant_id,
            provider="stripe",
            credentials={"api_key": SecretStr("sk_test_x")},
            connected_account=tenant.connected_account,
        )
        return StripeGateway.from_context(ctx, self.deps, http_client=self.fake)


def _harness(redis_url: str | None, fake: FakeStripe) -> Harness:
    settings = load_settings(redis_url=redis_url, gateway_backoff_base_ms=1, gateway_max_attempts=3)
    client = aioredis.from_url(redis_url) if redis_url else None
    h = Harness(settings, client)
    h.pool = _StripeFor(fake, GatewayDeps(settings=settings, redis=client), settings)
    h.processor = CommandProcessor(settings, h.tables, h.idempotency, h.tenants, h.pool)
    return h


async def _parked(h: Harness, tenant: str) -> Inbound:
    """Run the payment once: its answer lost, it is parked. The parked record, re-driven."""
    cmd = build_command("payment.create", tenant, _PAYMENT, idempotency_key="order-1")
    rec = encode_event(cmd, tenant.encode(), CloudEventsMode.BINARY)
    now = int(time.time() * 1000)
    topic = h.settings.commands_topic
    emits = await h.raw(Inbound(rec.key, rec.value, dict(rec.headers), now, topic, 0, 10))
    (parked,) = [e.record for e in emits if e.topic == h.settings.retry_topic]
    return Inbound(parked.key, parked.value, dict(parked.headers), now, topic, 0, 11)


def _park_reasons(h: Harness, emits: list[Emit]) -> list[bytes | None]:
    return [
        dict(e.record.headers).get("paystream-park-reason")
        for e in emits
        if e.topic == h.settings.retry_topic
    ]


async def test_a_parked_charge_is_not_sent_to_the_tenants_new_provider(redis_url: str) -> None:
    calls: list[dict[str, Any]] = []

    def stripe_side(req: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        calls.append(req)
        return 200, PI

    h = _harness(redis_url, FakeStripe(stripe_side))
    try:
        t = h.add_tenant(gateway_options={"lose_response_first": {"*": 10}})
        redrive = await _parked(h, t)
        sim = h.pool.get(Tenant.model_validate(h.tenants[t]))
        assert isinstance(sim, SimulatorGateway)
        assert [e.kind for e in await sim.effects()] == ["charge"]
        h.tenants[t] = {**h.tenants[t], "gateway": "stripe", "gateway_options": {}}
        emits = await h.raw(redrive)
        assert _park_reasons(h, emits) == [b"provider_changed"]
        assert [e.topic for e in emits] == [h.settings.retry_topic]  # no outcome
        assert calls == []
        # Put back: it runs there, answered from the simulator's key.
        h.tenants[t] = {**h.tenants[t], "gateway": "simulator", "gateway_options": {}}
        emits = await h.raw(redrive)
        assert [e.topic for e in emits if e.topic == h.settings.events_topic]
        assert [e.kind for e in await sim.effects()] == ["charge"]
    finally:
        await h.pool.aclose()


async def test_a_parked_charge_is_not_sent_to_another_connected_account() -> None:
    calls: list[tuple[str | None, str | None]] = []

    def side(req: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        calls.append((req["headers"].get("Stripe-Account"), req["headers"].get("Idempotency-Key")))
        if len(calls) <= 3:  # every attempt of the first run may have charged
            raise stripe.APIConnectionError("network", should_retry=True) from TimeoutError()
        return 200, PI

    h = _harness(None, FakeStripe(side))
    try:
        t = h.add_tenant(gateway="stripe", connected_account="acct_A")
        redrive = await _parked(h, t)
        h.tenants[t] = {**h.tenants[t], "connected_account": "acct_B"}
        emits = await h.raw(redrive)
        assert _park_reasons(h, emits) == [b"provider_changed"]
        assert {account for account, _ in calls} == {"acct_A"}
    finally:
        await h.pool.aclose()


async def test_a_parked_charge_is_parked_again_when_its_capability_was_withdrawn(
    redis_url: str,
) -> None:
    """Not refused `unsupported` for good under its key: the provider charged it."""
    h = _harness(redis_url, FakeStripe(lambda req: (200, PI)))
    try:
        t = h.add_tenant(gateway_options={"lose_response_first": {"*": 10}})
        redrive = await _parked(h, t)
        options = {"capabilities": ["customers", "refunds"]}
        h.tenants[t] = {**h.tenants[t], "gateway_options": options}
        emits = await h.raw(redrive)
        assert _park_reasons(h, emits) == [b"unsupported"]
        assert h.idempotency[f"{t}:order-1"]["state"] == "parked"
    finally:
        await h.pool.aclose()
