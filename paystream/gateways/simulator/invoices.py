"""The simulator's one-off invoices, as Stripe Invoicing's: a draft of line items to a
customer, finalized (open: its total fixed, a sent one's due date counted), charged off
session to a saved card of the customer's (a decline leaves it open, the card's error
answered and kept under the call's key), voided, or written off (uncollectible: still
payable or voidable, as Stripe's). Its card behaviours are Stripe's test
cards', as a subscription's renewals are."""

from __future__ import annotations

from typing import Any

from paystream.gateways.base import (
    CreateInvoice,
    FinalizeInvoice,
    MarkInvoiceUncollectible,
    PayInvoice,
    RetrieveInvoice,
    UpdateInvoice,
    VoidInvoice,
    merged_metadata,
)
from paystream.gateways.errors import ErrorCode
from paystream.gateways.simulator import operations as ops
from paystream.gateways.simulator import results
from paystream.gateways.simulator.cards import Behaviour, card_for_token
from paystream.gateways.simulator.store import Effect, Tx
from paystream.gateways.stripe_rules import (
    MINIMUM_CHARGE,
    payment_parameters_problem,
    withdrawn_currency_problem,
)
from paystream.money import Money
from paystream.tax import Line, Rate, calculate, parse_percentage

__all__ = [
    "create_invoice",
    "finalize_invoice",
    "mark_invoice_uncollectible",
    "pay_invoice",
    "retrieve_invoice",
    "update_invoice",
    "void_invoice",
]

_COLLECTIONS = frozenset({"charge_automatically", "send_invoice"})


def _totals(lines: list[dict[str, Any]], rates: list[dict[str, Any]], currency: str) -> Any:
    """The invoice's subtotal, tax and total: every rate on every line (Stripe's
    default_tax_rates), each tax to the currency's chargeable increment."""
    applied = [
        Rate(r["id"], parse_percentage(r["percentage"]), bool(r["inclusive"])) for r in rates
    ]
    return calculate(
        [Line(line["unit_amount"], line["quantity"], applied) for line in lines], currency
    )


async def _attached_method(tx: Tx, pm_id: str, customer: str) -> dict[str, Any]:
    pm = await ops._must(tx, pm_id, "payment_method")
    if pm["customer"] is None:
        raise ops._refuse(ErrorCode.INVALID_STATE, "a detached payment method cannot be used")
    if pm["customer"] != customer:
        raise ops._refuse(
            ErrorCode.INVALID_REQUEST, "the payment method belongs to another customer"
        )
    return pm


async def create_invoice(tx: Tx, req: CreateInvoice, key: str) -> dict[str, Any]:
    if not req.lines:
        raise ops._invalid("an invoice has at least one line item")
    if any(line.unit_amount < 1 or line.quantity < 1 for line in req.lines):
        raise ops._invalid("a line item's unit amount and quantity are at least 1")
    if req.collection_method not in _COLLECTIONS:
        raise ops._invalid(f"collection_method must be one of {sorted(_COLLECTIONS)}")
    if (req.collection_method == "send_invoice") != (req.days_until_due is not None):
        raise ops._invalid("days_until_due is given for collection_method send_invoice only")
    currency = req.currency.upper()
    problem = withdrawn_currency_problem(
        Money(amount=1, currency=currency)
    ) or payment_parameters_problem(None, None, req.metadata)
    if problem is not None:
        raise ops._invalid(problem)
    if len({r.provider_tax_rate_id for r in req.tax_rates}) != len(req.tax_rates):
        raise ops._invalid("a tax rate is applied once")
    await ops._must(tx, req.provider_customer_id, "customer")
    if req.provider_payment_method_id is not None:
        await _attached_method(tx, req.provider_payment_method_id, req.provider_customer_id)
    rates = []
    for ref in req.tax_rates:
        txr = await ops._must(tx, ref.provider_tax_rate_id, "tax_rate")
        if not txr["active"]:
            raise ops._refuse(ErrorCode.INVALID_STATE, f"tax rate {txr['id']} is archived")
        rates.append(
            {"id": txr["id"], "percentage": txr["percentage"], "inclusive": txr["inclusive"]}
        )
    lines = [line.model_dump() for line in req.lines]
    calc = _totals(lines, rates, currency)
    ops._check_amount(Money(amount=calc.amount_total, currency=currency))
    invoice: dict[str, Any] = {
        "object": "invoice",
        "id": ops._new_id("in"),
        "one_off": True,
        "customer": req.provider_customer_id,
        "status": "draft",
        "currency": currency,
        "lines": lines,
        "tax_rates": rates,
        "amount": calc.amount_total,
        "collection_method": req.collection_method,
        "days_until_due": req.days_until_due,
        "due_date": None,
        "payment_method": req.provider_payment_method_id,
        "payment_intent": None,
        "failure_code": None,
        "failure_message": None,
        "period_start": None,
        "period_end": None,
        "description": req.description or None,  # ("": none, as Stripe holds it)
        "metadata": dict(req.metadata),
        "created": await ops.clock_now(tx),
    }
    if rates:
        invoice.update(subtotal=calc.amount_subtotal, tax=calc.amount_tax, total=calc.amount_total)
    tx.put(invoice)
    tx.effect(Effect.of("invoice.created", key, invoice["id"]))
    return {"ok": results.invoice(invoice)}


async def update_invoice(tx: Tx, req: UpdateInvoice, key: str) -> dict[str, Any]:
    """A draft changed, as Stripe's invoice update and invoice items: its lines replaced
    whole (its total worked out again, with its tax rates), its description, a sent
    one's days_until_due, its metadata merged. One transaction: the lines are never
    half replaced, and the key's answer replays it (one effect per key)."""
    invoice = await ops._must(tx, req.provider_invoice_id, "invoice")
    if invoice["status"] != "draft":
        raise ops._refuse(
            ErrorCode.INVALID_STATE,
            f"cannot update an invoice that is {invoice['status']}: only a draft's lines "
            "and fields may change",
        )
    if req.days_until_due is not None and invoice["collection_method"] != "send_invoice":
        raise ops._invalid("days_until_due is for collection_method send_invoice only")
    metadata = merged_metadata(dict(invoice["metadata"]), req.metadata)
    problem = payment_parameters_problem(None, None, metadata)
    if problem is not None:
        raise ops._invalid(problem)
    changed = {**invoice, "metadata": metadata}
    if req.description is not None:
        changed["description"] = req.description or None  # ("" clears it, as Stripe's)
    if req.days_until_due is not None:
        changed["days_until_due"] = req.days_until_due
    if req.lines is not None:
        if not req.lines:
            raise ops._invalid("an invoice has at least one line item")
        if any(line.unit_amount < 1 or line.quantity < 1 for line in req.lines):
            raise ops._invalid("a line item's unit amount and quantity are at least 1")
        lines = [line.model_dump() for line in req.lines]
        calc = _totals(lines, invoice["tax_rates"], invoice["currency"])
        ops._check_amount(Money(amount=calc.amount_total, currency=invoice["currency"]))
        changed.update(lines=lines, amount=calc.amount_total)
        if invoice["tax_rates"]:
            changed.update(
                subtotal=calc.amount_subtotal, tax=calc.amount_tax, total=calc.amount_total
            )
    tx.put(changed)
    tx.effect(Effect.of("invoice.updated", key, changed["id"]))
    return {"ok": results.invoice(changed)}


def _finalized(invoice: dict[str, Any], now: int) -> dict[str, Any]:
    due = None
    if invoice.get("days_until_due"):
        due = now + int(invoice["days_until_due"]) * ops._DAY
    return {**invoice, "status": "open", "due_date": due}


async def _credited(tx: Tx, invoice: dict[str, Any]) -> dict[str, Any]:
    """A one-off invoice as it is finalized, its customer's balance in its currency
    (``credit_customer``; a credit positive, a debit negative) applied to what it charges,
    as Stripe applies a customer's invoice balance at finalization ("credits reduce the
    amount due, while debits increase it"): its ``amount`` due lowered (or raised) by it,
    recorded as ``credit_applied`` (given back if it is voided, ``void_invoice``). It is
    ``paid`` at once, charging nothing, when nothing is left due (Stripe marks an invoice
    whose amount due is 0 paid when it is finalized), or when what is left is under its
    currency's minimum charge: then that is added to the customer's balance as a debit
    for their next invoice, ``carried`` (Stripe: "If the amount due for the invoice is
    less than Stripe's minimum allowed charge per currency, the invoice is automatically
    marked paid, and we add the amount due to the customer's credit balance which is
    applied to the next invoice"; review h79r_c F3)."""
    customer = await tx.get(invoice["customer"])
    if customer is None or customer.get("deleted"):
        return invoice  # (no balance to apply: finalized as before credit was modelled)
    currency = invoice["currency"]
    balance = dict(customer.get("credit") or {})
    held = int(balance.get(currency, 0))
    applied = min(held, int(invoice["amount"]))  # (a debit, negative, applied whole)
    due = int(invoice["amount"]) - applied
    minimum = MINIMUM_CHARGE.get(currency)
    carried = due if minimum is not None and 0 < due < minimum else 0
    if not applied and not carried:
        return invoice
    balance[currency] = held - applied - carried
    tx.put({**customer, "credit": balance})
    credited = {**invoice, "amount": due - carried, "credit_applied": applied}
    if carried:
        credited["carried"] = carried
    if due == carried:
        credited["status"] = "paid"
    return credited


async def credit_customer(tx: Tx, customer_id: str, amount: int, currency: str) -> dict[str, Any]:
    """Provider-side (the seller's dashboard, as Stripe's customer balance adjustments):
    ``amount`` of credit in ``currency`` on the customer's balance, applied to their
    one-off invoices as they are finalized (``_credited``)."""
    if amount < 1:
        raise ops._invalid("a credit is at least 1")
    customer = await ops._must(tx, customer_id, "customer")
    credit = dict(customer.get("credit") or {})
    code = currency.upper()
    credit[code] = int(credit.get(code, 0)) + amount
    customer = {**customer, "credit": credit}
    tx.put(customer)
    return {"ok": results.customer(customer)}


async def finalize_invoice(tx: Tx, req: FinalizeInvoice, key: str) -> dict[str, Any]:
    invoice = await ops._must(tx, req.provider_invoice_id, "invoice")
    if invoice["status"] != "draft":
        raise ops._refuse(
            ErrorCode.INVALID_STATE, f"this invoice is already finalized ({invoice['status']})"
        )
    invoice = await _credited(tx, _finalized(invoice, await ops.clock_now(tx)))
    tx.put(invoice)
    tx.effect(Effect.of("invoice.finalized", key, invoice["id"]))
    if invoice["status"] == "paid":
        # Paid as it was finalized (its customer's balance left nothing to charge): the
        # payment effect it is, as a pay of a draft so paid records it, after the
        # finalize (kept: a reader counting finalizes still finds one; review h79r_c F8).
        tx.effect(Effect.of("invoice.paid", key, invoice["id"]))
    return {"ok": results.invoice(invoice)}


async def pay_invoice(tx: Tx, req: PayInvoice, key: str) -> dict[str, Any]:
    """Charge the invoice's amount off session (as Stripe's pay: a draft is finalized
    first). A card that declines, or asks for 3-D Secure (off session: it cannot be
    asked), leaves the invoice open with the failure, and answers the card's error."""
    invoice = await ops._must(tx, req.provider_invoice_id, "invoice")
    if invoice["status"] == "paid":
        raise ops._refuse(ErrorCode.INVALID_STATE, "invoice is already paid")
    if invoice["status"] not in ("draft", "open", "uncollectible"):
        raise ops._refuse(
            ErrorCode.INVALID_STATE, f"cannot pay an invoice that is {invoice['status']}"
        )
    now = await ops.clock_now(tx)
    if invoice["status"] == "draft":
        invoice = await _credited(tx, _finalized(invoice, now))
        if invoice["status"] == "paid":  # (its credit covered it: nothing to charge)
            tx.put(invoice)
            tx.effect(Effect.of("invoice.paid", key, invoice["id"]))
            return {"ok": results.invoice(invoice)}
    pm_id = req.provider_payment_method_id or invoice.get("payment_method")
    if pm_id is None:
        raise ops._refuse(ErrorCode.INVALID_REQUEST, "the invoice has no payment method to charge")
    pm = await _attached_method(tx, pm_id, invoice["customer"])
    card = card_for_token(pm["card"])
    amount, currency = invoice["amount"], invoice["currency"]
    pi: dict[str, Any] = {
        "object": "payment_intent",
        "id": ops._new_id("pi"),
        "status": ops._SUCCEEDED,
        "amount": amount,
        "currency": currency,
        "amount_captured": amount,
        "amount_refunded": 0,
        "customer": invoice["customer"],
        "card": pm["card"],
        "capture_method": ops._AUTOMATIC,
        "charge_id": ops._new_id("ch"),
        "failure_code": None,
        "failure_message": None,
        "next_action": None,
        "dispute_id": None,
    }
    if card is None or card.behaviour in (Behaviour.DECLINE, Behaviour.REQUIRE_ACTION):
        error = ErrorCode.AUTHENTICATION_REQUIRED
        code, decline = "authentication_required", None
        message = "The payment needs the customer's authentication (off-session)."
        if card is not None and card.behaviour is Behaviour.DECLINE:
            error = card.error or ErrorCode.CARD_DECLINED
            code = card.decline_code or card.stripe_code or "card_declined"
            decline, message = card.decline_code, card.message
        pi.update(
            status=ops._FAILED,
            amount_captured=0,
            charge_id=None,
            failure_code=code,
            failure_message=message,
        )
        tx.put(pi)
        tx.put(
            {
                **invoice,
                "payment_intent": pi["id"],
                "failure_code": code,
                "failure_message": message,
            }
        )
        return {
            "error": {
                "code": error.value,
                "message": message,
                "decline_code": decline,
                "http_status": 402,
                "provider_payment_id": pi["id"],
            }
        }
    tx.put(pi)
    paid = {
        **invoice,
        "status": "paid",
        "payment_intent": pi["id"],
        "payment_method": pm_id,
        "failure_code": None,
        "failure_message": None,
    }
    tx.put(paid)
    tx.effect(Effect.of("charge", key, pi["id"], amount, currency))
    tx.settle_later(currency, amount)
    return {"ok": results.invoice(paid)}


async def void_invoice(tx: Tx, req: VoidInvoice, key: str) -> dict[str, Any]:
    invoice = await ops._must(tx, req.provider_invoice_id, "invoice")
    if invoice["status"] == "void":
        return {"ok": results.invoice(invoice)}  # (as Stripe's gateway reads one back)
    if invoice["status"] not in ("draft", "open", "uncollectible"):
        raise ops._refuse(
            ErrorCode.INVALID_STATE, f"cannot void an invoice that is {invoice['status']}"
        )
    invoice = {**invoice, "status": "void"}
    await _balance_given_back(tx, invoice)
    tx.put(invoice)
    tx.effect(Effect.of("invoice.voided", key, invoice["id"]))
    return {"ok": results.invoice(invoice)}


async def mark_invoice_uncollectible(
    tx: Tx, req: MarkInvoiceUncollectible, key: str
) -> dict[str, Any]:
    """An open invoice written off, as Stripe's mark_uncollectible: only an open one (a
    draft, paid or void one is refused); it may still be paid or voided. Nothing moves
    on the customer's balance (Stripe gives it back only on a void)."""
    invoice = await ops._must(tx, req.provider_invoice_id, "invoice")
    if invoice["status"] == "uncollectible":
        return {"ok": results.invoice(invoice)}  # (as Stripe's gateway reads one back)
    if invoice["status"] != "open":
        raise ops._refuse(
            ErrorCode.INVALID_STATE,
            f"cannot mark an invoice that is {invoice['status']} uncollectible",
        )
    invoice = {**invoice, "status": "uncollectible"}
    tx.put(invoice)
    tx.effect(Effect.of("invoice.marked_uncollectible", key, invoice["id"]))
    return {"ok": results.invoice(invoice)}


async def _balance_given_back(tx: Tx, invoice: dict[str, Any]) -> None:
    """The customer balance finalizing applied to a voided invoice, given back to its
    customer: Stripe returns a balance applied to an invoice when it is voided, a credit
    credited back and a debit debited back (API changelog 2019-12-03, "Customer balances
    are now returned when voiding invoices"; review h79r_c F4). A deleted customer's
    balance is gone with them."""
    applied = int(invoice.pop("credit_applied", 0) or 0)
    if not applied:
        return
    customer = await tx.get(invoice["customer"])
    if customer is None or customer.get("deleted"):
        return
    balance = dict(customer.get("credit") or {})
    balance[invoice["currency"]] = int(balance.get(invoice["currency"], 0)) + applied
    tx.put({**customer, "credit": balance})
    invoice["credit_returned"] = applied


async def customer_credit(tx: Tx, customer_id: str, currency: str) -> dict[str, Any]:
    """Provider-side (the seller's dashboard): the customer's balance in ``currency``, a
    credit positive, a debit (an invoice under the minimum charge carried) negative."""
    customer = await ops._must(tx, customer_id, "customer")
    return {"ok": {"credit": int(dict(customer.get("credit") or {}).get(currency.upper(), 0))}}


async def retrieve_invoice(tx: Tx, req: RetrieveInvoice) -> dict[str, Any]:
    return {"ok": results.invoice(await ops._must(tx, req.provider_invoice_id, "invoice"))}
