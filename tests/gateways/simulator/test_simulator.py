"""Simulator specifics: the effect ledger, concurrency, failure injection, durability."""

from __future__ import annotations

import asyncio
import socket
import uuid
from typing import Any

import pytest
import redis.asyncio as aredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from paystream.errors import ConfigurationError
from paystream.gateways.base import (
    CaptureMethod,
    CapturePayment,
    CreatePayment,
    CreateRefund,
    GatewayContext,
    PaymentStatus,
)
from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.gateways.registry import GatewayDeps
from paystream.gateways.simulator import SimulatorGateway
from paystream.money import Money
from paystream.settings import load_settings

SETTINGS = load_settings()


def sim(redis: aredis.Redis, tenant: str, **options: Any) -> SimulatorGateway:
    ctx = GatewayContext(tenant_id=tenant, provider="simulator", options=options)
    return SimulatorGateway.from_context(ctx, GatewayDeps(settings=SETTINGS, redis=redis))


def charge(amount: int = 1000, token: str = "pm_card_visa", **kw: Any) -> CreatePayment:
    return CreatePayment(
        amount=Money(amount=amount, currency="EUR"), provider_payment_method_id=token, **kw
    )


def test_from_context_without_redis_fails_clearly() -> None:
    ctx = GatewayContext(tenant_id="t1", provider="simulator")
    with pytest.raises(ConfigurationError, match="Redis"):
        SimulatorGateway.from_context(ctx, GatewayDeps(settings=SETTINGS))


def test_bad_option_is_a_configuration_error(redis_client: aredis.Redis) -> None:
    with pytest.raises(ConfigurationError, match="fail_code"):
        sim(redis_client, "t1", fail_code="card_declined")
    with pytest.raises(ConfigurationError, match="bogus"):
        sim(redis_client, "t1", bogus=1)


async def test_effects_are_recorded_once_per_key(
    redis_client: aredis.Redis, tenant_id: str
) -> None:
    gw = sim(redis_client, tenant_id)
    paid = await gw.create_payment(charge(1000), idempotency_key="k-pay")
    await gw.create_payment(charge(1000), idempotency_key="k-pay")
    await gw.create_refund(
        CreateRefund(provider_payment_id=paid.provider_payment_id, amount=400),
        idempotency_key="k-re",
    )
    await gw.create_refund(
        CreateRefund(provider_payment_id=paid.provider_payment_id, amount=400),
        idempotency_key="k-re",
    )
    effects = await gw.effects()
    assert [(e.kind, e.idempotency_key, e.amount) for e in effects] == [
        ("charge", "k-pay", 1000),
        ("refund", "k-re", 400),
    ]


async def test_concurrent_same_key_applies_once(redis_client: aredis.Redis, tenant_id: str) -> None:
    gw = sim(redis_client, tenant_id)
    outcomes = await asyncio.gather(
        *(gw.create_payment(charge(), idempotency_key="same") for _ in range(20)),
        return_exceptions=True,
    )
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    assert not errors, errors
    # One commit wins; every loser of the race gets the winner's response replayed.
    assert len({o.provider_payment_id for o in outcomes if not isinstance(o, BaseException)}) == 1
    assert [e.kind for e in await gw.effects()] == ["charge"]


async def test_replay_wins_over_a_state_that_now_refuses_the_call(
    redis_client: aredis.Redis, tenant_id: str
) -> None:
    """A retried capture finds the payment captured: it must get its original answer."""
    gw = sim(redis_client, tenant_id)
    auth = await gw.create_payment(
        charge(900, capture_method=CaptureMethod.MANUAL), idempotency_key="auth"
    )
    req = CapturePayment(provider_payment_id=auth.provider_payment_id)
    first = await gw.capture_payment(req, idempotency_key="cap")
    again = await gw.capture_payment(req, idempotency_key="cap")
    assert again == first and first.status is PaymentStatus.SUCCEEDED
    with pytest.raises(GatewayError) as info:
        await gw.capture_payment(req, idempotency_key="cap-2")
    assert info.value.code is ErrorCode.INVALID_STATE
    assert [e.kind for e in await gw.effects()] == ["authorization", "capture"]


async def test_concurrent_refunds_never_exceed_captured(
    redis_client: aredis.Redis, tenant_id: str
) -> None:
    gw = sim(redis_client, tenant_id)
    paid = await gw.create_payment(charge(1000), idempotency_key="pay")
    req = CreateRefund(provider_payment_id=paid.provider_payment_id, amount=300)
    outcomes = await asyncio.gather(
        *(gw.create_refund(req, idempotency_key=f"re-{i}") for i in range(8)),
        return_exceptions=True,
    )
    refunded = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len(refunded) == 3  # 3 x 300 fits in 1000, a 4th would not
    refunds = [e for e in await gw.effects() if e.kind == "refund"]
    assert sum(e.amount or 0 for e in refunds) == 900


async def test_fail_first_attempts_then_succeed_without_double_effect(
    redis_client: aredis.Redis, tenant_id: str
) -> None:
    gw = sim(redis_client, tenant_id, fail_first={"k1": 2})
    for _ in range(2):
        with pytest.raises(GatewayError) as info:
            await gw.create_payment(charge(), idempotency_key="k1")
        assert info.value.code is ErrorCode.PROVIDER_UNAVAILABLE and info.value.retryable
    assert await gw.effects() == []
    res = await gw.create_payment(charge(), idempotency_key="k1")
    assert res.status is PaymentStatus.SUCCEEDED
    assert len(await gw.effects()) == 1


async def test_lost_response_is_recovered_by_replay(
    redis_client: aredis.Redis, tenant_id: str
) -> None:
    gw = sim(redis_client, tenant_id, lose_response_first={"*": 1})
    with pytest.raises(GatewayError) as info:
        await gw.create_payment(charge(), idempotency_key="k")
    assert info.value.code is ErrorCode.TIMEOUT and info.value.retryable
    res = await gw.create_payment(charge(), idempotency_key="k")
    effects = await gw.effects()
    assert [(e.kind, e.object_id) for e in effects] == [("charge", res.provider_payment_id)]


async def test_fail_rate_is_reproducible_with_a_seed(
    redis_client: aredis.Redis, tenant_id: str
) -> None:
    async def pattern() -> list[bool]:
        gw = sim(redis_client, f"{tenant_id}-{uuid.uuid4().hex[:6]}", fail_rate=0.5, seed=7)
        out = []
        for i in range(12):
            try:
                await gw.create_payment(charge(), idempotency_key=f"k{i}")
                out.append(True)
            except GatewayError as exc:
                assert exc.code is ErrorCode.PROVIDER_UNAVAILABLE
                out.append(False)
        return out

    first = await pattern()
    assert first == await pattern()
    assert {True, False} <= set(first)  # the seeded pattern has both outcomes


async def test_state_survives_a_new_worker(redis_client: aredis.Redis, tenant_id: str) -> None:
    auth = await sim(redis_client, tenant_id).create_payment(
        charge(capture_method=CaptureMethod.MANUAL), idempotency_key="k"
    )
    # A fresh gateway object (a restarted worker) replays the key and sees the object.
    again = await sim(redis_client, tenant_id).create_payment(
        charge(capture_method=CaptureMethod.MANUAL), idempotency_key="k"
    )
    assert again == auth


async def test_tenants_are_isolated(redis_client: aredis.Redis, tenant_id: str) -> None:
    a = await sim(redis_client, f"{tenant_id}-a").create_payment(charge(), idempotency_key="k")
    b = await sim(redis_client, f"{tenant_id}-b").create_payment(charge(), idempotency_key="k")
    assert a.provider_payment_id != b.provider_payment_id
    other = sim(redis_client, f"{tenant_id}-b")
    with pytest.raises(GatewayError) as info:
        await other.create_refund(
            CreateRefund(provider_payment_id=a.provider_payment_id), idempotency_key="r"
        )
    assert info.value.code is ErrorCode.NOT_FOUND


async def test_three_d_secure_completion(redis_client: aredis.Redis, tenant_id: str) -> None:
    gw = sim(redis_client, tenant_id)
    res = await gw.create_payment(
        charge(token="pm_card_authenticationRequired"), idempotency_key="k"
    )
    assert res.status is PaymentStatus.REQUIRES_ACTION
    assert res.next_action and res.next_action["type"] == "redirect_to_url"
    done = await gw.complete_authentication(res.provider_payment_id)
    assert done.status is PaymentStatus.SUCCEEDED
    assert await gw.complete_authentication(res.provider_payment_id) == done  # once only
    assert [e.kind for e in await gw.effects()] == ["charge"]


async def test_dispute_resolution(redis_client: aredis.Redis, tenant_id: str) -> None:
    gw = sim(redis_client, tenant_id)
    res = await gw.create_payment(charge(token="pm_card_createDispute"), idempotency_key="k")
    assert res.dispute is not None
    won = await gw.resolve_dispute(res.dispute.provider_dispute_id, won=True)
    assert won.status.value == "won"


async def test_latency_is_applied(redis_client: aredis.Redis, tenant_id: str) -> None:
    gw = sim(redis_client, tenant_id, latency_ms=30)
    loop = asyncio.get_running_loop()
    start = loop.time()
    await gw.create_payment(charge(), idempotency_key="k")
    assert loop.time() - start >= 0.03


async def test_unreachable_state_store_is_a_retryable_provider_outage() -> None:
    """Redis down looks like the provider down: retried, then parked; never dead-lettered."""
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = aredis.Redis(
        host="127.0.0.1", port=port, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )
    try:
        gw = sim(down, "t-down")
        with pytest.raises(GatewayError) as caught:
            await gw.create_payment(charge(), idempotency_key="k-down")
        assert caught.value.code is ErrorCode.PROVIDER_UNAVAILABLE and caught.value.retryable
    finally:
        await down.aclose()


async def test_a_store_refusing_writes_is_a_retryable_provider_failure(
    redis_client: aredis.Redis, tenant_id: str
) -> None:
    """Redis answering OOM (or READONLY after a failover) is the simulated provider being
    down: retried and parked like any outage, not a bug that dead-letters the command."""
    gw = sim(redis_client, tenant_id)
    before = await redis_client.config_get("maxmemory*")
    await redis_client.config_set("maxmemory-policy", "noeviction")
    await redis_client.config_set("maxmemory", 1)
    try:
        with pytest.raises(GatewayError) as info:
            await gw.create_payment(charge(), idempotency_key="oom")
    finally:
        await redis_client.config_set("maxmemory", before["maxmemory"])
        await redis_client.config_set("maxmemory-policy", before["maxmemory-policy"])
    assert info.value.code is ErrorCode.PROVIDER_UNAVAILABLE and info.value.retryable
    assert (await gw.create_payment(charge(), idempotency_key="oom")).status is (
        PaymentStatus.SUCCEEDED
    )


async def test_an_amount_over_stripes_eight_digits_is_refused(
    redis_client: aredis.Redis, tenant_id: str
) -> None:
    gw = sim(redis_client, tenant_id)
    assert (await gw.create_payment(charge(99_999_999), idempotency_key="max")).status is (
        PaymentStatus.SUCCEEDED
    )
    with pytest.raises(GatewayError) as info:
        await gw.create_payment(charge(100_000_000), idempotency_key="over")
    assert info.value.code is ErrorCode.INVALID_REQUEST and not info.value.retryable
