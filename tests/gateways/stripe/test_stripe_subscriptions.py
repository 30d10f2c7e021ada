"""Stripe subscriptions read as Stripe's API reference has them, in each API version's
shape (localstripe answers the older one): statuses folded, invoices (drafts left out,
the PaymentIntent before and since 2025-03-31.basil), renewals read back, and the
events that bring a subscription.refresh."""

from __future__ import annotations

import time
from typing import Any

import pytest

from paystream.gateways.base import (
    SUBSCRIPTION_REF_KEY,
    InvoiceStatus,
    SubscriptionStatus,
    read_subscription_ref,
    subscription_ref,
)
from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.gateways.stripe import mapping
from paystream.gateways.stripe.gateway import STRIPE_CAPABILITIES, StripeGateway
from paystream.gateways.stripe.webhooks import subscription_notice
from paystream.gateways.webhook_notices import SubscriptionNotice

NOW = 1_760_000_000
MONTH = 30 * 24 * 3600


def _plan(**fields: Any) -> dict[str, Any]:
    return {"object": "plan", "amount": 1500, "currency": "usd", "interval": "month",
            "interval_count": 1, **fields}  # fmt: skip


def _sub(status: str = "active", *, basil: bool = True, **fields: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"id": "si_1", "plan": _plan()}
    sub: dict[str, Any] = {"id": "sub_1", "object": "subscription", "status": status,
                           "items": {"object": "list", "data": [item]},
                           "cancel_at_period_end": False, "metadata": {}}  # fmt: skip
    period = {"current_period_start": NOW, "current_period_end": NOW + MONTH}
    (item if basil else sub).update(period)
    return {**sub, **fields}


def _invoice(status: str = "paid", **fields: Any) -> dict[str, Any]:
    return {"id": "in_1", "object": "invoice", "status": status, "currency": "usd",
            "amount_due": 1500, "amount_paid": 1500 if status == "paid" else 0,
            "period_start": NOW, "period_end": NOW,
            "lines": {"data": [{"type": "subscription",
                                "period": {"start": NOW, "end": NOW + MONTH}}]},
            **fields}  # fmt: skip


@pytest.mark.parametrize(
    ("stripe_status", "ours"),
    [
        ("trialing", SubscriptionStatus.TRIALING),
        ("active", SubscriptionStatus.ACTIVE),
        ("past_due", SubscriptionStatus.PAST_DUE),
        ("unpaid", SubscriptionStatus.PAST_DUE),
        ("paused", SubscriptionStatus.PAST_DUE),
        ("incomplete", SubscriptionStatus.INCOMPLETE),
        ("incomplete_expired", SubscriptionStatus.CANCELED),
        ("canceled", SubscriptionStatus.CANCELED),
    ],
)
def test_subscription_statuses_fold_onto_ours(stripe_status: str, ours: Any) -> None:
    assert mapping.subscription(_sub(stripe_status, ended_at=NOW)).status is ours


def test_an_unknown_subscription_status_is_an_unreadable_answer() -> None:
    with pytest.raises(GatewayError) as info:
        mapping.subscription(_sub("frozen"))
    assert info.value.code is ErrorCode.PROVIDER_UNAVAILABLE and info.value.unreadable_answer


@pytest.mark.parametrize("basil", [True, False])
def test_the_period_is_read_where_the_version_has_it(basil: bool) -> None:
    res = mapping.subscription(_sub(basil=basil))
    assert int(res.current_period_start.timestamp()) == NOW
    assert int(res.current_period_end.timestamp()) == NOW + MONTH
    assert (res.amount.amount, res.interval, res.interval_count) == (1500, "month", 1)


def test_a_cancel_at_period_end_has_no_canceled_at_yet() -> None:
    # Stripe sets canceled_at when the cancel at period end is asked for.
    ends = mapping.subscription(_sub(cancel_at_period_end=True, canceled_at=NOW))
    assert ends.cancel_at_period_end and ends.canceled_at is None
    ended = mapping.subscription(_sub("canceled", canceled_at=NOW, ended_at=NOW + 5))
    assert ended.canceled_at is not None and int(ended.canceled_at.timestamp()) == NOW + 5


def test_the_payment_method_billed_is_read_as_an_id_or_expanded() -> None:
    """``default_payment_method`` is an id, the PaymentMethod where it was expanded, or
    null (the customer's default billed: none named)."""
    assert (
        mapping.subscription(_sub(default_payment_method="pm_1")).provider_payment_method_id
        == "pm_1"
    )
    expanded = {"id": "pm_2", "object": "payment_method"}
    res = mapping.subscription(_sub(default_payment_method=expanded))
    assert res.provider_payment_method_id == "pm_2"
    assert (
        mapping.subscription(_sub(default_payment_method=None)).provider_payment_method_id is None
    )


def test_a_price_priced_subscription_reads_as_a_plan_priced_one() -> None:
    item = {"id": "si_1", "current_period_start": NOW, "current_period_end": NOW + MONTH,
            "price": {"unit_amount": 700, "currency": "eur",
                      "recurring": {"interval": "week", "interval_count": 2}}}  # fmt: skip
    res = mapping.subscription(_sub(items={"data": [item]}))
    assert (res.amount.amount, res.amount.currency, res.interval, res.interval_count) == (
        700, "EUR", "week", 2,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("stripe_status", "ours"),
    [
        ("paid", InvoiceStatus.PAID),
        ("open", InvoiceStatus.OPEN),
        ("void", InvoiceStatus.VOID),
        ("uncollectible", InvoiceStatus.OPEN),
    ],
)
def test_invoice_statuses_fold_onto_ours(stripe_status: str, ours: Any) -> None:
    res = mapping.invoice(_invoice(stripe_status))
    assert res is not None and res.status is ours


def test_a_draft_invoice_is_not_listed_and_an_unknown_status_is_unreadable() -> None:
    assert mapping.invoice(_invoice("draft")) is None
    with pytest.raises(GatewayError):
        mapping.invoice(_invoice("pending"))


def test_an_invoice_bills_its_subscription_lines_period() -> None:
    res = mapping.invoice(_invoice())
    assert res is not None
    assert (int(res.period_start.timestamp()), int(res.period_end.timestamp())) == (
        NOW, NOW + MONTH,
    )  # fmt: skip


def test_an_invoices_payment_intent_before_and_since_basil() -> None:
    assert mapping.invoice_payment_intent(_invoice(payment_intent="pi_old")) == "pi_old"
    payments = {"data": [
        {"status": "canceled", "payment": {"type": "payment_intent", "payment_intent": "pi_a"}},
        {"status": "paid", "payment": {"type": "payment_intent", "payment_intent": "pi_b"}},
    ]}  # fmt: skip
    assert mapping.invoice_payment_intent(_invoice(payments=payments)) == "pi_b"
    assert mapping.invoice_payment_intent(_invoice()) is None


def test_an_open_invoices_decline_comes_from_its_payment_intent() -> None:
    pi = {"last_payment_error": {"code": "card_declined", "decline_code": "insufficient_funds",
                                 "message": "Your card has insufficient funds."}}  # fmt: skip
    res = mapping.invoice(_invoice("open", payment_intent="pi_1"), pi)
    assert res is not None and res.failure_code == "insufficient_funds"
    assert res.provider_payment_id == "pi_1" and res.failure_message
    paid = mapping.invoice(_invoice("paid", payment_intent="pi_1"), pi)
    assert paid is not None and paid.failure_code is None


def test_stripe_offers_subscriptions_and_invoices_and_the_option_narrows_them() -> None:
    from paystream.gateways.base import Capability
    from paystream.gateways.stripe.gateway import _capabilities

    assert {Capability.SUBSCRIPTIONS, Capability.INVOICES} <= STRIPE_CAPABILITIES
    assert Capability.SUBSCRIPTIONS not in _capabilities({"capabilities": ["payments"]})


class _Client:
    """A StripeClient stand-in: its v1 services answering fixed objects."""

    def __init__(self, answers: dict[str, Any], calls: list[tuple[str, Any]]) -> None:
        self.v1 = self
        self._answers, self._calls = answers, calls

    def __getattr__(self, service: str) -> Any:
        client = self

        class _Service:
            def __getattr__(self, verb: str) -> Any:
                async def call(*args: Any) -> Any:
                    client._calls.append((f"{service}.{verb}", args))
                    return _Obj(client._answers[f"{service}.{verb}"])

                return call

        return _Service()


class _Obj:
    def __init__(self, obj: dict[str, Any]) -> None:
        self._obj, self.last_response = obj, None

    def to_dict(self, for_json: bool = False) -> dict[str, Any]:
        return self._obj


async def test_a_renewal_declined_reads_back_past_due_with_both_invoices() -> None:
    """What Stripe bills on its own clock (localstripe has no test clocks): the renewal's
    invoice open, its decline read from its PaymentIntent, in the basil shape."""
    renewal = _invoice("open", id="in_2", amount_due=1500,
                       payments={"data": [{"status": "open", "is_default": True, "payment": {
                           "type": "payment_intent", "payment_intent": "pi_2"}}]})  # fmt: skip
    first = _invoice("paid", payments={"data": [{"status": "paid", "payment": {
        "type": "payment_intent", "payment_intent": "pi_1"}}]})  # fmt: skip
    calls: list[tuple[str, Any]] = []
    gw = StripeGateway(
        _Client(  # type: ignore[arg-type]
            {
                "subscriptions.retrieve_async": _sub("past_due"),
                "invoices.list_async": {"data": [renewal, first]},
                "payment_intents.retrieve_async": {
                    "id": "pi_2", "last_payment_error": {"code": "card_declined",
                                                         "decline_code": "do_not_honor"}},
            },
            calls,
        )
    )  # fmt: skip
    from paystream.gateways.base import RetrieveSubscription

    res = await gw.retrieve_subscription(
        RetrieveSubscription(provider_subscription_id="sub_1"), idempotency_key="k"
    )
    assert res.status is SubscriptionStatus.PAST_DUE
    assert [(i.provider_invoice_id, i.status, i.provider_payment_id) for i in res.invoices] == [
        ("in_2", InvoiceStatus.OPEN, "pi_2"),
        ("in_1", InvoiceStatus.PAID, "pi_1"),
    ]
    assert res.invoices[0].failure_code == "do_not_honor"
    listed = next(args for name, args in calls if name == "invoices.list_async")
    assert listed[0] == {"subscription": "sub_1", "limit": 24, "expand": ["data.payments"]}


def test_a_subscription_reference_is_written_and_read_as_a_payments() -> None:
    meta = subscription_ref({"plan": "gold"}, "acme", "sub_p1")
    assert meta == {"plan": "gold", SUBSCRIPTION_REF_KEY: "acme:sub_p1"}
    assert read_subscription_ref(meta) == ("acme", "sub_p1")


def _event(kind: str, obj: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"id": "evt_1", "type": kind, "created": int(time.time()),
            "data": {"object": obj}, **fields}  # fmt: skip


_REF = {SUBSCRIPTION_REF_KEY: "acme:sub_p1"}


@pytest.mark.parametrize(
    "event",
    [
        _event("customer.subscription.updated", _sub(metadata=_REF)),
        _event("customer.subscription.deleted", _sub("canceled", metadata=_REF)),
        _event("invoice.paid", _invoice(parent={"type": "subscription_details",
               "subscription_details": {"subscription": "sub_1", "metadata": _REF}})),
        _event("invoice.payment_failed", _invoice("open", subscription="sub_1",
               subscription_details={"metadata": _REF})),
    ],
)  # fmt: skip
def test_a_followed_subscription_or_invoice_event_is_a_notice(event: dict[str, Any]) -> None:
    notice = subscription_notice(event)
    assert isinstance(notice, SubscriptionNotice)
    assert (notice.tenant_id, notice.subscription_id, notice.provider_subscription_id) == (
        "acme", "sub_p1", "sub_1",
    )  # fmt: skip
    assert notice.account is None and notice.event_type == event["type"]


@pytest.mark.parametrize(
    "event",
    [
        _event("customer.subscription.created", _sub(metadata=_REF)),  # (paystream's own)
        _event("customer.subscription.updated", _sub()),  # not paystream's
        _event("invoice.paid", _invoice()),  # a one-off invoice
        _event("invoice.paid", _sub(metadata=_REF)),  # the wrong object
        _event("invoice.payment_failed", _invoice("open", subscription_details={"metadata": _REF})),
    ],
)
def test_anything_else_is_no_subscription_notice(event: dict[str, Any]) -> None:
    assert subscription_notice(event) is None
