"""Stripe payouts and balances over a fake transport answering with Stripe's documented
bodies (https://docs.stripe.com/api/payouts, https://docs.stripe.com/api/balance): what
localstripe cannot show (the connected account's header, balance_insufficient,
payouts_not_allowed, a refused cancel, the balance's arrays per currency)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from paystream.gateways.base import (
    CancelPayout,
    Capability,
    CreatePayout,
    PayoutStatus,
    RetrieveBalance,
    RetrievePayout,
)
from paystream.gateways.errors import ErrorCode, GatewayError, UnsupportedOperation
from paystream.gateways.stripe.gateway import STRIPE_CAPABILITIES
from paystream.money import Money
from tests.gateways.stripe.test_stripe_transport import API_BASE, API_KEY, answer, error, gateway

ARRIVES = 1_767_225_600  # 2026-01-01T00:00:00Z

PAYOUT = {
    "id": "po_1",
    "object": "payout",
    "amount": 1100,
    "arrival_date": ARRIVES,
    "currency": "usd",
    "method": "standard",
    "status": "pending",
    "failure_code": None,
    "failure_message": None,
    "metadata": {"paystream_payout": "t1:po_a"},
}
BALANCE = {
    "object": "balance",
    "available": [
        {"amount": 666670, "currency": "usd", "source_types": {"card": 666670}},
        {"amount": -500, "currency": "eur", "source_types": {"card": -500}},
    ],
    "pending": [{"amount": 61414, "currency": "usd", "source_types": {"card": 61414}}],
    "connect_reserved": [{"amount": 0, "currency": "usd"}],
    "livemode": False,
}
CREATE = CreatePayout(
    amount=Money(amount=1100, currency="USD"),
    description="weekly",
    statement_descriptor="ACME PAYOUT",
    metadata={"paystream_payout": "t1:po_a", "batch": "7"},
)


def test_stripe_offers_payouts() -> None:
    assert Capability.PAYOUTS in STRIPE_CAPABILITIES


async def test_a_payout_is_created_on_the_connected_account_under_its_key() -> None:
    gw, fake = gateway(answer(200, PAYOUT), connected_account="acct_42")
    res = await gw.create_payout(CREATE, idempotency_key="tenant:payout:po_a")
    assert res.provider_payout_id == "po_1" and res.status is PayoutStatus.PENDING
    assert res.amount == Money(amount=1100, currency="USD") and res.method == "standard"
    assert res.arrival_date == datetime(2026, 1, 1, tzinfo=UTC)
    assert res.failure_code is None
    [req] = fake.requests
    assert (req["method"], req["url"]) == ("post", f"{API_BASE}/v1/payouts")
    assert req["headers"]["Idempotency-Key"] == "tenant:payout:po_a"
    assert req["headers"]["Stripe-Account"] == "acct_42"
    assert API_KEY in req["headers"]["Authorization"]
    form = req["form"]
    assert form["amount"] == ["1100"] and form["currency"] == ["usd"]
    assert form["method"] == ["standard"] and form["description"] == ["weekly"]
    assert form["statement_descriptor"] == ["ACME PAYOUT"]
    assert form["metadata[paystream_payout]"] == ["t1:po_a"] and form["metadata[batch]"] == ["7"]


async def test_an_instant_payout_asks_for_the_instant_method() -> None:
    gw, fake = gateway(answer(200, {**PAYOUT, "method": "instant", "status": "in_transit"}))
    req = CreatePayout(amount=Money(amount=500, currency="USD"), method="instant")
    res = await gw.create_payout(req, idempotency_key="k")
    assert res.status is PayoutStatus.IN_TRANSIT and res.method == "instant"
    assert fake.requests[0]["form"]["method"] == ["instant"]
    assert "description" not in fake.requests[0]["form"]  # (unset fields are not sent)


async def test_balance_insufficient_is_the_cores_refusal() -> None:
    gw, _ = gateway(
        error(
            400,
            type="invalid_request_error",
            code="balance_insufficient",
            message="You have insufficient funds in your Stripe account for this transfer.",
        )
    )
    with pytest.raises(GatewayError) as info:
        await gw.create_payout(CREATE, idempotency_key="k")
    assert info.value.code is ErrorCode.BALANCE_INSUFFICIENT and not info.value.retryable
    assert "insufficient funds" in info.value.message


async def test_payouts_not_allowed_is_the_tenants_setup_not_the_command() -> None:
    gw, _ = gateway(
        error(
            400,
            type="invalid_request_error",
            code="payouts_not_allowed",
            message="Payouts have been disabled on this account.",
        ),
        connected_account="acct_42",
    )
    with pytest.raises(GatewayError) as info:
        await gw.create_payout(CREATE, idempotency_key="k")
    # (handlers: gateway_not_configured, not remembered: fixed at Stripe, it goes through)
    assert info.value.code is ErrorCode.PERMISSION_DENIED and not info.value.retryable
    assert "payouts are not allowed" in info.value.message


@pytest.mark.parametrize(
    "err",
    [
        {"type": "invalid_request_error", "code": "instant_payouts_unsupported", "message": "x"},
        {"type": "invalid_request_error", "code": "amount_too_small", "message": "x"},
        {"type": "invalid_request_error", "message": "No such external account for usd"},
    ],
)
async def test_another_refused_payout_is_an_invalid_request(err: dict[str, Any]) -> None:
    gw, _ = gateway(error(400, **err))
    with pytest.raises(GatewayError) as info:
        await gw.create_payout(CREATE, idempotency_key="k")
    assert info.value.code is ErrorCode.INVALID_REQUEST and not info.value.retryable


async def test_a_payout_read_back_failed_has_its_bank_failure() -> None:
    failed = {
        **PAYOUT,
        "status": "failed",
        "failure_code": "account_closed",
        "failure_message": "The bank account has been closed.",
    }
    gw, fake = gateway(answer(200, failed), connected_account="acct_42")
    res = await gw.retrieve_payout(RetrievePayout(provider_payout_id="po_1"), idempotency_key="k")
    assert res.status is PayoutStatus.FAILED
    assert (res.failure_code, res.failure_message) == (
        "account_closed",
        "The bank account has been closed.",
    )
    [req] = fake.requests
    assert (req["method"], req["url"]) == ("get", f"{API_BASE}/v1/payouts/po_1")
    assert "Idempotency-Key" not in req["headers"]  # (a read: keyless)
    assert req["headers"]["Stripe-Account"] == "acct_42"


@pytest.mark.parametrize("status", ["pending", "in_transit", "paid", "failed", "canceled"])
async def test_every_stripe_payout_status_is_ours(status: str) -> None:
    gw, _ = gateway(answer(200, {**PAYOUT, "status": status}))
    res = await gw.retrieve_payout(RetrievePayout(provider_payout_id="po_1"), idempotency_key="k")
    assert res.status.value == status


async def test_an_unknown_payout_status_is_never_read_as_paid() -> None:
    gw, _ = gateway(answer(200, {**PAYOUT, "status": "reversed_somehow"}))
    with pytest.raises(GatewayError) as info:
        await gw.retrieve_payout(RetrievePayout(provider_payout_id="po_1"), idempotency_key="k")
    assert info.value.code is ErrorCode.PROVIDER_UNAVAILABLE and info.value.unreadable_answer


async def test_a_cancel_is_keyed_and_answers_the_canceled_payout() -> None:
    gw, fake = gateway(answer(200, {**PAYOUT, "status": "canceled"}))
    res = await gw.cancel_payout(CancelPayout(provider_payout_id="po_1"), idempotency_key="cx")
    assert res.status is PayoutStatus.CANCELED
    [req] = fake.requests
    assert (req["method"], req["url"]) == ("post", f"{API_BASE}/v1/payouts/po_1/cancel")
    assert req["headers"]["Idempotency-Key"] == "cx"


def _refused_then(status: str) -> Any:
    def handler(req: dict[str, Any]) -> Any:
        if req["url"].endswith("/cancel"):
            return 400, {"error": {"type": "invalid_request_error", "message": "no"}}
        return 200, {**PAYOUT, "status": status}

    return handler


@pytest.mark.parametrize("status", ["in_transit", "paid", "failed"])
async def test_a_refused_cancel_of_a_payout_past_pending_is_invalid_state(status: str) -> None:
    gw, fake = gateway(_refused_then(status))
    with pytest.raises(GatewayError) as info:
        await gw.cancel_payout(CancelPayout(provider_payout_id="po_1"), idempotency_key="cx")
    assert info.value.code is ErrorCode.INVALID_STATE and status in info.value.message
    assert [r["method"] for r in fake.requests] == ["post", "get"]


async def test_a_cancel_sent_again_once_canceled_is_answered_canceled() -> None:
    gw, _ = gateway(_refused_then("canceled"))
    res = await gw.cancel_payout(CancelPayout(provider_payout_id="po_1"), idempotency_key="cx")
    assert res.status is PayoutStatus.CANCELED


async def test_a_cancel_refused_while_pending_keeps_stripes_answer() -> None:
    gw, _ = gateway(_refused_then("pending"))
    with pytest.raises(GatewayError) as info:
        await gw.cancel_payout(CancelPayout(provider_payout_id="po_1"), idempotency_key="cx")
    assert info.value.code is ErrorCode.INVALID_REQUEST


async def test_the_balance_is_read_per_currency() -> None:
    gw, fake = gateway(answer(200, BALANCE), connected_account="acct_42")
    res = await gw.retrieve_balance(RetrieveBalance(), idempotency_key="k")
    assert [(b.currency, b.available, b.pending) for b in res.balances] == [
        ("EUR", -500, 0),
        ("USD", 666670, 61414),
    ]
    [req] = fake.requests
    assert (req["method"], req["url"]) == ("get", f"{API_BASE}/v1/balance")
    assert "Idempotency-Key" not in req["headers"]
    assert req["headers"]["Stripe-Account"] == "acct_42"


async def test_a_balance_not_in_stripes_shape_is_unreadable_not_empty() -> None:
    # (localstripe's: one object, not an array per currency)
    odd = {**BALANCE, "available": {"amount": 2000, "currency": "eur"}}
    gw, _ = gateway(answer(200, odd))
    with pytest.raises(GatewayError) as info:
        await gw.retrieve_balance(RetrieveBalance(), idempotency_key="k")
    assert info.value.unreadable_answer


async def test_narrowed_out_payouts_leave_the_payouts_made_readable_and_cancelable() -> None:
    names = [c.value for c in STRIPE_CAPABILITIES - {Capability.PAYOUTS}]
    gw, fake = gateway(answer(200, PAYOUT), options={"capabilities": names})
    with pytest.raises(UnsupportedOperation):
        await gw.create_payout(CREATE, idempotency_key="k")
    with pytest.raises(UnsupportedOperation):
        await gw.retrieve_balance(RetrieveBalance(), idempotency_key="k")
    assert fake.requests == []
    await gw.retrieve_payout(RetrievePayout(provider_payout_id="po_1"), idempotency_key="k")
    await gw.cancel_payout(CancelPayout(provider_payout_id="po_1"), idempotency_key="k")
    assert len(fake.requests) == 2


async def test_a_payout_in_a_currency_stripe_counts_otherwise_is_refused_before_the_call() -> None:
    gw, fake = gateway(answer(200, PAYOUT))
    with pytest.raises(GatewayError) as info:
        await gw.create_payout(
            CreatePayout(amount=Money(amount=1001, currency="KWD")), idempotency_key="k"
        )
    # (Stripe takes a three-decimal amount in tens only: said before the call)
    assert info.value.code is ErrorCode.INVALID_REQUEST and not info.value.reached_provider
    assert "KWD" in info.value.message or "10" in info.value.message
    assert fake.requests == []
