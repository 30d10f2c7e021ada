"""Payments decided in chains beside payouts parked holding in their own room
(MAX_HOLDS lowered to 2), as serially (review h81rc: the chains audit had payments
alone). Payouts and transfers are barriers (the run holding one stays serial), so a
chained run meets the other kinds' holds only as parked ones of earlier batches."""

from __future__ import annotations

from typing import Any

import pytest

from paystream.tenancy import limits as limits_module
from paystream.tenancy.limits import TenantLimits
from tests.agents.harness import Harness
from tests.agents.test_chains_limits_audit import CARD, T0, _assert_alike, _differential, _specs

pytestmark = pytest.mark.asyncio


def _parked_payouts(tenant: str) -> dict[str, Any]:
    # (Each parked after 3 failed attempts; a payment between the two keeps the circuit
    # closed: it opens after 5 failures in a row.)
    return {"latency_ms": 20, "fail_first": {f"pse:{tenant}:payout:po{n}": 3 for n in range(2)}}


@pytest.mark.parametrize("seed", range(3))
async def test_payments_beside_parked_payouts_decide_as_serially(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    monkeypatch.setattr(limits_module, "MAX_HOLDS", 2)
    payouts = [("payout.create", {"amount": 100, "currency": "EUR", "payout_id": f"po{n}"})
               for n in range(2)]  # fmt: skip
    payments = [("payment.create", {**CARD, "payment_id": f"p{i}", "amount": 100})
                for i in range(5)]  # fmt: skip
    between = ("payment.create", {**CARD, "payment_id": "x", "amount": 100})
    batches = _specs([[payouts[0], between, payouts[1]], payments], T0, 10)
    chained, serial, seen = await _differential(
        harness, monkeypatch, batches, seed, gateway=_parked_payouts,
        limits=TenantLimits(
            daily_payment_volume={"USD": 100_000}, daily_payout_volume={"EUR": 100_000}
        ),
    )  # fmt: skip
    _assert_alike(chained, serial, batches)
    assert [k for k, _ in serial[0][1]] == ["payment.succeeded"] * 5
    # The payments waited for their own room only, never the payouts'.
    assert set(seen.settled_waits) == {"pending_payments"}, seen.settled_waits
    assert [k for k, _ in serial[0][0]][1] == "payment.succeeded"
    held = serial[2]["held"].values()
    assert sorted(h[1] for h in held) == ["payout:EUR", "payout:EUR"], serial[2]
