"""Square API objects → provider-neutral results (Square's statuses folded onto ours).

Payment: https://developer.squareup.com/reference/square/objects/Payment (status
APPROVED, PENDING, COMPLETED, CANCELED, FAILED); PaymentRefund (PENDING, COMPLETED,
REJECTED, FAILED); Dispute (state INQUIRY_EVIDENCE_REQUIRED, INQUIRY_PROCESSING,
INQUIRY_CLOSED, EVIDENCE_REQUIRED, PROCESSING, WON, LOST, ACCEPTED); Card."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from paystream.gateways.base import (
    CustomerDetails,
    CustomerResult,
    DisputeResult,
    DisputeStatus,
    PaymentMethodResult,
    PaymentResult,
    PaymentStatus,
    RefundResult,
    RefundStatus,
)
from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.money import Money

__all__ = [
    "ANSWERABLE_STATES",
    "SUBMITTED_STATES",
    "card",
    "customer",
    "customer_details",
    "customer_params",
    "dispute",
    "dispute_status",
    "evidence_type",
    "payment",
    "payment_status",
    "refund",
    "refund_status",
]

_PAYMENT_STATUS = {
    "APPROVED": PaymentStatus.AUTHORIZED,  # autocomplete false: completed or canceled later
    "PENDING": PaymentStatus.PROCESSING,
    "COMPLETED": PaymentStatus.SUCCEEDED,
    "CANCELED": PaymentStatus.CANCELED,
    "FAILED": PaymentStatus.FAILED,
}

_REFUND_STATUS = {
    "PENDING": RefundStatus.PENDING,
    "COMPLETED": RefundStatus.SUCCEEDED,
    "REJECTED": RefundStatus.FAILED,
    "FAILED": RefundStatus.FAILED,
}

_DISPUTE_STATUS = {
    "INQUIRY_EVIDENCE_REQUIRED": DisputeStatus.NEEDS_RESPONSE,
    "EVIDENCE_REQUIRED": DisputeStatus.NEEDS_RESPONSE,
    "INQUIRY_PROCESSING": DisputeStatus.UNDER_REVIEW,
    "PROCESSING": DisputeStatus.UNDER_REVIEW,
    "WON": DisputeStatus.WON,
    "LOST": DisputeStatus.LOST,
    # The seller accepted it: the money went back to the cardholder.
    "ACCEPTED": DisputeStatus.LOST,
    # An inquiry closed without a chargeback: no money moved (as Stripe's warning_closed).
    "INQUIRY_CLOSED": DisputeStatus.INQUIRY_CLOSED,
}
ANSWERABLE_STATES = frozenset({"INQUIRY_EVIDENCE_REQUIRED", "EVIDENCE_REQUIRED"})
# Evidence submitted (SubmitEvidence moved it here), not decided yet.
SUBMITTED_STATES = frozenset({"INQUIRY_PROCESSING", "PROCESSING"})

# Square's CardBrand → the names the Stripe gateway and the simulator report (Stripe's
# card.brand); any other Square brand lower-cased.
_BRANDS = {
    "AMERICAN_EXPRESS": "amex",
    "DISCOVER_DINERS": "diners",
    "CHINA_UNIONPAY": "unionpay",
    "EFTPOS": "eftpos_au",
    "OTHER_BRAND": "unknown",
}

# Evidence paystream's commands name as Stripe does → Square's DisputeEvidenceType; any
# other field is GENERIC_EVIDENCE (each is sent as text, "<field>: <value>").
_EVIDENCE_TYPES = {
    "access_activity_log": "ONLINE_OR_APP_ACCESS_LOG",
    "billing_address": "CARDHOLDER_INFORMATION",
    "cancellation_policy_disclosure": "CANCELLATION_OR_REFUND_DOCUMENTATION",
    "cancellation_rebuttal": "CANCELLATION_OR_REFUND_DOCUMENTATION",
    "customer_communication": "CARDHOLDER_COMMUNICATION",
    "customer_email_address": "CARDHOLDER_INFORMATION",
    "customer_name": "CARDHOLDER_INFORMATION",
    "duplicate_charge_explanation": "DUPLICATE_CHARGE_DOCUMENTATION",
    "product_description": "PRODUCT_OR_SERVICE_DESCRIPTION",
    "receipt": "RECEIPT",
    "refund_policy_disclosure": "CANCELLATION_OR_REFUND_DOCUMENTATION",
    "refund_refusal_explanation": "CANCELLATION_OR_REFUND_DOCUMENTATION",
    "service_documentation": "SERVICE_RECEIVED_DOCUMENTATION",
    "shipping_documentation": "PROOF_OF_DELIVERY_DOCUMENTATION",
    "shipping_tracking_number": "TRACKING_NUMBER",
    "uncategorized_text": "GENERIC_EVIDENCE",
}


def evidence_type(field: str) -> str:
    return _EVIDENCE_TYPES.get(field, "GENERIC_EVIDENCE")


def _unknown(kind: str, value: Any) -> GatewayError:
    """A status this version does not know, in an answer to a request Square ran: parked
    until a version that knows it (as the Stripe gateway's)."""
    error = GatewayError(
        ErrorCode.PROVIDER_UNAVAILABLE,
        f"unknown Square {kind} status {str(value)[:64]!r}",
        provider="square",
        retryable=True,
    )
    error.unreadable_answer = True
    return error


def _money(obj: Any) -> Money:
    money = obj if isinstance(obj, Mapping) else {}
    return Money(amount=int(money.get("amount") or 0), currency=str(money.get("currency")))


def _minor(obj: Any) -> int:
    return int(obj.get("amount") or 0) if isinstance(obj, Mapping) else 0


def customer_params(email: str | None, name: str | None, description: str | None) -> dict[str, str]:
    """Square's Customer fields for paystream's: the whole name as given_name (Square
    splits names; paystream keeps one), the description as its note."""
    params = {"email_address": email, "given_name": name, "note": description}
    return {k: v for k, v in params.items() if v is not None}


def customer(obj: Mapping[str, Any]) -> CustomerResult:
    return CustomerResult(provider_customer_id=str(obj["id"]))


def customer_details(obj: Mapping[str, Any]) -> CustomerDetails:
    names = [obj.get("given_name"), obj.get("family_name")]
    name = " ".join(n for n in names if isinstance(n, str) and n) or None
    return CustomerDetails(
        provider_customer_id=str(obj["id"]),
        email=obj.get("email_address"),
        name=name,
        description=obj.get("note"),
    )


def card(obj: Mapping[str, Any]) -> PaymentMethodResult:
    brand = obj.get("card_brand")
    enabled = obj.get("enabled") is not False
    return PaymentMethodResult(
        provider_payment_method_id=str(obj["id"]),
        # A disabled card is no longer the customer's to pay with: detached, as Stripe's.
        provider_customer_id=obj.get("customer_id") if enabled else None,
        brand=_BRANDS.get(brand, brand.lower()) if isinstance(brand, str) else None,
        last4=obj.get("last_4"),
        exp_month=obj.get("exp_month"),
        exp_year=obj.get("exp_year"),
        fingerprint=obj.get("fingerprint"),
    )


def payment(obj: Mapping[str, Any]) -> PaymentResult:
    status = _PAYMENT_STATUS.get(str(obj.get("status")))
    if status is None:
        raise _unknown("payment", obj.get("status"))
    amount = _money(obj.get("amount_money"))
    captured = amount.amount if status is PaymentStatus.SUCCEEDED else 0
    details = obj.get("card_details")
    errors = details.get("errors") if isinstance(details, Mapping) else None
    first = errors[0] if isinstance(errors, list) and errors else {}
    code = first.get("code") if isinstance(first, Mapping) else None
    return PaymentResult(
        provider_payment_id=str(obj["id"]),
        status=status,
        amount=amount,
        amount_captured=captured,
        amount_refunded=min(_minor(obj.get("refunded_money")), captured),
        failure_code=code.lower() if isinstance(code, str) else None,
        failure_message=first.get("detail") if isinstance(first, Mapping) else None,
        # Square's payment is its charge: there is no other object to name.
        provider_charge_id=str(obj["id"]),
    )


def refund(obj: Mapping[str, Any]) -> RefundResult:
    status = _REFUND_STATUS.get(str(obj.get("status")))
    if status is None:
        raise _unknown("refund", obj.get("status"))
    return RefundResult(
        provider_refund_id=str(obj["id"]),
        provider_payment_id=str(obj.get("payment_id") or ""),
        status=status,
        amount=_money(obj.get("amount_money")),
        failure_code=str(obj["status"]).lower() if status is RefundStatus.FAILED else None,
    )


def payment_status(status: Any) -> PaymentStatus | None:
    """paystream's status for a Square payment status; None for one this version does not know."""
    return _PAYMENT_STATUS.get(status) if isinstance(status, str) else None


def refund_status(status: Any) -> RefundStatus | None:
    """paystream's status for a Square refund status; None for one this version does not know."""
    return _REFUND_STATUS.get(status) if isinstance(status, str) else None


def dispute_status(state: Any) -> DisputeStatus | None:
    return _DISPUTE_STATUS.get(state) if isinstance(state, str) else None


def dispute(obj: Mapping[str, Any]) -> DisputeResult:
    status = dispute_status(obj.get("state"))
    if status is None:
        raise _unknown("dispute", obj.get("state"))
    due: datetime | None = None
    due_at = obj.get("due_at")
    if isinstance(due_at, str) and status is DisputeStatus.NEEDS_RESPONSE:
        try:
            due = datetime.fromisoformat(due_at.replace("Z", "+00:00"))
        except ValueError:
            due = None
    reason = obj.get("reason")
    return DisputeResult(
        provider_dispute_id=str(obj.get("id") or obj.get("dispute_id")),
        status=status,
        amount=_money(obj.get("amount_money")),
        # Square's reason (NO_KNOWLEDGE, NOT_RECEIVED, ...), lower case as Stripe's.
        reason=reason.lower() if isinstance(reason, str) else None,
        evidence_due_by=due,
    )
