"""One-off invoices (invoice.*) in the analytics windows, where subscriptions' invoices
are counted: a paid one in ``invoices_paid`` (once: `invoice.paid` is emitted once per
invoice) with its tax in ``tax_collected``, each declined pay in ``invoices_declined``;
nothing for another outcome of an invoice, another tenant's, or a malformed one."""

from __future__ import annotations

from typing import Any

import pytest

from tests.insights.test_disputes_counted import _observe, _outcome


def _inv(status: str, **fields: Any) -> dict[str, Any]:
    obj = {
        "tenant_id": "acme", "id": "in1", "version": 3, "provider": "simulator",
        "created_by": "c1", "subscription_id": None, "customer_id": "cus1",
        "status": status, "amount": 3600, "currency": "EUR", "provider_invoice_id": "in_x",
        "failure_code": None,
    }  # fmt: skip
    return {**obj, **fields}


def _invoice(kind: str, obj: dict[str, Any], command_type: str = "invoice.pay") -> dict[str, Any]:
    data = {"entity_type": "invoice", "entity_id": obj["id"], "version": obj["version"],
            "object": obj}  # fmt: skip
    return _outcome(kind, "c9", command_type, data)


def test_a_paid_invoice_counts_paid_with_its_tax() -> None:
    seen = _observe(_invoice("invoice.paid", _inv("paid", subtotal=3000, tax=600, total=3600)))
    assert seen.invoices_paid == (("EUR", 3600),)
    assert seen.tax_collected == (("EUR", "invoices", 600),)
    assert seen.invoices_declined == ()


def test_a_declined_pay_counts_a_decline_by_its_code() -> None:
    seen = _observe(
        _invoice("invoice.payment_failed", _inv("open", failure_code="insufficient_funds"))
    )
    assert seen.invoices_declined == (("EUR", "insufficient_funds"),)
    assert seen.invoices_paid == ()


@pytest.mark.parametrize("kind", ["invoice.created", "invoice.finalized", "invoice.voided"])
def test_other_invoice_outcomes_count_nothing(kind: str) -> None:
    seen = _observe(_invoice(kind, _inv("open"), "invoice.finalize"))
    assert seen.invoices_paid == () and seen.invoices_declined == ()


@pytest.mark.parametrize(
    "fields",
    [
        {"tenant_id": "other"},
        {"currency": "XXX"},
        {"amount": None},
        {"amount": -5},
        {"subscription_id": "sub1"},
    ],
)
def test_a_malformed_or_foreign_invoice_counts_nothing(fields: dict[str, Any]) -> None:
    seen = _observe(_invoice("invoice.paid", _inv("paid", **fields)))
    assert seen.invoices_paid == () and seen.tax_collected == ()


def test_an_invoice_paid_by_its_customers_credit_counts_paid_of_nothing() -> None:
    """Finalized with nothing left to charge (its customer's credit balance covered it):
    paid, its amount 0 (review L1). Counted paid, of 0, and no tax collected by it (a
    window's tax is contained in what its invoices were paid)."""
    seen = _observe(
        _invoice("invoice.paid", _inv("paid", amount=0, tax=600, total=3600), "invoice.finalize")
    )
    assert seen.invoices_paid == (("EUR", 0),)
    assert seen.tax_collected == ()
    # (0 is a paid invoice's only: an open one of 0 is no outcome of paystream's)
    seen = _observe(_invoice("invoice.paid", _inv("open", amount=0), "invoice.finalize"))
    assert seen.invoices_paid == ()
