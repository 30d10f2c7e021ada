"""The tax report counts a payment's kept share of its whole tax, rounded half up once,
and splits that over its calculation's rates by largest remainder (paystream.tax's), so
the rates sum to it and a payment not refunded counts its ``amount_tax`` to the unit, as
the dashboard's tax_collected does (review h74q finding 2: each rate's share was
rounded on its own and summed, so the currency total could differ by a minor unit per
payment). VAT 200 + city 50 on 1250: 628 captured, the worker records 250 * 628 / 1250 =
125.6 -> 126 of tax, which the report gave as 100 (100.48) + 25 (25.12) = 125; captured
whole and 622 refunded, 126 kept likewise."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime
from fractions import Fraction

from sqlalchemy.ext.asyncio import AsyncEngine

from paystream.insights.observe import _payment_tax
from paystream.ledger import write_events
from paystream.ledger.tax_report import _split, tax_report
from paystream.tenancy.crypto import MasterKeyring
from tests.ledger.factories import EventFactory, tax_calculation, tax_rate

DAY = (datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 1, 2, tzinfo=UTC))


async def test_the_currency_total_is_the_kept_share_of_the_whole_tax(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    t = f"txr-{uuid.uuid4().hex[:10]}"
    events = [
        tax_rate(make_event, t, "vat"),
        tax_rate(make_event, t, "city", display_name="City", percentage="5"),
        tax_calculation(make_event, t, "taxcalc_1", {"vat": 200, "city": 50}),
        # Captured whole, 622 refunded: 628 kept, 250 * 628 / 1250 = 125.6 -> 126.
        make_event.payment(
            t, "pay_1", amount=1250, currency="GBP", amount_captured=1250,
            amount_refunded=622, amount_tax=250, tax_calculation_id="taxcalc_1",
        ),
        # A partial capture (628 of 1250), nothing refunded: its amount_tax is the tax of
        # what it captured, as the worker pro-rates it (126).
        make_event.payment(
            t, "pay_2", amount=1250, currency="GBP", status="succeeded",
            amount_captured=628, amount_tax=126, tax_calculation_id="taxcalc_1",
        ),
    ]  # fmt: skip
    await write_events(app_engine, events, keyring=keyring)
    gbp = (await tax_report(app_engine, t, *DAY))["currencies"]["GBP"]
    # What the analytics window counts for the partial capture.
    assert _payment_tax({"amount": 1250, "amount_tax": 126}, 628) == 126
    assert gbp["payments"] == 126 + 126, gbp
    by_rate = {r["tax_rate_id"]: r["payments"] for r in gbp["by_rate"]}
    # Each payment's 126 is 100.8 + 25.2 exact: 101 + 25.
    assert by_rate == {"vat": 202, "city": 50}, by_rate


def test_the_rates_split_the_rounded_share_whole() -> None:
    rng = random.Random(74)
    for _ in range(2000):
        rates: dict[str | None, int] = {
            f"r{i}": rng.randint(0, 5000) for i in range(rng.randint(1, 5))
        }
        if rng.random() < 0.2:
            rates[None] = rng.randint(0, 5000)
        whole = sum(rates.values())
        total = rng.randint(0, whole)
        split = _split(total, rates)
        assert sum(split.values()) == (total if whole else 0), (rates, total, split)
        for rate, share in split.items():
            assert abs(share - Fraction(rates[rate] * total, whole)) < 1, (rates, total, split)
    # Ties go to the lower rate id, the rate-less share last.
    assert _split(1, {"b": 1, "a": 1}) == {"a": 1}
    assert _split(1, {None: 1, "z": 1}) == {"z": 1}
