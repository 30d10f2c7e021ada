"""Render stored simulator objects as the protocol's result types (as JSON-ready dicts)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from paystream.gateways.base import (
    CustomerResult,
    DisputeResult,
    PaymentMethodResult,
    PaymentResult,
    RefundResult,
)
from paystream.gateways.simulator.cards import card_for_token
from paystream.money import Money

if TYPE_CHECKING:
    from paystream.gateways.simulator.store import Tx

__all__ = ["customer", "dispute", "payment", "payment_method", "refund"]


def _money(obj: dict[str, Any], field: str = "amount") -> Money:
    return Money(amount=obj[field], currency=obj["currency"])


def customer(cus: dict[str, Any]) -> dict[str, Any]:
    return CustomerResult(provider_customer_id=cus["id"], deleted=cus["deleted"]).model_dump(
        mode="json"
    )


def payment_method(pm: dict[str, Any]) -> dict[str, Any]:
    card = card_for_token(pm["card"])
    assert card is not None
    return PaymentMethodResult(
        provider_payment_method_id=pm["id"],
        provider_customer_id=pm["customer"],
        brand=card.brand,
        last4=card.last4,
        exp_month=card.exp_month,
        exp_year=card.exp_year,
        fingerprint=card.fingerprint,
    ).model_dump(mode="json")


def dispute(dp: dict[str, Any]) -> dict[str, Any]:
    return DisputeResult(
        provider_dispute_id=dp["id"], status=dp["status"], amount=_money(dp)
    ).model_dump(mode="json")


async def payment(tx: Tx, pi: dict[str, Any]) -> dict[str, Any]:
    dp = await tx.get(pi["dispute_id"]) if pi.get("dispute_id") else None
    return PaymentResult(
        provider_payment_id=pi["id"],
        status=pi["status"],
        amount=_money(pi),
        amount_captured=pi["amount_captured"],
        amount_refunded=pi["amount_refunded"],
        failure_code=pi["failure_code"],
        failure_message=pi["failure_message"],
        next_action=pi["next_action"],
        provider_charge_id=pi["charge_id"],
        dispute=None if dp is None else DisputeResult.model_validate(dispute(dp)),
    ).model_dump(mode="json")


def refund(re: dict[str, Any]) -> dict[str, Any]:
    return RefundResult(
        provider_refund_id=re["id"],
        provider_payment_id=re["payment_id"],
        status=re["status"],
        amount=_money(re),
    ).model_dump(mode="json")
