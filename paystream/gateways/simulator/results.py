"""Render stored simulator objects as the protocol's result types (as JSON-ready dicts)."""

from __future__ import annotations

from typing import Any

from paystream.gateways.simulator.cards import card_for_token

__all__ = [
    "connected_account",
    "customer",
    "customer_details",
    "dispute",
    "invoice",
    "payment",
    "payment_method",
    "payout",
    "refund",
    "subscription",
    "tax_rate",
    "transfer",
]


# Plain dicts in the result types' JSON shape: the gateway validates each response into
# its result type once, on the way out (SimulatorGateway._run), so building the model
# here too would only validate the same fields twice.


def _money(obj: dict[str, Any], field: str = "amount") -> dict[str, Any]:
    return {"amount": obj[field], "currency": obj["currency"]}


def customer(cus: dict[str, Any]) -> dict[str, Any]:
    return {"provider_customer_id": cus["id"], "deleted": cus["deleted"]}


def customer_details(cus: dict[str, Any]) -> dict[str, Any]:
    return {
        **customer(cus),
        "email": cus.get("email"),
        "name": cus.get("name"),
        "description": cus.get("description"),
        "metadata": cus.get("metadata") or {},
    }


def payment_method(pm: dict[str, Any]) -> dict[str, Any]:
    card = card_for_token(pm["card"])
    assert card is not None
    return {
        "provider_payment_method_id": pm["id"],
        "provider_customer_id": pm["customer"],
        "brand": card.brand,
        "last4": card.last4,
        "exp_month": card.exp_month,
        "exp_year": card.exp_year,
        "fingerprint": card.fingerprint,
    }


def dispute(dp: dict[str, Any]) -> dict[str, Any]:
    return {
        "provider_dispute_id": dp["id"],
        "status": dp["status"],
        "amount": _money(dp),
        # (Disputes opened before the simulator kept these have neither.)
        "reason": dp.get("reason"),
        "evidence_due_by": dp.get("evidence_due_by"),
        # (None for disputes opened before the simulator withdrew a fee)
        "fee": _money(dp, "fee") if "fee" in dp else None,
    }


def payment(pi: dict[str, Any], dp: dict[str, Any] | None) -> dict[str, Any]:
    """``dp``: the dispute the payment names (``pi["dispute_id"]``), read by the caller
    only when there is one (a coroutine per payment here cost more than the rest)."""
    return {
        "provider_payment_id": pi["id"],
        "status": pi["status"],
        "amount": _money(pi),
        "amount_captured": pi["amount_captured"],
        "amount_refunded": pi["amount_refunded"],
        "failure_code": pi["failure_code"],
        "failure_message": pi["failure_message"],
        "next_action": pi["next_action"],
        "provider_charge_id": pi["charge_id"],
        **_disputes(dp),
        # (a destination charge's, as Stripe's PaymentIntent holds it: the fee named,
        # or its capture's)
        "application_fee_amount": pi.get("application_fee_amount"),
    }


def _disputes(dp: dict[str, Any] | None) -> dict[str, Any]:
    """A simulated payment has one dispute at most: the newest, and the only one listed."""
    if dp is None:
        return {"dispute": None}
    mapped = dispute(dp)
    return {"dispute": mapped, "disputes": [mapped]}


def refund(re: dict[str, Any]) -> dict[str, Any]:
    return {
        "provider_refund_id": re["id"],
        "provider_payment_id": re["payment_id"],
        "status": re["status"],
        "amount": _money(re),
        "failure_code": re.get("failure_reason"),
    }


def invoice(inv: dict[str, Any]) -> dict[str, Any]:
    return {
        "provider_invoice_id": inv["id"],
        "status": inv["status"],
        "amount": _money(inv),
        "period_start": inv["period_start"],
        "period_end": inv["period_end"],
        "due_date": inv.get("due_date"),
        "provider_payment_id": inv.get("payment_intent"),
        "failure_code": inv.get("failure_code"),
        "failure_message": inv.get("failure_message"),
        "subtotal": inv.get("subtotal"),
        "tax": inv.get("tax"),
        "total": inv.get("total"),
        "proration_lines": [_proration_line(line) for line in inv.get("proration_lines") or ()],
        "line_items": _draft_lines(inv),
    }


def _draft_lines(inv: dict[str, Any]) -> list[dict[str, Any]] | None:
    """A one-off draft's lines as held (see InvoiceResult.line_items); None otherwise."""
    if not inv.get("one_off") or inv["status"] != "draft":
        return None
    return [
        {k: line[k] for k in ("description", "unit_amount", "quantity")} for line in inv["lines"]
    ]


def _proration_line(line: dict[str, Any]) -> dict[str, Any]:
    return {k: line[k] for k in ("description", "amount", "period_start", "period_end")}


def connected_account(acct: dict[str, Any]) -> dict[str, Any]:
    return {
        "provider_account_id": acct["id"],
        "type": acct["type"],
        "country": acct["country"],
        "charges_enabled": acct["charges_enabled"],
        "payouts_enabled": acct["payouts_enabled"],
        "details_submitted": acct["details_submitted"],
        "currently_due": acct["currently_due"],
        "disabled_reason": acct["disabled_reason"],
    }


def tax_rate(txr: dict[str, Any]) -> dict[str, Any]:
    return {"provider_tax_rate_id": txr["id"], "active": txr["active"]}


def subscription(
    sub: dict[str, Any], period: tuple[int, int], invoices: list[dict[str, Any]]
) -> dict[str, Any]:
    """``period``: its current period (start, end); ``invoices``: newest first."""
    return {
        "provider_subscription_id": sub["id"],
        "status": sub["status"],
        "amount": _money(sub),
        "interval": sub["interval"],
        "interval_count": sub["interval_count"],
        "current_period_start": period[0],
        "current_period_end": period[1],
        "trial_end": sub.get("trial_end"),
        "cancel_at_period_end": sub["cancel_at_period_end"],
        "canceled_at": sub.get("canceled_at"),
        "invoices": [invoice(i) for i in invoices],
        "provider_payment_method_id": sub.get("payment_method"),
        "pending_prorations": [_proration_line(x) for x in sub.get("pending_prorations") or ()],
        "pause_resumes_at": (sub.get("pause") or {}).get("resumes_at"),
    }


def payout(po: dict[str, Any]) -> dict[str, Any]:
    return {
        "provider_payout_id": po["id"],
        "status": po["status"],
        "amount": _money(po),
        "method": po["method"],
        "arrival_date": po["arrival_date"],
        "failure_code": po.get("failure_code"),
        "failure_message": po.get("failure_message"),
    }


def transfer(tr: dict[str, Any]) -> dict[str, Any]:
    return {
        "provider_transfer_id": tr["id"],
        "amount": _money(tr),
        "amount_reversed": tr["amount_reversed"],
        "destination_account": tr["destination"],
        "source_transaction": tr.get("source_transaction"),
        "transfer_group": tr.get("transfer_group"),
    }
