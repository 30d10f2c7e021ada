"""The cap on holds not yet answered (MAX_HOLDS) is a room per kind: payments, transfers
and payouts each hold up to it, whatever the others hold. One room shared by the three
let a flood of parked payouts refuse the customers' payments `pending_payments`, and a
transfer so refused said "N payments ... are awaiting" though N counted every hold
(review h80r L2 / h80r2 L1)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from paystream.tenancy import limits as limits_module
from paystream.tenancy.limits import (
    PAYOUT_VOLUME,
    TRANSFER_VOLUME,
    Admission,
    LimitGate,
    LimitRejection,
    Record,
    TenantLimits,
)

NOW = 1_790_000_000_000
LIMITS = TenantLimits(
    daily_payment_volume={"USD": 10**6, "EUR": 10**6},
    daily_transfer_volume={"USD": 10**6},
    daily_payout_volume={"USD": 10**6},
)
OFFSETS = iter(range(1, 10**6))


class _Body(BaseModel):
    amount: int
    currency: str


def _admit(gate: LimitGate, kind: str, currency: str = "USD") -> Any:
    offset = next(OFFSETS)
    rec = Record(f"c{offset}", 0, offset, NOW)
    body = _Body(amount=10, currency=currency)
    return gate.admit("t1", LIMITS, rec, kind, body, hold_key=f"k{offset}")


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> LimitGate:
    monkeypatch.setattr(limits_module, "MAX_HOLDS", 3)
    return LimitGate({}, clock_ms=lambda: NOW)


def test_parked_payouts_never_refuse_a_payment_or_a_transfer(gate: LimitGate) -> None:
    for _ in range(3):
        assert isinstance(_admit(gate, "payout.create"), Admission)
    refused = _admit(gate, "payout.create")
    assert isinstance(refused, LimitRejection)
    assert refused.extra == {"limit": "pending_payouts", "currency": "USD", "allowed": 3}
    assert refused.message == (
        "3 payouts of the tenant are awaiting their provider's answer (at most 3 at once); "
        "send this one again once they are answered"
    )
    # The payments' room and the transfers' are their own: each fills up to 3 too.
    for _ in range(3):
        assert isinstance(_admit(gate, "payment.create"), Admission)
        assert isinstance(_admit(gate, "transfer.create"), Admission)
    paid = _admit(gate, "payment.create", "EUR")  # (the payments' room, any currency)
    assert isinstance(paid, LimitRejection) and paid.extra["limit"] == "pending_payments"
    assert paid.message.startswith("3 payments of the tenant are awaiting"), paid.message
    moved = _admit(gate, "transfer.create")
    assert isinstance(moved, LimitRejection) and moved.extra["limit"] == "pending_transfers"
    assert moved.message.startswith("3 transfers of the tenant are awaiting"), moved.message
    held = gate.table["t1:limits"]["held"].values()
    assert sorted(h[1] for h in held) == sorted(
        ["USD"] * 3 + [TRANSFER_VOLUME + "USD"] * 3 + [PAYOUT_VOLUME + "USD"] * 3
    )


def test_the_cheap_room_check_counts_the_kind_alone(gate: LimitGate) -> None:
    """volume_room, which decides whether a command waits for the run's others, must not
    say "no room" for a payment while payouts fill their own (it made every payment
    wait for its turn)."""
    for _ in range(3):
        _admit(gate, "payout.create")
    assert gate.volume_room("t1", LIMITS, "USD", 10)
    assert gate.volume_room("t1", LIMITS, TRANSFER_VOLUME + "USD", 10)
    assert not gate.volume_room("t1", LIMITS, PAYOUT_VOLUME + "USD", 10)
