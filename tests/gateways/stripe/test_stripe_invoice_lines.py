"""A one-off invoice's lines read as paystream's (mapping.invoice_lines), from Stripe's
InvoiceLineItem fields: the unit amount as sent (``pricing.unit_amount_decimal`` since API
version 2025-03-31.basil, ``price.unit_amount_decimal`` before, else the line's amount
over its quantity, as localstripe's lines carry it), its quantity and description; a
line made at Stripe without either is a line too; one whose unit is not a whole minor
unit reads as one unit of its amount, so the lines still make the total."""

from __future__ import annotations

from typing import Any

import pytest

from paystream.gateways.base import InvoiceLine
from paystream.gateways.stripe import mapping


@pytest.mark.parametrize(
    "line",
    [
        {"amount": 4500, "quantity": 3, "pricing": {"unit_amount_decimal": "1500"}},
        {"amount": 4500, "quantity": 3, "price": {"unit_amount_decimal": "1500"}},
        {"amount": 4500, "quantity": 3},  # (localstripe's)
    ],
    ids=["basil", "before-basil", "amount-over-quantity"],
)
def test_a_lines_unit_amount_by_either_version(line: dict[str, Any]) -> None:
    found = mapping.invoice_lines([{**line, "id": "il_1", "description": "Hours"}])
    assert found == (InvoiceLine(description="Hours", unit_amount=1500, quantity=3),)


def test_a_line_made_at_stripe_without_description_or_quantity() -> None:
    found = mapping.invoice_lines([{"id": "il_1", "amount": -500, "description": None}])
    assert found == (InvoiceLine(description="", unit_amount=-500, quantity=1),)


@pytest.mark.parametrize(
    "line",
    [
        {"amount": 1001, "quantity": 2, "pricing": {"unit_amount_decimal": "500.5"}},
        {"amount": 1001, "quantity": 2},
    ],
    ids=["decimal-unit", "indivisible"],
)
def test_a_fractional_unit_reads_as_one_of_its_amount(line: dict[str, Any]) -> None:
    found = mapping.invoice_lines([{**line, "id": "il_1", "description": "Usage"}])
    assert found == (InvoiceLine(description="Usage", unit_amount=1001, quantity=1),)


def test_lines_keep_stripes_order() -> None:
    lines = [{"id": f"il_{n}", "amount": n, "description": str(n)} for n in (3, 1, 2)]
    assert [ln.unit_amount for ln in mapping.invoice_lines(lines)] == [3, 1, 2]
