"""BGN, withdrawn when Bulgaria took the euro on 2026-01-01, was still taken and charged for
new payments: the sandbox promised a currency acquirers decline (review h68aj). Payments
recorded in it stay readable and refundable."""

from __future__ import annotations

from tests.agents.harness import Harness, data, kind


async def test_a_new_payment_in_the_withdrawn_lev_is_not_charged(harness: Harness) -> None:
    t = harness.add_tenant()
    out = await harness.send(
        "payment.create",
        t,
        {"payment_id": "pay_bgn", "amount": 1000, "currency": "BGN",
         "payment_method_token": "pm_card_visa"},
    )  # fmt: skip
    assert kind(out) == "command.rejected", (kind(out), data(out).get("object"))
    assert f"{t}:pay_bgn" not in harness.tables.payments
