"""h73q review: Stripe subscriptions against Stripe's API reference (a stand-in client,
as tests/gateways/stripe/test_stripe_subscriptions.py's)."""

from __future__ import annotations

from typing import Any

from paystream.agents.handlers import _first_invoice_failure
from paystream.gateways.base import (
    CancelSubscription,
    Capability,
    CreateSubscription,
    InvoiceStatus,
    RetrieveSubscription,
    SubscriptionStatus,
)
from paystream.gateways.errors import ErrorCode
from paystream.gateways.stripe.gateway import StripeGateway
from paystream.money import Money
from tests.gateways.stripe.test_stripe_subscriptions import _Client, _invoice, _sub

PI_3DS = {"id": "pi_1", "object": "payment_intent", "status": "requires_action",
          "last_payment_error": None,
          "next_action": {"type": "use_stripe_sdk"}}  # fmt: skip
OPEN_FIRST = _invoice("open", payments={"data": [{"status": "open", "is_default": True,
    "payment": {"type": "payment_intent", "payment_intent": "pi_1"}}]})  # fmt: skip


def _create_req() -> CreateSubscription:
    return CreateSubscription(
        provider_customer_id="cus_1",
        provider_payment_method_id="pm_1",
        amount=Money(amount=1500, currency="USD"),
        interval="month",
    )


async def test_a_first_invoice_awaiting_3ds_is_not_a_card_decline() -> None:
    """Stripe: a subscription is `incomplete` when its first payment "requires action,
    like customer authentication"; its PaymentIntent is then requires_action with no
    last_payment_error. paystream answers subscription.failed card_declined, where the
    customer need only authenticate (the simulator answers authentication_required)."""
    calls: list[tuple[str, Any]] = []
    gw = StripeGateway(_Client({  # type: ignore[arg-type]
        "plans.create_async": {"id": "plan_1"},
        "subscriptions.create_async": _sub("incomplete"),
        "invoices.list_async": {"data": [OPEN_FIRST]},
        "payment_intents.retrieve_async": PI_3DS,
    }, calls))  # fmt: skip
    res = await gw.create_subscription(_create_req(), idempotency_key="k")
    assert res.status is SubscriptionStatus.INCOMPLETE
    assert res.invoices[0].failure_code == "authentication_required"


def test_the_handlers_error_for_it_is_authentication_required() -> None:
    from types import SimpleNamespace

    from paystream.gateways.stripe import mapping

    inv = mapping.invoice(OPEN_FIRST, PI_3DS)
    assert inv is not None
    res = mapping.subscription(_sub("incomplete"), (inv,))
    ctx = SimpleNamespace(gateway=SimpleNamespace(provider="stripe"))
    err = _first_invoice_failure(ctx, res)  # type: ignore[arg-type]
    assert err.code is ErrorCode.AUTHENTICATION_REQUIRED


async def test_the_plans_idempotency_key_stays_within_stripes_255() -> None:
    """Stripe: "Idempotency keys are up to 255 characters long". paystream's provider
    keys are built up to exactly 255 (handlers._PROVIDER_KEY_MAX); the Plan's adds
    ":plan", and Stripe refuses the create of a valid command."""
    calls: list[tuple[str, Any]] = []
    gw = StripeGateway(_Client({  # type: ignore[arg-type]
        "plans.create_async": {"id": "plan_1"},
        "subscriptions.create_async": _sub("active"),
        "invoices.list_async": {"data": [_invoice("paid")]},
    }, calls))  # fmt: skip
    await gw.create_subscription(_create_req(), idempotency_key="ps:acme:" + "k" * 247)
    keys = [args[1]["idempotency_key"] for _, args in calls if len(args) > 1
            and isinstance(args[1], dict) and "idempotency_key" in args[1]]  # fmt: skip
    assert keys and all(len(k) <= 255 for k in keys), [len(k) for k in keys]


async def test_cancel_now_voids_the_open_invoice_it_leaves() -> None:
    """Stripe's DELETE "stops automatic collection of all finalized invoices": a
    past_due subscription canceled keeps its open invoice payable. paystream never
    reads it again (refresh of a canceled subscription is refused, its invoice.paid
    ignored): the invoice must be voided at the cancel (the simulator's contract)."""
    calls: list[tuple[str, Any]] = []
    renewal = _invoice("open", id="in_2")
    gw = StripeGateway(_Client({  # type: ignore[arg-type]
        "subscriptions.cancel_async": _sub("canceled", ended_at=1_760_000_100),
        "invoices.list_async": {"data": [renewal, _invoice("paid")]},
        "payment_intents.retrieve_async": {"id": "pi_2", "last_payment_error": None},
        "invoices.void_invoice_async": {**renewal, "status": "void"},
    }, calls))  # fmt: skip
    res = await gw.cancel_subscription(
        CancelSubscription(provider_subscription_id="sub_1"), idempotency_key="k"
    )
    assert res.status is SubscriptionStatus.CANCELED
    assert res.invoices[0].status is InvoiceStatus.VOID
    assert any(name == "invoices.void_invoice_async" for name, _ in calls)


async def test_a_tenant_without_payments_can_read_its_declined_subscription() -> None:
    """capabilities [customers, subscriptions, invoices] (validate_options allows it):
    the decline's PaymentIntent read is checked against PAYMENTS, so a create that
    reached Stripe (and made the subscription) answers UnsupportedOperation."""
    gw = StripeGateway(_Client({  # type: ignore[arg-type]
        "subscriptions.retrieve_async": _sub("incomplete"),
        "invoices.list_async": {"data": [OPEN_FIRST]},
        "payment_intents.retrieve_async": {"id": "pi_1", "last_payment_error": {
            "code": "card_declined", "decline_code": "generic_decline"}},
    }, []), capabilities=frozenset({Capability.CUSTOMERS, Capability.SUBSCRIPTIONS,
                                    Capability.INVOICES}))  # fmt: skip
    res = await gw.retrieve_subscription(
        RetrieveSubscription(provider_subscription_id="sub_1"), idempotency_key="k"
    )
    assert res.invoices[0].failure_code == "generic_decline"
