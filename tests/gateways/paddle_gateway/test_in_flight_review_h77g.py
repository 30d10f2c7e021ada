"""The in-flight key of a Paddle create and a cancel retried (review h77g): a POST's
thread running several timeouts (``requests``' timeout bounds the connect and each read)
keeps its key; another's key without an expiry is neither taken nor left for good; a
cancel whose lost PATCH Paddle made after the retry's read is answered canceled."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import ClassVar

import pytest
import redis.asyncio as aredis
from aiohttp import web

from paystream.gateways.base import REQUEST_SENT_SINCE, CancelPayment, CreatePayment, PaymentStatus
from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.gateways.paddle.in_flight import in_flight_key
from paystream.gateways.paddle.references import request_tag
from tests.fixtures.paddle_fake import PaddleFake
from tests.gateways.harness import paddle_checkout
from tests.gateways.paddle_gateway.wire import effects, gateway, key, losing, serve, usd

T = 1.0  # the gateway's (SDK's) timeout in these tests


async def _made(url: str, k: str) -> list[str]:
    return [
        e["id"]
        for e in await effects(url)
        if e["kind"] == "transaction"
        and (e.get("custom_data") or {}).get("paystream_request") == request_tag(k)
    ]


# ---- F1: the POST's thread outlives the key (requests' timeout is per phase) ---------


class _TricklingPaddle(PaddleFake):
    """Paddle's first transaction create answers its headers within the timeout, then its
    body a byte at a time, each within the timeout (a slow proxy, a loaded edge), and
    makes the transaction only as the body ends: requests' ``timeout`` bounds the connect
    and each read, not the call, so the SDK's thread runs 4 timeouts."""

    posts: ClassVar[int] = 0

    async def create_transaction(self, request: web.Request) -> web.StreamResponse:
        type(self).posts += 1
        if type(self).posts > 1:
            return await super().create_transaction(request)
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        await asyncio.sleep(0.8 * T)
        await resp.prepare(request)
        for _ in range(4):
            await asyncio.sleep(0.8 * T)
            await resp.write(b" ")  # (JSON allows leading whitespace)
        made = await super().create_transaction(request)
        assert isinstance(made, web.Response) and made.body is not None
        await resp.write(bytes(made.body))  # type: ignore[arg-type]
        await resp.write_eof()
        return resp


async def test_a_post_still_running_past_the_key_lets_another_worker_create_again(
    redis_client: aredis.Redis,
) -> None:
    runner, url = await serve(_TricklingPaddle())
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    old, new = gateway(url, tenant_id=tenant), gateway(url, tenant_id=tenant)
    for gw in (old, new):
        gw._client._sdk.timeout = T
    req = CreatePayment(amount=usd(4700), provider_payment_method_id="checkout")
    k = key()
    REQUEST_SENT_SINCE.set(time.time())
    try:
        first = asyncio.ensure_future(old.create_payment(req, idempotency_key=k))
        await asyncio.sleep(3.4 * T)  # (the old worker's POST still running)
        held = await redis_client.exists(in_flight_key(tenant, request_tag(k)))
        second: object
        try:
            second = await new.create_payment(req, idempotency_key=k)
        except GatewayError as exc:
            second = exc  # (refused for now: what must happen)
        await first
        made = await _made(url, k)
    finally:
        await old.aclose()
        await new.aclose()
        await runner.cleanup()
    assert len(made) == 1, (
        f"one payment.create made {len(made)} Paddle transactions {made}: the key was "
        f"{'held' if held else 'gone'} while the first POST was still running; "
        f"the other worker's try answered {second!r}"
    )


# ---- F2: a key without an expiry is taken as "set" (pttl -1 is _TAKEN) ----------------


async def test_a_key_without_expiry_is_not_taken_as_ours_and_gets_an_end(
    paddle_url: str, redis_client: aredis.Redis
) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    gw = gateway(paddle_url, tenant_id=tenant)
    client = losing(gw, "POST", "transactions", lose=0)  # (records what is sent)
    k = key()
    name = in_flight_key(tenant, request_tag(k))
    await redis_client.set(name, "another-workers-token")  # (no expiry)
    REQUEST_SENT_SINCE.set(time.time())
    try:
        with pytest.raises(GatewayError) as held:
            await gw.create_payment(
                CreatePayment(amount=usd(4800), provider_payment_method_id="checkout"),
                idempotency_key=k,
            )
        ttl = await redis_client.pttl(name)
    finally:
        await redis_client.delete(name)
        await gw.aclose()
    assert held.value.code is ErrorCode.IDEMPOTENCY_ERROR
    assert client.sent == [], f"the key held by another was taken as ours: sent {client.sent}"
    assert held.value.retry_after is not None
    assert ttl > 0, "a key without expiry holds the request back for good"


# ---- F4: the cancel retried after a lost answer, the first PATCH landing late ---------


class _LateCancel(PaddleFake):
    """Paddle makes the first (lost) cancel just after the retry's read: the retry's
    GET says ready, its PATCH meets a canceled transaction."""

    lands: ClassVar[str | None] = None

    async def get_transaction(self, request: web.Request) -> web.Response:
        answer = await super().get_transaction(request)  # (serialised now: ready)
        txn = self._named(request, "transactions", "transaction")
        if txn["id"] == type(self).lands:
            type(self).lands = None
            txn.update(status="canceled")
        return answer


@pytest.fixture
async def late_cancel() -> AsyncIterator[str]:
    runner, url = await serve(_LateCancel())
    yield url
    _LateCancel.lands = None
    await runner.cleanup()


async def test_a_cancel_retried_after_its_lost_answer_landed_is_canceled(
    late_cancel: str,
) -> None:
    gw = gateway(late_cancel)
    made = await gw.create_payment(
        CreatePayment(amount=usd(3400), provider_payment_method_id="checkout"),
        idempotency_key=key(),
    )
    await paddle_checkout(late_cancel, made.provider_payment_id, "declined")  # (ready)
    _LateCancel.lands = made.provider_payment_id
    try:
        done = await gw.cancel_payment(
            CancelPayment(provider_payment_id=made.provider_payment_id), idempotency_key=key()
        )
    finally:
        await gw.aclose()
    assert done.status is PaymentStatus.CANCELED
