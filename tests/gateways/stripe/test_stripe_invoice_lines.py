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
from paystream.gateways.stripe.gateway import _whole_update


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


def _tagged(tag: str, place: int, count: int | None) -> dict[str, Any]:
    meta = {"paystream_update": tag, "paystream_line": str(place)}
    if count is not None:
        meta["paystream_lines"] = str(count)
    return {"id": f"il_{tag}{place}", "amount": 100, "metadata": meta}


_PLAIN = {"id": "il_x", "amount": 700, "metadata": {}}  # (the create's, or the dashboard's)


@pytest.mark.parametrize(
    ("lines", "whole"),
    [
        ([_tagged("a", n, 3) for n in range(3)], True),
        ([_tagged("a", n, 3) for n in (2, 0, 1)], True),  # (any order)
        ([*(_tagged("a", n, 3) for n in range(3)), _PLAIN], True),  # (one added since)
        ([_tagged("a", n, 3) for n in range(2)], False),  # (parked: 2 of 3 added)
        ([_tagged("a", n, 3) for n in (0, 2)], False),  # (a later update deleting)
        ([], False),  # (parked: the old deleted, none added)
        ([_PLAIN, _PLAIN], False),  # (the create's, maybe half deleted)
        ([_tagged("a", n, None) for n in range(2)], False),  # (the release before's)
        # (the release before's update re-driven by this one: its count on the rest)
        ([_tagged("a", 0, None), _tagged("a", 1, 2)], True),
        ([*(_tagged("a", n, 2) for n in range(2)), _tagged("b", 0, 1)], False),
        ([_tagged("a", 0, 1), _tagged("a", 0, 1)], False),  # (a place twice)
    ],
    ids=["whole", "any-order", "one-since", "two-of-three", "one-deleted", "none",
         "create", "release-before", "release-before-redriven", "two-updates", "twice"],
)  # fmt: skip
def test_a_draft_read_whole_only_as_one_update_made_it(
    lines: list[dict[str, Any]], whole: bool
) -> None:
    """Review h82ra F1: lines read part way through an update's replacement are not
    the draft's lines (the read names none: gateway._whole_update)."""
    assert _whole_update(lines) is whole
