"""Stripe's dispute object read onto paystream's statuses and deadline (review h69c).

* An inquiry (a "warning" dispute: no funds withdrawn, no fee) that closes is
  `warning_closed`: the issuer asked, and no chargeback followed, or the merchant
  refunded or conceded it. Nothing was won: read as `won`, a dispute.accept of an
  inquiry (Stripe's close) was recorded won under an outcome that says "accepted", and a
  downstream ledger booked a reinstatement of money that never left.
* `evidence_details.due_by` is 0 when the issuer allows no response (Stripe's API
  reference): no deadline, not 1970-01-01 (a deadline long past, "lost unanswered").
"""

from __future__ import annotations

from typing import Any

import pytest

from paystream.gateways.base import DisputeStatus
from paystream.gateways.stripe import mapping
from paystream.money import Money

INQUIRY: dict[str, Any] = {
    "id": "dp_1",
    "object": "dispute",
    "status": "warning_needs_response",
    "amount": 900,
    "currency": "usd",
    "reason": "general",
    "evidence_details": {"due_by": 1_767_225_600, "has_evidence": False, "past_due": False},
}


def test_an_inquiry_closed_is_not_a_dispute_won() -> None:
    got = mapping.dispute({**INQUIRY, "status": "warning_closed"})
    assert got.status is not DisputeStatus.WON
    assert got.status is DisputeStatus.INQUIRY_CLOSED


@pytest.mark.parametrize("due_by", [0, None])
def test_a_dispute_that_allows_no_response_has_no_deadline(due_by: int | None) -> None:
    got = mapping.dispute(
        {
            **INQUIRY,
            "status": "needs_response",
            "evidence_details": {"due_by": due_by, "has_evidence": False, "past_due": False},
        }
    )
    assert got.evidence_due_by is None


@pytest.mark.parametrize(
    ("due_by", "held"),
    [
        (19_999_999_999, 19_999_999_999),  # (the year 2603: still seconds)
        (20_000_000_000, None),
        (30_000_000_000, None),  # (pydantic would read it as milliseconds: 1970-12-14)
        (2**37 - 1, None),
    ],
)
def test_a_deadline_past_what_seconds_can_say_is_no_deadline(due_by: int, held: int | None) -> None:
    """The merchant's deadline is the instant Stripe sent, or none: an integer above
    2e10, which pydantic reads as milliseconds, is not recorded as a date in 1970 (a
    deadline long past: "lost unanswered"), and the webhook's seconds and the record's
    datetime always name the same instant (review h72e)."""
    details = {"due_by": due_by, "has_evidence": False, "past_due": False}
    got = mapping.dispute({**INQUIRY, "status": "needs_response", "evidence_details": details})
    assert (None if got.evidence_due_by is None else got.evidence_due_by.timestamp()) == held


def _txn(amount: int, fee: int, currency: str = "usd") -> dict[str, Any]:
    return {"object": "balance_transaction", "amount": amount, "fee": fee,
            "net": amount - fee, "currency": currency}  # fmt: skip


CHARGEBACK: dict[str, Any] = {**INQUIRY, "status": "needs_response"}


@pytest.mark.parametrize(
    ("txns", "fee"),
    [
        # Opened: the withdrawal of the amount, with the dispute fee (Stripe US: 15.00).
        ([_txn(-900, 1500)], Money(amount=1500, currency="USD")),
        # Won: the reinstatement gives the amount back, fee 0 (Stripe keeps its fee).
        ([_txn(-900, 1500), _txn(900, 0)], Money(amount=1500, currency="USD")),
        # A reinstatement that gave the fee back too (a contract that says so): none kept.
        ([_txn(-900, 1500), _txn(900, -1500)], Money(amount=0, currency="USD")),
        # In the account's currency, not the dispute's (a EUR account's fee on a USD charge).
        ([_txn(-850, 2000, "eur")], Money(amount=2000, currency="EUR")),
        # Stripe's hundredths of a shilling, in paystream's whole shillings.
        ([_txn(-90000, 1500000, "ugx")], Money(amount=15000, currency="UGX")),
        # An inquiry (nothing withdrawn), or transactions not as the reference has them.
        ([], None),
        (None, None),
        (["txn_1"], None),
        ([_txn(-900, 1500), _txn(900, 0, "eur")], None),
        ([{**_txn(-900, 1500), "fee": "1500"}], None),
    ],
)
def test_the_dispute_fee_is_read_from_its_balance_transactions(
    txns: list[Any] | None, fee: Money | None
) -> None:
    assert mapping.dispute({**CHARGEBACK, "balance_transactions": txns}).fee == fee
