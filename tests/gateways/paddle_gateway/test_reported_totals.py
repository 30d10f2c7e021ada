"""The money Paddle reports is held to what the command asked: a transaction or a refund
adjustment taken as a command's outcome (a create's answer, an earlier try found by the
lookup, a payment read back) whose totals are another amount or currency is answered
`invalid_state`, final, never as made. Against the FAKE Paddle
(tests/fixtures/paddle_fake.py), made to report other totals by its /_fake/restate route
(as a discount taken at checkout leaves a transaction's, or a Paddle fault)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from paystream.gateways.base import (
    REQUEST_SENT_SINCE,
    CreatePayment,
    CreateRefund,
    PaymentStatus,
    RetrievePayment,
)
from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.gateways.paddle import PaddleGateway
from paystream.gateways.paddle.client import PaddleClient
from paystream.gateways.paddle.references import request_tag
from paystream.money import Money
from tests.gateways.harness import paddle_checkout
from tests.gateways.paddle_gateway.wire import effects, gateway, key, losing, restate

_EMAIL = "buyer-reported-totals@example.com"


def _charge(amount: int, currency: str = "USD") -> CreatePayment:
    return CreatePayment(
        amount=Money(amount=amount, currency=currency),
        provider_payment_method_id="checkout",
        description="Reported totals",
    )


def _not_as_made(error: pytest.ExceptionInfo[GatewayError], object_id: str | None) -> None:
    """Answered a final invalid_state naming Paddle's object, not as made."""
    exc = error.value
    assert exc.code is ErrorCode.INVALID_STATE and exc.retryable is False, exc
    assert exc.reached_provider and "not answered as made" in exc.message
    if object_id is not None:
        assert object_id in exc.message


async def _paid(url: str, gw: PaddleGateway, amount: int = 2000) -> str:
    REQUEST_SENT_SINCE.set(time.time())
    made = await gw.create_payment(_charge(amount), idempotency_key=key())
    await paddle_checkout(url, made.provider_payment_id)
    return made.provider_payment_id


@pytest.mark.parametrize(
    ("asked", "reported"),
    [
        pytest.param((1000, "USD"), (900, None), id="another-amount"),
        pytest.param((1000, "USD"), (1000, "EUR"), id="another-currency"),
        # (Paddle counts yen in yen, as paystream: 500 JPY is "500", never "50000")
        pytest.param((500, "JPY"), (50000, None), id="yen-counted-in-hundredths"),
    ],
)
async def test_a_transaction_made_with_other_totals_is_not_answered_as_made(
    paddle_url: str,
    caplog: pytest.LogCaptureFixture,
    asked: tuple[int, str],
    reported: tuple[int, str | None],
) -> None:
    gw = gateway(paddle_url)
    k = key()
    REQUEST_SENT_SINCE.set(time.time())
    await restate(paddle_url, reported[0], reported[1], request=request_tag(k))
    with (
        caplog.at_level(logging.ERROR, "paystream.gateways.paddle"),
        pytest.raises(GatewayError) as made,
    ):
        await gw.create_payment(_charge(*asked), idempotency_key=k)
    ledger = [
        e
        for e in await effects(paddle_url)
        if (e.get("custom_data") or {}).get("paystream_request") == request_tag(k)
    ]
    assert len(ledger) == 1  # (Paddle made it: named, for the seller to cancel)
    _not_as_made(made, ledger[0]["id"])
    assert made.value.provider_payment_id == ledger[0]["id"]
    logged = [r.getMessage() for r in caplog.records if "invalid_state" in r.getMessage()]
    assert logged and ledger[0]["id"] in logged[0] and k not in logged[0]
    await gw.aclose()


async def test_the_normal_path_answers_the_command_s_figures(paddle_url: str) -> None:
    """(Unchanged: what Paddle reports is what was asked, in yen as in cents.)"""
    gw = gateway(paddle_url)
    REQUEST_SENT_SINCE.set(time.time())
    for money in (Money(amount=500, currency="JPY"), Money(amount=1234, currency="KRW")):
        made = await gw.create_payment(_charge(money.amount, money.currency), idempotency_key=key())
        assert made.amount == money and made.status is PaymentStatus.REQUIRES_ACTION
    pid = await _paid(paddle_url, gw, 2000)
    read = await gw.retrieve_payment(RetrievePayment(provider_payment_id=pid), idempotency_key="")
    assert read.amount == Money(amount=2000, currency="USD") and read.amount_captured == 2000
    refund = await gw.create_refund(
        CreateRefund(provider_payment_id=pid, amount=500), idempotency_key=key()
    )
    assert refund.amount == Money(amount=500, currency="USD")
    await gw.aclose()


async def test_an_earlier_try_found_with_other_totals_is_not_answered_as_made(
    paddle_url: str,
) -> None:
    """The create's answer lost, the transaction discounted at Paddle meanwhile: the
    retry's lookup finds it (the same request), and does not answer it as made."""
    gw = gateway(paddle_url)
    client = losing(gw, "POST", "transactions")
    k = key()
    REQUEST_SENT_SINCE.set(time.time())
    with pytest.raises(GatewayError) as lost:
        await gw.create_payment(_charge(3000), idempotency_key=k)
    assert lost.value.code is ErrorCode.TIMEOUT
    made = [
        e
        for e in await effects(paddle_url)
        if (e.get("custom_data") or {}).get("paystream_request") == request_tag(k)
    ]
    await restate(paddle_url, 2700, object_id=made[0]["id"])
    with pytest.raises(GatewayError) as found:
        await gw.create_payment(_charge(3000), idempotency_key=k)
    _not_as_made(found, made[0]["id"])
    assert client.sent.count(("POST", "transactions")) == 1  # (found: nothing made again)
    await gw.aclose()


async def test_a_payment_read_back_with_other_totals_is_not_answered(paddle_url: str) -> None:
    """A refresh (a webhook's too: it reads the transaction back) of a payment paid with
    a discount taken at checkout: not read back succeeded for another amount."""
    gw = gateway(paddle_url)
    pid = await _paid(paddle_url, gw, 2000)
    await restate(paddle_url, 1500, object_id=pid)
    with pytest.raises(GatewayError) as read:
        await gw.retrieve_payment(RetrievePayment(provider_payment_id=pid), idempotency_key="")
    _not_as_made(read, pid)
    assert read.value.provider_payment_id == pid
    await gw.aclose()


@pytest.mark.parametrize("amount", [pytest.param(800, id="partial"), pytest.param(None, id="all")])
async def test_a_refund_made_with_other_totals_is_not_answered_as_made(
    paddle_url: str, amount: int | None
) -> None:
    gw = gateway(paddle_url)
    pid = await _paid(paddle_url, gw, 2000)
    k = key()
    await restate(
        paddle_url, 700 if amount else 2000, "EUR" if not amount else None, request=request_tag(k)
    )
    with pytest.raises(GatewayError) as made:
        await gw.create_refund(
            CreateRefund(provider_payment_id=pid, amount=amount), idempotency_key=k
        )
    adjustments = [
        e
        for e in await effects(paddle_url)
        if e["kind"] == "adjustment" and e["transaction_id"] == pid
    ]
    assert len(adjustments) == 1
    _not_as_made(made, adjustments[0]["id"])
    assert made.value.provider_payment_id == pid
    await gw.aclose()


@pytest.mark.parametrize(
    ("amount", "reported"),
    [pytest.param(800, 700, id="partial"), pytest.param(None, 2100, id="all-more-than-paid")],
)
async def test_an_earlier_refund_found_with_other_totals_is_not_answered_as_made(
    paddle_url: str, amount: int | None, reported: int
) -> None:
    gw = gateway(paddle_url)
    pid = await _paid(paddle_url, gw, 2000)
    client = losing(gw, "POST", "adjustments")
    k = key()
    req = CreateRefund(provider_payment_id=pid, amount=amount)
    with pytest.raises(GatewayError):
        await gw.create_refund(req, idempotency_key=k)
    adjustments = [
        e
        for e in await effects(paddle_url)
        if e["kind"] == "adjustment" and e["transaction_id"] == pid
    ]
    await restate(paddle_url, reported, object_id=adjustments[0]["id"])
    with pytest.raises(GatewayError) as found:
        await gw.create_refund(req, idempotency_key=k)
    _not_as_made(found, adjustments[0]["id"])
    assert client.sent.count(("POST", "adjustments")) == 1
    await gw.aclose()


class _LandingFirst(PaddleClient):
    """A client before whose refund POST an earlier try of the same request lands at
    Paddle (another worker's, or one slower than the margin): that try's refund, made
    after the lookup read, is found when Paddle refuses this POST for it."""

    def __init__(self, inner: PaddleClient) -> None:
        self.__dict__.update(inner.__dict__)
        self.landed: list[dict[str, Any]] = []

    async def call(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        query: Mapping[str, str] | None = None,
        settled: Callable[[bool], None] | None = None,
    ) -> dict[str, Any]:
        if (method, path) == ("POST", "adjustments") and not self.landed:
            self.landed.append(await super().call(method, path, body=body, query=query))
        return await super().call(method, path, body=body, query=query, settled=settled)


async def test_an_earlier_refund_landing_after_the_lookup_with_other_totals_is_not_answered(
    paddle_url: str,
) -> None:
    gw = gateway(paddle_url)
    pid = await _paid(paddle_url, gw, 2000)
    client = _LandingFirst(gw._client)
    gw._client = client
    k = key()
    await restate(paddle_url, 600, request=request_tag(k))
    with pytest.raises(GatewayError) as found:
        await gw.create_refund(CreateRefund(provider_payment_id=pid, amount=800), idempotency_key=k)
    assert client.landed, "the earlier try did not land"
    _not_as_made(found, client.landed[0]["data"]["id"])
    await gw.aclose()
