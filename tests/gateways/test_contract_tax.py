"""Tax rates over every gateway: made and archived at the provider (Square has none), and
a subscription's invoices taxed by them as paystream.tax computes it: at the simulator,
and at Stripe (localstripe) by its own default_tax_rates arithmetic."""

from __future__ import annotations

import pytest

from paystream.gateways.base import (
    ArchiveTaxRate,
    AttachPaymentMethod,
    Capability,
    CreateSubscription,
    CreateTaxRate,
    InvoiceStatus,
    TaxRateRef,
)
from paystream.gateways.square.gateway import SQUARE_CAPABILITIES
from paystream.tax import Line, Rate, calculate, parse_percentage
from tests.gateways.harness import Harness, over_gateways
from tests.gateways.test_contract import customer, key, usd

pytestmark = pytest.mark.asyncio
NO_TAX_RATES = "Square has no tax rates (its taxes are catalog objects)"
PADDLE_NO_TAX_RATES = "Paddle computes tax itself: no tax rates"


def _rate(percentage: str = "20", inclusive: bool = False) -> CreateTaxRate:
    return CreateTaxRate(
        display_name="VAT",
        percentage=percentage,
        inclusive=inclusive,
        country="GB",
        tax_type="vat",
        metadata={"paystream": "test"},
    )


async def test_square_offers_no_tax_rates() -> None:
    assert Capability.TAX not in SQUARE_CAPABILITIES


@over_gateways(square_lacks=NO_TAX_RATES, paddle_lacks=PADDLE_NO_TAX_RATES)
async def test_a_tax_rate_is_made_and_archived(harness: Harness) -> None:
    made = await harness.gateway.create_tax_rate(_rate(), idempotency_key=key())
    assert made.provider_tax_rate_id.startswith("txr_") and made.active
    req = ArchiveTaxRate(provider_tax_rate_id=made.provider_tax_rate_id)
    archived = await harness.gateway.archive_tax_rate(req, idempotency_key=key())
    assert archived.provider_tax_rate_id == made.provider_tax_rate_id
    assert not archived.active


@over_gateways(square_lacks=NO_TAX_RATES, paddle_lacks=PADDLE_NO_TAX_RATES)
async def test_a_tax_rate_create_replayed_under_its_key_is_the_same(harness: Harness) -> None:
    k = key()
    first = await harness.gateway.create_tax_rate(_rate("7.25"), idempotency_key=k)
    again = await harness.gateway.create_tax_rate(_rate("7.25"), idempotency_key=k)
    assert again.provider_tax_rate_id == first.provider_tax_rate_id


async def _taxed_subscription(h: Harness, amount: int, rates: list[tuple[str, bool]]) -> tuple:
    refs = []
    for percentage, inclusive in rates:
        made = await h.gateway.create_tax_rate(_rate(percentage, inclusive), idempotency_key=key())
        refs.append(
            TaxRateRef(
                provider_tax_rate_id=made.provider_tax_rate_id,
                percentage=percentage,
                inclusive=inclusive,
            )
        )
    cus = await customer(h)
    pm = await h.gateway.attach_payment_method(
        AttachPaymentMethod(provider_customer_id=cus, token=await h.token("pm_card_visa")),
        idempotency_key=key(),
    )
    req = CreateSubscription(
        provider_customer_id=cus,
        provider_payment_method_id=pm.provider_payment_method_id,
        amount=usd(amount),
        interval="month",
        tax_rates=tuple(refs),
    )
    sub = await h.gateway.create_subscription(req, idempotency_key=key())
    ours = calculate(
        [
            Line(
                amount,
                1,
                [Rate(f"r{i}", parse_percentage(p), inc) for i, (p, inc) in enumerate(rates)],
            )
        ]
    )
    return sub, ours


@over_gateways(square_lacks=NO_TAX_RATES, paddle_lacks=PADDLE_NO_TAX_RATES)
@pytest.mark.parametrize(
    ("amount", "rates"),
    [
        (1999, [("20", False)]),  # 399.8 -> 400
        (1000, [("6.25", False), ("1.5", False)]),  # a state and a county rate
        (1234, [("8.875", False)]),  # 109.5175 -> 110
    ],
)
async def test_an_exclusive_rate_taxes_the_invoice_as_paystream_computes_it(
    harness: Harness, amount: int, rates: list[tuple[str, bool]]
) -> None:
    sub, ours = await _taxed_subscription(harness, amount, rates)
    (invoice,) = sub.invoices
    assert invoice.status is InvoiceStatus.PAID
    assert invoice.amount == usd(ours.amount_total)
    assert (invoice.subtotal, invoice.tax) == (ours.amount_subtotal, ours.amount_tax)


@over_gateways(
    localstripe_gap="an inclusive TaxRate's tax is added on top of the price (Stripe: "
    "contained in it), computed as amount * p / 100",
    square_lacks=NO_TAX_RATES,
    paddle_lacks=PADDLE_NO_TAX_RATES,
)
async def test_an_inclusive_rate_is_contained_in_the_invoice(harness: Harness) -> None:
    sub, ours = await _taxed_subscription(harness, 1200, [("20", True)])
    (invoice,) = sub.invoices
    assert invoice.amount == usd(1200) and ours.amount_total == 1200
    assert invoice.tax == ours.amount_tax == 200
