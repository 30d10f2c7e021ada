"""h73q review: a subscription canceled with its invoice still open (a declined first
invoice) answers that invoice void, on every gateway (the simulator voids it; Stripe's
DELETE only stops its automatic collection, leaving it payable)."""

from __future__ import annotations

from paystream.gateways.base import CancelSubscription, InvoiceStatus, SubscriptionStatus
from tests.gateways.harness import Harness, over_gateways
from tests.gateways.test_contract import PADDLE_NO_SUBSCRIPTIONS, key, subscribe


# (Square: its unpaid invoice canceled, CancelInvoice, beside the cancel scheduled)
@over_gateways(paddle_lacks=PADDLE_NO_SUBSCRIPTIONS)
async def test_a_canceled_subscriptions_open_invoice_is_void(harness: Harness) -> None:
    sub = await subscribe(harness, token="pm_card_chargeCustomerFail")
    assert sub.status is SubscriptionStatus.INCOMPLETE
    (first,) = sub.invoices
    assert first.status is InvoiceStatus.OPEN
    canceled = await harness.gateway.cancel_subscription(
        CancelSubscription(provider_subscription_id=sub.provider_subscription_id),
        idempotency_key=key(),
    )
    assert canceled.status is SubscriptionStatus.CANCELED
    (after,) = canceled.invoices
    # Left open, it stays payable at Stripe (hosted invoice page, dashboard "charge"),
    # while paystream refuses every later refresh of a canceled subscription and its
    # webhook ignores the invoice.paid: a payment never recorded.
    assert after.status is InvoiceStatus.VOID
