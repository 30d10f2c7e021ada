"""A Stripe invoice's ``total`` (and ``subtotal``, ``tax``) is read as Stripe reports
it, not as what was paid or is due (review h74h): a customer's credit balance, or a
coupon added in the dashboard, makes ``amount_paid`` / ``amount_due`` less than the
invoice's total, and a tax report reading ``total`` must not see subtotal + tax !=
total."""

from __future__ import annotations

from typing import Any

from paystream.gateways.stripe import mapping

_TAXED: dict[str, Any] = {
    "id": "in_1",
    "object": "invoice",
    "status": "paid",
    "currency": "gbp",
    "subtotal": 1000,
    "total": 1200,
    "total_taxes": [{"amount": 200, "tax_behavior": "exclusive"}],
    "amount_paid": 700,
    "amount_due": 700,
    "starting_balance": -500,
    "period_start": 1,
    "period_end": 2,
    "lines": {"data": [{"period": {"start": 1, "end": 2}}]},
}


def test_a_stripe_invoices_total_is_its_total_not_what_the_balance_left_due() -> None:
    found = mapping.invoice(_TAXED)
    assert found is not None
    assert found.amount.amount == 700  # (what was paid: the charge)
    assert (found.subtotal, found.tax, found.total) == (1000, 200, 1200), found


def test_an_older_versions_tax_amounts_carry_the_total_too() -> None:
    older = {k: v for k, v in _TAXED.items() if k != "total_taxes"}
    older["total_tax_amounts"] = [{"amount": 200, "inclusive": False}]
    found = mapping.invoice(older)
    assert found is not None and (found.subtotal, found.tax, found.total) == (1000, 200, 1200)


def test_an_untaxed_invoice_carries_no_tax_fields() -> None:
    plain = {k: v for k, v in _TAXED.items() if k != "total_taxes"}
    found = mapping.invoice(plain)
    assert found is not None and (found.subtotal, found.tax, found.total) == (None, None, None)
