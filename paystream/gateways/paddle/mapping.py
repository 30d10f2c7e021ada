"""Paddle API entities → provider-neutral results (Paddle's statuses folded onto ours).

Transaction (https://developer.paddle.com/api-reference/transactions): status ``draft``
(no customer or address yet), ``ready``, ``billed`` (an issued invoice), ``paid`` (paid,
being processed), ``completed``, ``canceled``, ``past_due``; ``payments[]`` its payment
attempts, newest first (status ``captured``, ``error`` with an ``error_code``, ...);
``details.totals`` its amounts, strings of minor units. Adjustment (a refund): status
``pending_approval``, ``approved``, ``rejected``, ``reversed``. Customer: ``active`` or
``archived``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from paystream.gateways.base import (
    CustomerDetails,
    CustomerResult,
    PaymentResult,
    PaymentStatus,
    RefundResult,
    RefundStatus,
)
from paystream.gateways.paddle.errors import unreadable
from paystream.money import Money

__all__ = [
    "PARAMS_KEY",
    "REQUEST_KEY",
    "adjustment_money",
    "amount",
    "checkout_action",
    "customer",
    "customer_details",
    "own_metadata",
    "payment",
    "payment_status",
    "refund",
    "refund_status",
    "refunded",
    "transaction_asked",
    "transaction_money",
]

# The custom_data keys paystream keeps on what it makes at Paddle: the request that made
# it (a tag of its idempotency key: Paddle keeps no keys, so a create sent again finds
# it by this), and a digest of that request's parameters (another request under the same
# key is refused, as a provider's idempotency check refuses one).
REQUEST_KEY = "paystream_request"
PARAMS_KEY = "paystream_request_params"
_RESERVED = frozenset({REQUEST_KEY, PARAMS_KEY})

_OPEN = frozenset({"draft", "ready", "billed"})
_FAILED_ATTEMPTS = frozenset({"error", "canceled"})
_REFUND_STATUS = {
    "pending_approval": RefundStatus.PENDING,
    "approved": RefundStatus.SUCCEEDED,
    "rejected": RefundStatus.FAILED,
    # A refund Paddle approved, then reversed (its money back with the seller).
    "reversed": RefundStatus.FAILED,
}
_KNOWN_STATUSES = _OPEN | {"paid", "completed", "canceled", "past_due"}


def amount(value: Any) -> int:
    """A Paddle amount (a string of minor units) as an int; unreadable otherwise."""
    if isinstance(value, str) and value.isdigit() and len(value) <= 18:
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise unreadable("an amount that is not a string of digits")


def own_metadata(custom_data: Any) -> dict[str, str]:
    """paystream's metadata in a custom_data object (its own keys left out; values that
    are not strings, set in Paddle's dashboard or by another integration, too)."""
    if not isinstance(custom_data, Mapping):
        return {}
    return {str(k): v for k, v in custom_data.items() if k not in _RESERVED and isinstance(v, str)}


def customer(obj: Mapping[str, Any]) -> CustomerResult:
    return CustomerResult(provider_customer_id=str(obj["id"]))


def customer_details(obj: Mapping[str, Any]) -> CustomerDetails:
    return CustomerDetails(
        provider_customer_id=str(obj["id"]),
        email=obj.get("email"),
        name=obj.get("name"),
        metadata=own_metadata(obj.get("custom_data")),
    )


def _totals(txn: Mapping[str, Any]) -> Mapping[str, Any]:
    details = txn.get("details")
    totals = details.get("totals") if isinstance(details, Mapping) else None
    if not isinstance(totals, Mapping):
        raise unreadable("a transaction without details.totals")
    return totals


def transaction_money(txn: Mapping[str, Any]) -> tuple[int, str]:
    """(amount in minor units, currency) a transaction reports: its grand total, what
    its customer pays (Paddle's lowest denomination: cents, or yen for JPY, as
    paystream's minor units)."""
    totals = _totals(txn)
    total = amount(totals.get("grand_total") or totals.get("total"))
    return total, str(txn.get("currency_code") or totals.get("currency_code"))


def transaction_asked(txn: Mapping[str, Any]) -> tuple[int, str]:
    """(amount, currency) the transaction's items ask: what paystream's create priced
    them at (one non-catalog item, quantity 1, its unit price the command's amount)."""
    items = txn.get("items")
    if not isinstance(items, list) or not items:
        raise unreadable("a transaction without items")
    total, currencies = 0, set()
    for item in items:
        price = item.get("price") if isinstance(item, Mapping) else None
        unit = price.get("unit_price") if isinstance(price, Mapping) else None
        quantity = item.get("quantity", 1) if isinstance(item, Mapping) else None
        if not isinstance(unit, Mapping) or not isinstance(quantity, int) or quantity < 1:
            raise unreadable("a transaction item without a unit price and quantity")
        total += amount(unit.get("amount")) * quantity
        currencies.add(str(unit.get("currency_code")))
    return total, currencies.pop() if len(currencies) == 1 else "/".join(sorted(currencies))


def adjustment_money(adj: Mapping[str, Any]) -> tuple[int, str]:
    """(amount in minor units, currency) an adjustment (a refund) reports."""
    totals = adj.get("totals")
    if not isinstance(totals, Mapping):
        raise unreadable("an adjustment without totals")
    currency = str(adj.get("currency_code") or totals.get("currency_code"))
    return amount(totals.get("total")), currency


def payment_status(txn: Mapping[str, Any]) -> PaymentStatus | None:
    """paystream's status for a transaction; None for one this version does not know."""
    status = txn.get("status")
    if status not in _KNOWN_STATUSES:
        return None
    if status in ("completed", "paid"):
        return PaymentStatus.SUCCEEDED
    if status == "canceled":
        return PaymentStatus.CANCELED
    if status == "past_due":
        return PaymentStatus.FAILED
    latest = _latest_attempt(txn)
    if latest is not None and latest.get("status") in _FAILED_ATTEMPTS:
        # The customer's card failed at checkout: failed, as a Stripe PaymentIntent back
        # at requires_payment_method is; still payable at checkout with another card.
        return PaymentStatus.FAILED
    return PaymentStatus.REQUIRES_ACTION


def _latest_attempt(txn: Mapping[str, Any]) -> Mapping[str, Any] | None:
    attempts = txn.get("payments")
    if isinstance(attempts, list) and attempts and isinstance(attempts[0], Mapping):
        return attempts[0]  # (Paddle lists them newest first)
    return None


def checkout_action(txn: Mapping[str, Any]) -> dict[str, Any]:
    """The next action of a transaction its customer pays at Paddle Checkout: the
    seller's payment link with the transaction (``?_ptxn=``), or Paddle.js opened with
    the transaction id."""
    checkout = txn.get("checkout")
    url = checkout.get("url") if isinstance(checkout, Mapping) else None
    return {
        "type": "redirect_to_url",
        "redirect_to_url": {"url": url, "return_url": None},
        "paddle_transaction_id": str(txn["id"]),
    }


def payment(txn: Mapping[str, Any], refunded_amount: int = 0) -> PaymentResult:
    """The transaction as a payment; ``refunded_amount``: its approved refunds' total."""
    status = payment_status(txn)
    if status is None:
        raise unreadable(f"transaction status {str(txn.get('status'))[:32]!r}")
    total, currency = transaction_money(txn)
    captured = total if status is PaymentStatus.SUCCEEDED else 0
    latest = _latest_attempt(txn)
    failed = latest is not None and latest.get("status") in _FAILED_ATTEMPTS
    code = latest.get("error_code") if latest is not None and failed else None
    next_action = checkout_action(txn) if status is PaymentStatus.REQUIRES_ACTION else None
    return PaymentResult(
        provider_payment_id=str(txn["id"]),
        status=status,
        amount=Money(amount=total, currency=currency),
        amount_captured=captured,
        amount_refunded=min(refunded_amount, captured),
        failure_code=code if isinstance(code, str) else ("failed" if failed else None),
        failure_message=(
            f"the customer's payment at Paddle Checkout failed ({code})" if failed else None
        ),
        next_action=next_action,
        # The latest payment attempt: a new one (another card at checkout) is news.
        provider_charge_id=(
            str(latest["payment_attempt_id"])
            if latest is not None and latest.get("payment_attempt_id")
            else None
        ),
    )


def refund_status(status: Any) -> RefundStatus | None:
    return _REFUND_STATUS.get(status) if isinstance(status, str) else None


def refund(adj: Mapping[str, Any]) -> RefundResult:
    status = refund_status(adj.get("status"))
    if status is None:
        raise unreadable(f"adjustment status {str(adj.get('status'))[:32]!r}")
    total, currency = adjustment_money(adj)
    return RefundResult(
        provider_refund_id=str(adj["id"]),
        provider_payment_id=str(adj.get("transaction_id") or ""),
        status=status,
        amount=Money(amount=total, currency=currency),
        failure_code=str(adj["status"]) if status is RefundStatus.FAILED else None,
    )


def refunded(adjustments: Sequence[Mapping[str, Any]], *, pending_too: bool = False) -> int:
    """What a transaction's refund adjustments took back (approved; ``pending_too``: and
    those awaiting Paddle's approval, which hold their amount)."""
    counted = {"approved", "pending_approval"} if pending_too else {"approved"}
    total = 0
    for adj in adjustments:
        if adj.get("action") == "refund" and adj.get("status") in counted:
            totals = adj.get("totals")
            total += amount(totals.get("total")) if isinstance(totals, Mapping) else 0
    return total
