"""A one-off Stripe Invoice read as paystream's invoice (mapping.one_off_invoice), from
Stripe's documented fields: a draft too (a subscription's drafts are not listed), what is
paid or due, the due date, its PaymentIntent by either API version, `uncollectible`
still payable (open); and its `invoice.*` webhooks are not followed (they name no
paystream subscription): a sent invoice paid by its customer is read by invoice.refresh."""

from __future__ import annotations

from typing import Any

import pytest

from paystream.gateways.base import InvoiceStatus
from paystream.gateways.errors import GatewayError
from paystream.gateways.stripe import mapping
from paystream.gateways.stripe.webhooks import subscription_notice

_INVOICE: dict[str, Any] = {
    "id": "in_1",
    "object": "invoice",
    "status": "draft",
    "currency": "eur",
    "subtotal": 3000,
    "total": 3000,
    "amount_due": 3000,
    "amount_paid": 0,
    "due_date": None,
    "collection_method": "charge_automatically",
    "payment_intent": None,
}


@pytest.mark.parametrize(
    ("status", "ours"),
    [
        ("draft", InvoiceStatus.DRAFT),
        ("open", InvoiceStatus.OPEN),
        ("paid", InvoiceStatus.PAID),
        ("void", InvoiceStatus.VOID),
        ("uncollectible", InvoiceStatus.UNCOLLECTIBLE),  # (its own: still payable)
    ],
)
def test_every_status_is_read(status: str, ours: InvoiceStatus) -> None:
    found = mapping.one_off_invoice({**_INVOICE, "status": status})
    assert found.status is ours and found.period_start is None and found.period_end is None


def test_an_unknown_status_is_refused_not_guessed() -> None:
    with pytest.raises(GatewayError):
        mapping.one_off_invoice({**_INVOICE, "status": "exploded"})


def test_paid_reads_what_was_paid_and_its_payment_by_either_version() -> None:
    older = mapping.one_off_invoice(
        {**_INVOICE, "status": "paid", "amount_paid": 3000, "amount_due": 0,
         "payment_intent": "pi_1"}
    )  # fmt: skip
    assert (older.amount.amount, older.amount.currency) == (3000, "EUR")
    assert older.provider_payment_id == "pi_1"
    payments = {"data": [{"status": "paid", "payment": {"payment_intent": "pi_2"}}]}
    basil = {**_INVOICE, "status": "paid", "amount_paid": 3000, "payments": payments}
    del basil["payment_intent"]
    assert mapping.one_off_invoice(basil).provider_payment_id == "pi_2"


def test_a_sent_invoice_carries_its_due_date() -> None:
    found = mapping.one_off_invoice({**_INVOICE, "status": "open", "due_date": 1_767_225_600})
    assert found.due_date is not None and found.due_date.year == 2026


def test_a_one_off_invoices_event_is_not_followed() -> None:
    event = {
        "id": "evt_1",
        "object": "event",
        "type": "invoice.paid",
        "created": 1_767_225_600,
        "data": {"object": {**_INVOICE, "status": "paid", "metadata": {}}},
    }
    assert subscription_notice(event) is None


def test_a_creates_answer_is_the_draft_as_made_whatever_became_of_it() -> None:
    """Read back after its lines (a GET: no key), a create re-driven after a crash lost
    its answer and its invoice's finalize and pay (tests/e2e/test_stripe_invoice_crash.py)
    is the draft it made: reported paid, the re-driven finalize and pay were refused
    instead of answered from their keys."""
    paid = {**_INVOICE, "status": "paid", "amount_paid": 3000, "payment_intent": "pi_1",
            "due_date": 1_767_225_600}  # fmt: skip
    made = mapping.one_off_invoice(paid, as_made=True)
    assert made.status is InvoiceStatus.DRAFT and made.amount.amount == 3000
    assert made.provider_payment_id is None and made.due_date is None
