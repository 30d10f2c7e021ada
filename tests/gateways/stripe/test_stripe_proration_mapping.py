"""Stripe's proration lines read as paystream's, in both shapes: ``proration`` on the
line or item (before API version 2025-03-31.basil) and on its ``parent``'s details
(since); a renewal invoice's period is its subscription line's, not a proration's."""

from __future__ import annotations

from typing import Any

from paystream.gateways.stripe import mapping

START, CHANGE, END = 1_780_000_000, 1_780_864_000, 1_782_592_000


def _line(amount: int, *, proration: bool, basil: bool, start: int = CHANGE) -> dict[str, Any]:
    line: dict[str, Any] = {
        "amount": amount,
        "description": "Unused time" if amount < 0 else "Remaining time",
        "period": {"start": start, "end": END},
    }
    if basil:
        line["parent"] = {
            "type": "invoice_item_details",
            "invoice_item_details": {"proration": proration, "subscription": "sub_1"},
            "subscription_details": {"subscription": "sub_1"},
        }
    else:
        line.update(proration=proration, subscription="sub_1")
    return line


def _invoice(*lines: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "in_1",
        "status": "paid",
        "amount_paid": 3000,
        "currency": "usd",
        "lines": {"data": list(lines)},
    }


def test_proration_lines_in_both_shapes() -> None:
    for basil in (False, True):
        inv = mapping.invoice(
            _invoice(
                _line(-1000, proration=True, basil=basil),
                _line(2000, proration=True, basil=basil),
                _line(2500, proration=False, basil=basil, start=END),
            )
        )
        assert inv is not None
        assert [x.amount for x in inv.proration_lines] == [-1000, 2000], basil
        # (the period billed: the subscription line's, not the first proration's)
        assert inv.period_start is not None and int(inv.period_start.timestamp()) == END


def test_a_proration_invoice_has_its_lines_period() -> None:
    inv = mapping.invoice(_invoice(_line(-1000, proration=True, basil=True)))
    assert inv is not None and inv.period_start is not None
    assert int(inv.period_start.timestamp()) == CHANGE


def test_an_item_of_another_subscription_or_no_proration_is_not_read() -> None:
    item = _line(-1000, proration=True, basil=True)
    assert mapping.proration_line(item, "sub_1") is not None
    assert mapping.proration_line(item, "sub_2") is None
    assert mapping.proration_line(_line(100, proration=False, basil=False), "sub_1") is None
