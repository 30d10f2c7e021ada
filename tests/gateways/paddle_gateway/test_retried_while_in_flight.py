"""A create whose try timed out is retried (RetryPolicy, about 50 ms later) while that
try's POST is still running in its SDK thread (the asyncio deadline cannot stop a
``requests`` call) or still being processed by Paddle. The retry's lookup ran before the
first try's transaction existed, found nothing, and POSTed again: one command, two
transactions (review h75r1 F1). A create now holds its request's in-flight key in the
fleet's Redis (paystream/gateways/paddle/in_flight.py) until that try can no longer land,
and a retry (from this worker, another, or a restarted one) waits before its lookup.

Against the FAKE Paddle with one change: ``POST /transactions`` takes 1.5 s before it
makes the transaction (Paddle slow under load), the gateway's timeout 1 s."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aredis
from aiohttp import web
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from paystream.devstack._process import free_port
from paystream.gateways.base import REQUEST_SENT_SINCE, CreatePayment
from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.gateways.paddle.references import request_tag
from paystream.settings import load_settings
from paystream.tenancy.models import Tenant
from paystream.tenancy.policy import CallPolicy
from tests.fixtures.paddle_fake import PaddleFake
from tests.gateways.paddle_gateway.wire import effects, gateway, key, losing, usd

SLOW_SECONDS = 1.5
TIMEOUT_SECONDS = 1.0
# A worker's timeout its slow POSTs are answered within.
PATIENT_TIMEOUT_SECONDS = 2.0


class _SlowPaddle(PaddleFake):
    """The fake, its transaction creates taking SLOW_SECONDS (Paddle under load)."""

    async def create_transaction(self, request: web.Request) -> web.Response:
        await asyncio.sleep(SLOW_SECONDS)
        return await super().create_transaction(request)


@pytest.fixture
async def slow_paddle() -> AsyncIterator[str]:
    runner = web.AppRunner(_SlowPaddle().app(), handler_cancellation=False)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_a_timed_out_create_retried_makes_one_transaction(slow_paddle: str) -> None:
    settings = load_settings(
        paddle_api_base=slow_paddle,
        gateway_timeout_seconds=TIMEOUT_SECONDS,
        gateway_max_attempts=4,
    )
    gw = gateway(slow_paddle)
    # (the gateway as the worker builds it, with the worker's per-call timeout)
    gw._client._sdk.timeout = TIMEOUT_SECONDS
    call = CallPolicy(settings)(Tenant(tenant_id="t-race", gateway="paddle"))
    req = CreatePayment(amount=usd(4200), provider_payment_method_id="checkout")
    k = key()
    REQUEST_SENT_SINCE.set(time.time())  # (as the pipeline sets it: the command's time)
    # (retries exhausted: parked, re-driven later; the lookup then finds one)
    with contextlib.suppress(GatewayError):
        await call(lambda: gw.create_payment(req, idempotency_key=k))
    await asyncio.sleep(SLOW_SECONDS + 0.5)  # (the POSTs still running land)
    made = [
        e["id"]
        for e in await effects(slow_paddle)
        if e["kind"] == "transaction"
        and (e.get("custom_data") or {}).get("paystream_request") == request_tag(k)
    ]
    await gw.aclose()
    assert len(made) == 1, f"one payment.create made {len(made)} Paddle transactions: {made}"


async def _made(url: str, k: str) -> list[str]:
    """The Paddle transactions made under idempotency key ``k``."""
    return [
        e["id"]
        for e in await effects(url)
        if e["kind"] == "transaction"
        and (e.get("custom_data") or {}).get("paystream_request") == request_tag(k)
    ]


async def test_two_workers_running_the_same_command_make_one_transaction(
    slow_paddle: str,
) -> None:
    """A rebalance: the old owner's try is still in flight (its thread goes on after its
    task is cancelled) when the new owner runs the redelivered record. The new owner finds
    the try's in-flight key in the fleet's Redis (each gateway here stands for one worker
    process: its own Paddle client, the session's Redis): refused for now, and its retry
    looks once the old owner's POST was answered."""
    old, new = gateway(slow_paddle), gateway(slow_paddle)
    for gw in (old, new):
        gw._client._sdk.timeout = PATIENT_TIMEOUT_SECONDS
    settings = load_settings(
        paddle_api_base=slow_paddle,
        gateway_timeout_seconds=PATIENT_TIMEOUT_SECONDS,
        gateway_max_attempts=4,
    )
    call = CallPolicy(settings)(Tenant(tenant_id="t-rebalance", gateway="paddle"))
    req = CreatePayment(amount=usd(4300), provider_payment_method_id="checkout")
    k = key()
    REQUEST_SENT_SINCE.set(time.time())
    first = asyncio.ensure_future(old.create_payment(req, idempotency_key=k))
    await asyncio.sleep(0.3)  # (the old owner's POST under way; the partition moves)
    with pytest.raises(GatewayError) as held:
        await new.create_payment(req, idempotency_key=k)
    assert held.value.code is ErrorCode.IDEMPOTENCY_ERROR and held.value.retryable
    assert held.value.retry_after is not None
    # (the key held for the POST: a thread's wait, its timeout, Paddle's margin)
    assert 0 < held.value.retry_after <= 3 * PATIENT_TIMEOUT_SECONDS
    again = await call(lambda: new.create_payment(req, idempotency_key=k))
    made_first = await first
    await old.aclose()
    await new.aclose()
    assert again.provider_payment_id == made_first.provider_payment_id, (
        "the same command answered with two different Paddle transactions: "
        f"{made_first.provider_payment_id} and {again.provider_payment_id}"
    )
    assert len(await _made(slow_paddle, k)) == 1


async def test_a_restarted_worker_waits_for_its_lost_try_and_then_finds_it(
    slow_paddle: str,
) -> None:
    """A worker's create timed out (Paddle makes it 0.5 s later) and the worker restarted
    (SIGKILL: nothing of it in memory). The new worker process retrying the command
    within the landing margin is refused for now; after it, its lookup finds the
    transaction the lost try made, and no second one is made."""
    before = gateway(slow_paddle)
    before._client._sdk.timeout = TIMEOUT_SECONDS
    req = CreatePayment(amount=usd(4400), provider_payment_method_id="checkout")
    k = key()
    REQUEST_SENT_SINCE.set(time.time())
    with pytest.raises(GatewayError) as lost:
        await before.create_payment(req, idempotency_key=k)
    assert lost.value.code is ErrorCode.TIMEOUT
    await before.aclose()
    # (a restart takes longer than this: the lost try's key is settled meanwhile, set to
    # expire after the landing margin, once a renewal of it under way has ended)
    await asyncio.sleep(0.2)
    after = gateway(slow_paddle)  # (the restarted worker's gateway)
    after._client._sdk.timeout = TIMEOUT_SECONDS
    with pytest.raises(GatewayError) as held:
        await after.create_payment(req, idempotency_key=k)
    assert held.value.code is ErrorCode.IDEMPOTENCY_ERROR and held.value.retryable
    assert held.value.retry_after is not None and 0 < held.value.retry_after <= TIMEOUT_SECONDS
    await asyncio.sleep(held.value.retry_after + 0.1)
    found = await after.create_payment(req, idempotency_key=k)
    await after.aclose()
    assert await _made(slow_paddle, k) == [found.provider_payment_id]


async def test_without_redis_a_create_is_refused_for_now_and_nothing_is_sent(
    paddle_url: str,
) -> None:
    """Redis unreachable: no create is sent unguarded (another worker's try could not be
    seen), neither its lookup nor its POST; retried later, as a provider unavailable."""
    from paystream.gateways.base import CreateRefund
    from tests.gateways.harness import paddle_checkout

    up = gateway(paddle_url)
    paid = await up.create_payment(
        CreatePayment(amount=usd(2500), provider_payment_method_id="checkout"),
        idempotency_key=key(),
    )
    await up.aclose()
    await paddle_checkout(paddle_url, paid.provider_payment_id)
    # (nothing listens there; not retried: redis-py's own retries take 4 s to give up)
    down = aredis.Redis(host="127.0.0.1", port=free_port(), retry=Retry(NoBackoff(), 0))
    gw = gateway(paddle_url, redis=down)
    client = losing(gw, "POST", "transactions", lose=0)  # (records what is sent)
    k = key()
    REQUEST_SENT_SINCE.set(time.time())
    payment = CreatePayment(amount=usd(4500), provider_payment_method_id="checkout")
    refund = CreateRefund(provider_payment_id=paid.provider_payment_id)
    for create in (
        lambda: gw.create_payment(payment, idempotency_key=k),
        lambda: gw.create_refund(refund, idempotency_key=k),
    ):
        with pytest.raises(GatewayError) as refused:
            await create()
        assert refused.value.code is ErrorCode.PROVIDER_UNAVAILABLE
        assert refused.value.retryable and not refused.value.reached_provider
    assert client.sent == []
    assert await _made(paddle_url, k) == []
    await gw.aclose()
    await down.aclose()


class _SlowFirstRefund(PaddleFake):
    """Paddle slow on a refund's first POST (1.5 s), quicker on the next (0.7 s)."""

    posts = 0

    async def create_adjustment(self, request: web.Request) -> web.Response:
        type(self).posts += 1
        await asyncio.sleep(SLOW_SECONDS if type(self).posts == 1 else 0.7)
        return await super().create_adjustment(request)


async def test_a_timed_out_refund_retried_is_not_answered_refused(paddle_url: str) -> None:
    """The first try's refund lands (pending_approval) while the retry's POST is on its
    way: Paddle refuses that one (a pending refund blocks the next), and the command was
    answered invalid_state, a final refusal, though Paddle held its refund (approved
    later, the money went back to the customer; a client's new refund command then
    refunded it again)."""
    from paystream.gateways.base import CreateRefund
    from paystream.gateways.errors import ErrorCode
    from tests.gateways.harness import paddle_checkout

    # The payment, paid, at a fake of its own whose refunds are slow.
    runner = web.AppRunner(_SlowFirstRefund().app(), handler_cancellation=False)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}"
    try:
        gw = gateway(url)
        REQUEST_SENT_SINCE.set(time.time())
        paid = await gw.create_payment(
            CreatePayment(amount=usd(3000), provider_payment_method_id="checkout"),
            idempotency_key=key(),
        )
        await paddle_checkout(url, paid.provider_payment_id)
        settings = load_settings(
            paddle_api_base=url, gateway_timeout_seconds=TIMEOUT_SECONDS, gateway_max_attempts=4
        )
        gw._client._sdk.timeout = TIMEOUT_SECONDS
        call = CallPolicy(settings)(Tenant(tenant_id="t-refund-race", gateway="paddle"))
        req = CreateRefund(provider_payment_id=paid.provider_payment_id, reason="duplicate")
        refused: GatewayError | None = None
        k = key()
        try:
            await call(lambda: gw.create_refund(req, idempotency_key=k))
        except GatewayError as exc:
            refused = exc
        await asyncio.sleep(SLOW_SECONDS)
        held = [e for e in await effects(url) if e["kind"] == "adjustment"]
        await gw.aclose()
    finally:
        await runner.cleanup()
    assert held, "no refund at Paddle (the race was not reproduced)"
    assert refused is None or refused.retryable, (
        f"answered {refused.code.value} (final) while Paddle holds refund {held[0]['id']}"
    )
    assert refused is None or refused.code is not ErrorCode.INVALID_STATE
