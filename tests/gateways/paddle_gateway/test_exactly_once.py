"""Paddle keeps no idempotency keys: a create sent again after its answer was lost (a
timeout, a worker killed after Paddle made the object) must find what the first try made
rather than make it twice. Against the FAKE Paddle, which, as Paddle, makes a second
object for every request sent again (tests/fixtures/paddle_fake.py): its ledger of what
was made is the proof."""

from __future__ import annotations

import time
import uuid

import pytest

from paystream.gateways.base import (
    REQUEST_SENT_SINCE,
    CreateCustomer,
    CreatePayment,
    CreateRefund,
    PaymentStatus,
)
from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.gateways.paddle import gateway as paddle_gateway
from paystream.gateways.paddle.references import request_tag
from paystream.tenancy.limits import MAX_FUTURE_SKEW_MS
from tests.gateways.harness import paddle_checkout
from tests.gateways.paddle_gateway.wire import effects, gateway, key, losing, usd


def _made(ledger: list[dict], kind: str, tag: str | None = None) -> list[dict]:
    return [
        e
        for e in ledger
        if e["kind"] == kind
        and (tag is None or (e.get("custom_data") or {}).get("paystream_request") == tag)
    ]


def _charge(amount: int = 1500, customer: str | None = None, **meta: str) -> CreatePayment:
    return CreatePayment(
        amount=usd(amount),
        provider_customer_id=customer,
        provider_payment_method_id="checkout",
        metadata=meta,
    )


async def test_a_payment_whose_answer_was_lost_is_made_once(paddle_url: str) -> None:
    gw = gateway(paddle_url)
    client = losing(gw, "POST", "transactions")
    k = key()
    REQUEST_SENT_SINCE.set(time.time())  # (as the pipeline sets it: the command's time)
    with pytest.raises(GatewayError) as lost:
        await gw.create_payment(_charge(order="o-1"), idempotency_key=k)
    assert lost.value.code is ErrorCode.TIMEOUT and lost.value.retryable
    again = await gw.create_payment(_charge(order="o-1"), idempotency_key=k)
    assert again.status is PaymentStatus.REQUIRES_ACTION and again.next_action
    made = _made(await effects(paddle_url), "transaction", request_tag(k))
    assert [m["id"] for m in made] == [again.provider_payment_id]  # one, the first's
    assert client.sent.count(("POST", "transactions")) == 1  # (found, not sent again)
    # Sent again once more (a third delivery): answered alike, nothing made.
    third = await gw.create_payment(_charge(order="o-1"), idempotency_key=k)
    assert third.provider_payment_id == again.provider_payment_id
    assert len(_made(await effects(paddle_url), "transaction", request_tag(k))) == 1
    await gw.aclose()


async def test_an_earlier_try_is_found_past_a_page_of_the_tenants_transactions(
    paddle_url: str,
) -> None:
    gw = gateway(paddle_url)
    email = f"busy-{uuid.uuid4().hex[:8]}@example.com"
    cus = await gw.create_customer(CreateCustomer(email=email), idempotency_key=key())
    cid = cus.provider_customer_id
    REQUEST_SENT_SINCE.set(time.time())
    for _ in range(31):  # (a page holds 30: the earlier try is on the second)
        await gw.create_payment(_charge(700, cid), idempotency_key=key())
    k = key()
    first = await gw.create_payment(_charge(900, cid), idempotency_key=k)
    again = await gw.create_payment(_charge(900, cid), idempotency_key=k)
    assert again.provider_payment_id == first.provider_payment_id
    assert len(_made(await effects(paddle_url), "transaction", request_tag(k))) == 1
    # Past LOOKUP_PAGES_MAX pages nothing is made: whether an earlier try made it cannot
    # be told (retried, never a second transaction).
    before = len(_made(await effects(paddle_url), "transaction"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(paddle_gateway, "LOOKUP_PAGES_MAX", 1)
        with pytest.raises(GatewayError) as busy:
            await gw.create_payment(_charge(900, cid), idempotency_key=key())
    assert busy.value.code is ErrorCode.PROVIDER_UNAVAILABLE and busy.value.retryable
    assert len(_made(await effects(paddle_url), "transaction")) == before
    await gw.aclose()


async def test_the_lookup_starts_where_the_request_can_first_have_been_sent(
    paddle_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """REQUEST_SENT_SINCE bounds the lookup (less CLOCK_SKEW_SECONDS): a transaction made
    before it is not this request's try. Without it, the whole key window is read. (The
    skew taken to 1 s: a bound more than MAX_FUTURE_SKEW_MS ahead is refused.)"""
    monkeypatch.setattr(paddle_gateway, "CLOCK_SKEW_SECONDS", 1)
    gw = gateway(paddle_url)
    k = key()
    REQUEST_SENT_SINCE.set(None)
    first = await gw.create_payment(_charge(), idempotency_key=k)
    found = await gw.create_payment(_charge(), idempotency_key=k)  # (a day looked back)
    assert found.provider_payment_id == first.provider_payment_id
    later = time.time() + paddle_gateway.CLOCK_SKEW_SECONDS + 5
    assert later < time.time() + MAX_FUTURE_SKEW_MS / 1000
    REQUEST_SENT_SINCE.set(later)  # (a bound past the first try: it is not looked at)
    other = await gw.create_payment(_charge(), idempotency_key=k)
    assert other.provider_payment_id != first.provider_payment_id
    REQUEST_SENT_SINCE.set(None)
    await gw.aclose()


async def test_another_request_under_the_key_is_refused(paddle_url: str) -> None:
    gw = gateway(paddle_url)
    k = key()
    REQUEST_SENT_SINCE.set(time.time())
    await gw.create_payment(_charge(1500), idempotency_key=k)
    with pytest.raises(GatewayError) as other:
        await gw.create_payment(_charge(1501), idempotency_key=k)
    assert other.value.code is ErrorCode.IDEMPOTENCY_ERROR and not other.value.retryable
    assert await gw.knows_request("create_payment", _charge(1500), idempotency_key=k)
    assert not await gw.knows_request("create_payment", _charge(1501), idempotency_key=k)
    assert not await gw.knows_request("create_payment", _charge(1500), idempotency_key=key())
    await gw.aclose()


async def test_a_customer_whose_answer_was_lost_is_made_once(paddle_url: str) -> None:
    gw = gateway(paddle_url)
    client = losing(gw, "POST", "customers")
    k = key()
    req = CreateCustomer(email=f"ada-{uuid.uuid4().hex[:8]}@example.com", name="Ada")
    with pytest.raises(GatewayError):
        await gw.create_customer(req, idempotency_key=k)
    # Sent again: Paddle refuses the email (one customer per email); the one it names
    # is this request's, answered as made.
    again = await gw.create_customer(req, idempotency_key=k)
    made = [e for e in await effects(paddle_url) if e["id"] == again.provider_customer_id]
    assert len(made) == 1 and client.sent.count(("POST", "customers")) == 2
    assert await gw.knows_request("create_customer", req, idempotency_key=k)
    # Another request's email, or this request's under another key: refused, named.
    for other_key in (key(),):
        with pytest.raises(GatewayError) as taken:
            await gw.create_customer(req, idempotency_key=other_key)
        assert taken.value.code is ErrorCode.INVALID_REQUEST
        assert again.provider_customer_id in taken.value.message
    renamed = req.model_copy(update={"name": "Grace"})
    with pytest.raises(GatewayError) as reused:
        await gw.create_customer(renamed, idempotency_key=k)
    assert reused.value.code is ErrorCode.IDEMPOTENCY_ERROR
    await gw.aclose()


async def test_a_refund_whose_answer_was_lost_is_made_once(paddle_url: str) -> None:
    gw = gateway(paddle_url)
    REQUEST_SENT_SINCE.set(time.time())
    paid = await gw.create_payment(_charge(2500), idempotency_key=key())
    await paddle_checkout(paddle_url, paid.provider_payment_id)
    client = losing(gw, "POST", "adjustments")
    k = key()
    req = CreateRefund(provider_payment_id=paid.provider_payment_id, reason="duplicate")
    with pytest.raises(GatewayError):
        await gw.create_refund(req, idempotency_key=k)
    again = await gw.create_refund(req, idempotency_key=k)
    refunds = [e for e in await effects(paddle_url) if e["kind"] == "adjustment"]
    mine = [e for e in refunds if e["transaction_id"] == paid.provider_payment_id]
    assert [e["id"] for e in mine] == [again.provider_refund_id]
    assert again.amount == usd(2500) and client.sent.count(("POST", "adjustments")) == 1
    assert await gw.knows_request("create_refund", req, idempotency_key=k)
    with pytest.raises(GatewayError) as reused:
        await gw.create_refund(req.model_copy(update={"amount": 100}), idempotency_key=k)
    assert reused.value.code is ErrorCode.IDEMPOTENCY_ERROR
    await gw.aclose()
