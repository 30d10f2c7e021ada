"""Tax collected by a tenant in a period, per currency and per tax rate, from the ledger's
rows (migration 0015), read under the tenant's row-level security.

What is counted (README "Tax"):

* a payment that named a tax calculation (``amount_tax``), created in the period, for
  what of it was captured and not refunded. Its ``amount_tax`` is the tax of what it
  captured (the worker pro-rates it at a partial capture: review h74h), so it counts
  ``amount_tax`` times (captured - refunded) / captured, rounded half up once (so a
  payment not refunded counts its ``amount_tax``, as the dashboard's ``tax_collected``
  does); per rate, that share split in proportion to its calculation's ``tax_by_rate``
  (where the payment's tax is its calculation's, pro-rated to the capture) by largest
  remainder (paystream.tax's), so the rates sum to it (review h74q: each rate's share
  rounded on its own could leave the total a unit off per payment) (a refund records no
  tax of its own: this is the proportional reversal);
* a subscription's invoice that was paid, created in the period: its ``tax``, split over
  its subscription's rates as paystream.tax splits one line of its ``subtotal`` in its
  currency (the invoice's own arithmetic: a three-decimal currency's tax in tens); where
  that does not give the invoice's tax back (a rate changed or missing), the whole tax
  under no rate (``tax_rate_id`` null).

Amounts are integer minor units; the period is ``[start, end)`` on ``created_at``. A
tenant the ledger holds nothing of (no ``tenants`` row: a mistyped id) is refused,
TenantNotInLedgerError, not reported as one that collected no tax.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

from sqlalchemy import exists, select
from sqlalchemy.ext.asyncio import AsyncEngine

from paystream import tax as taxes
from paystream.ledger.errors import TenantNotInLedgerError
from paystream.ledger.models import (
    Invoice,
    Payment,
    Subscription,
    TaxCalculation,
    TaxRate,
    Tenant,
)
from paystream.ledger.session import tenant_session

__all__ = ["tax_report"]


@dataclass
class _Sums:
    payments: int = 0
    invoices: int = 0

    def row(self) -> dict[str, int]:
        return {
            "payments": self.payments,
            "invoices": self.invoices,
            "total": self.payments + self.invoices,
        }


def _share(tax: int, kept: int, amount: int) -> int:
    return taxes.round_half_up(Decimal(tax) * kept / amount) if amount else 0


def _split(total: int, split: dict[str | None, int]) -> dict[str | None, int]:
    """``total`` shared over the rates in proportion to their ``split`` (their exact shares
    rational) by largest remainder, ties to the lower rate id (no rate last); only the
    rates with a share."""
    whole = sum(split.values())
    if total <= 0 or whole <= 0:
        return {}
    order = sorted(split, key=lambda r: (r is None, r or ""))
    shares = taxes.largest_remainder(total, [Fraction(split[r] * total, whole) for r in order])
    return {r: v for r, v in zip(order, shares, strict=True) if v}


def _invoice_split(
    tax: int,
    subtotal: int | None,
    rate_ids: list[Any] | None,
    rates: dict[str, TaxRate],
    currency: str,
) -> dict[str | None, int]:
    if subtotal is None or not rate_ids or not all(isinstance(r, str) for r in rate_ids):
        return {None: tax}
    known = [rates.get(r) for r in rate_ids]
    if any(r is None for r in known):
        return {None: tax}
    calc = taxes.calculate(
        [
            taxes.Line(
                amount=subtotal,
                rates=[
                    taxes.Rate(r.tax_rate_id, taxes.parse_percentage(r.percentage), r.inclusive)
                    for r in known
                    if r is not None
                ],
            )
        ],
        currency,
    )
    split: dict[str | None, int] = {k: v for k, v in calc.tax_by_rate.items()}
    return split if sum(split.values()) == tax else {None: tax}


async def tax_report(
    engine: AsyncEngine, tenant_id: str, start: datetime, end: datetime
) -> dict[str, Any]:
    """The tenant's tax collected in ``[start, end)``: per currency, its payments',
    invoices' and total tax, and the same per tax rate (with the rate's name,
    percentage, inclusive and country). TenantNotInLedgerError when the ledger holds
    nothing of the tenant."""
    by_currency: dict[str, _Sums] = defaultdict(_Sums)
    by_rate: dict[tuple[str, str | None], _Sums] = defaultdict(_Sums)
    async with tenant_session(engine, tenant_id, snapshot=True) as session:
        # The ledger knows a tenant by its row in `tenants` (its first stored event
        # makes it; the registry of record is the tenants topic, which a report from
        # the database alone does not read). Seen under the tenant's own row-level
        # security, as every row read here.
        if not await session.scalar(select(exists().where(Tenant.tenant_id == tenant_id))):
            raise TenantNotInLedgerError(tenant_id)
        rates = {r.tax_rate_id: r for r in await session.scalars(select(TaxRate))}
        payments = (
            await session.execute(
                select(Payment, TaxCalculation)
                .outerjoin(
                    TaxCalculation,
                    TaxCalculation.tax_calculation_id == Payment.tax_calculation_id,
                )
                .where(
                    Payment.amount_tax.is_not(None),
                    Payment.created_at >= start,
                    Payment.created_at < end,
                )
                .order_by(Payment.payment_id)
            )
        ).tuples()
        for payment, calc in payments:
            tax, amount = int(payment.amount_tax or 0), int(payment.amount)
            captured = int(payment.amount_captured)
            kept = max(captured - int(payment.amount_refunded), 0)
            # (amount_tax: the tax of what was captured, so reversed over the capture)
            split: dict[str | None, int] = {None: tax}
            if calc is not None:
                whole = int(calc.amount_tax)
                if (
                    sum(int(v) for v in calc.tax_by_rate.values()) == whole
                    and _share(whole, captured, amount) == tax
                ):
                    # Its calculation's tax, pro-rated to the capture: shared by the
                    # calculation's rates.
                    split = {str(k): int(v) for k, v in calc.tax_by_rate.items()}
            # The kept share of its whole tax, rounded once, then split over its rates
            # (nothing captured, or all of it refunded: none).
            for rate_id, share in _split(_share(tax, kept, captured), split).items():
                by_rate[(payment.currency, rate_id)].payments += share
                by_currency[payment.currency].payments += share
        invoices = (
            await session.execute(
                select(Invoice, Subscription.tax_rate_ids)
                .outerjoin(Subscription, Subscription.subscription_id == Invoice.subscription_id)
                .where(
                    Invoice.status == "paid",
                    Invoice.tax.is_not(None),
                    Invoice.created_at >= start,
                    Invoice.created_at < end,
                )
                .order_by(Invoice.invoice_id)
            )
        ).tuples()
        for invoice, rate_ids in invoices:
            tax = int(invoice.tax or 0)
            split = _invoice_split(tax, invoice.subtotal, rate_ids, rates, invoice.currency)
            for rate_id, rate_tax in split.items():
                by_rate[(invoice.currency, rate_id)].invoices += rate_tax
                by_currency[invoice.currency].invoices += rate_tax

    def rate_row(currency: str, rate_id: str | None) -> dict[str, Any]:
        rate = rates.get(rate_id) if rate_id is not None else None
        return {
            "tax_rate_id": rate_id,
            "display_name": rate.display_name if rate else None,
            "percentage": rate.percentage if rate else None,
            "inclusive": rate.inclusive if rate else None,
            "country": rate.country if rate else None,
            **by_rate[(currency, rate_id)].row(),
        }

    return {
        "tenant_id": tenant_id,
        "from": start.isoformat(),
        "to": end.isoformat(),
        "currencies": {
            currency: {
                **sums.row(),
                "by_rate": [
                    rate_row(currency, rate_id)
                    for rate_id in sorted(
                        {r for (c, r) in by_rate if c == currency}, key=lambda r: (r is None, r)
                    )
                ],
            }
            for currency, sums in sorted(by_currency.items())
        },
    }
