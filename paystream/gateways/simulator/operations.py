"""The simulated provider's object rules (Stripe's), run inside one store transaction.

Each function returns the response to store for its idempotency key: ``{"ok": result}``
or, for outcomes a provider records (card declines), ``{"error": ...}``. As Stripe does,
each first checks its parameters alone (`_invalid`: raised, nothing stored, the key stays
free), then looks objects up; what it refuses from there on (`_refuse`: no such object,
a state that forbids the call, an amount the object cannot take) is the key's answer,
stored and replayed on a retry like any other.
"""

from __future__ import annotations

import os
import random
import re
import time
from collections.abc import Mapping
from typing import Any

from paystream.gateways.base import (
    METADATA_KEYS_MAX,
    PRORATIONS,
    AcceptDispute,
    ArchiveTaxRate,
    AttachPaymentMethod,
    CancelPayment,
    CancelPayout,
    CancelSubscription,
    CaptureMethod,
    CapturePayment,
    ConnectedAccountType,
    CreateAccountLink,
    CreateConnectedAccount,
    CreateCustomer,
    CreatePayment,
    CreatePayout,
    CreateRefund,
    CreateSubscription,
    CreateTaxRate,
    CreateTransfer,
    DeleteCustomer,
    DetachPaymentMethod,
    DisputeStatus,
    PauseSubscription,
    PaymentStatus,
    ResumeSubscription,
    RetrieveBalance,
    RetrieveConnectedAccount,
    RetrieveCustomer,
    RetrievePayment,
    RetrievePayout,
    RetrieveRefund,
    RetrieveSubscription,
    RetrieveTransfer,
    ReverseTransfer,
    SubmitDisputeEvidence,
    UpdateCustomer,
    UpdateSubscription,
    merged_metadata,
)
from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.gateways.simulator import results
from paystream.gateways.simulator.cards import Behaviour, RefundBehaviour, TestCard, card_for_token
from paystream.gateways.simulator.store import PROVIDER, Effect, Refusal, Tx
from paystream.gateways.stripe_rules import (
    ACCOUNT_BUSINESS_TYPES,
    ACCOUNT_CAPABILITIES,
    MINIMUM_CHARGE,
    account_link_url_problem,
    account_takes_charges,
    below_minimum_charge,
    custom_account_capabilities_problem,
    payment_parameters_problem,
    payout_amount_problem,
    payout_descriptor_problem,
    three_decimal_problem,
    withdrawn_currency_problem,
)
from paystream.ids import ID_LENGTH
from paystream.money import CURRENCY_EXPONENTS, MAX_MINOR_AMOUNT, Money, format_minor
from paystream.proration import prorate
from paystream.tax import Line, Rate, calculate, parse_percentage

__all__ = [
    "DISPUTE_EVIDENCE_FIELDS",
    "DISPUTE_EVIDENCE_FILE_FIELDS",
    "DISPUTE_FEES",
    "ONBOARDING_TAGS",
    "accept_dispute",
    "advance_clock",
    "archive_tax_rate",
    "attach_payment_method",
    "cancel_payment",
    "cancel_payout",
    "cancel_subscription",
    "capture_payment",
    "clock_of",
    "complete_authentication",
    "complete_onboarding",
    "create_account_link",
    "create_connected_account",
    "create_customer",
    "create_payment",
    "create_payout",
    "create_refund",
    "create_subscription",
    "create_tax_rate",
    "delete_customer",
    "detach_payment_method",
    "dispute_fee",
    "onboarding_tag",
    "pause_subscription",
    "resolve_dispute",
    "resume_subscription",
    "retrieve_balance",
    "retrieve_connected_account",
    "retrieve_customer",
    "retrieve_payment",
    "retrieve_payout",
    "retrieve_refund",
    "retrieve_subscription",
    "retrieve_transfer",
    "submit_dispute_evidence",
    "update_customer",
    "update_subscription",
]

# Stripe's dispute evidence fields; anything else is rejected as Stripe rejects it.
DISPUTE_EVIDENCE_FIELDS = frozenset(
    {
        "access_activity_log",
        "billing_address",
        "cancellation_policy",
        "cancellation_policy_disclosure",
        "cancellation_rebuttal",
        "customer_communication",
        "customer_email_address",
        "customer_name",
        "customer_purchase_ip",
        "customer_signature",
        "duplicate_charge_documentation",
        "duplicate_charge_explanation",
        "duplicate_charge_id",
        "product_description",
        "receipt",
        "refund_policy",
        "refund_policy_disclosure",
        "refund_refusal_explanation",
        "service_date",
        "service_documentation",
        "shipping_address",
        "shipping_carrier",
        "shipping_date",
        "shipping_documentation",
        "shipping_tracking_number",
        "uncategorized_file",
        "uncategorized_text",
    }
)
# The evidence fields that take a file uploaded to Stripe (its id, `file_...`), not text.
DISPUTE_EVIDENCE_FILE_FIELDS = frozenset(
    {
        "cancellation_policy",
        "customer_communication",
        "customer_signature",
        "duplicate_charge_documentation",
        "receipt",
        "refund_policy",
        "service_documentation",
        "shipping_documentation",
        "uncategorized_file",
    }
)
EVIDENCE_MAX_CHARS = 150_000
_FILE_ID = re.compile(r"file_[A-Za-z0-9]+")

# The enums' values as plain strings, looked up once: stored objects hold the values, and
# an enum member's ``.value`` is a descriptor call each time (several per payment).
_REQUIRES_ACTION: str = PaymentStatus.REQUIRES_ACTION.value
_AUTHORIZED: str = PaymentStatus.AUTHORIZED.value
_SUCCEEDED: str = PaymentStatus.SUCCEEDED.value
_FAILED: str = PaymentStatus.FAILED.value
_CANCELED: str = PaymentStatus.CANCELED.value
_MANUAL: str = CaptureMethod.MANUAL.value
_AUTOMATIC: str = CaptureMethod.AUTOMATIC.value
# Members as globals, for the same reason (a member looked up on its class costs more).
_AUTOMATIC_CAPTURE = CaptureMethod.AUTOMATIC
_MANUAL_CAPTURE = CaptureMethod.MANUAL
_PLAIN_CARD = Behaviour.SUCCEED
_NEEDS_RESPONSE: str = DisputeStatus.NEEDS_RESPONSE.value
# How long a cardholder's dispute leaves the merchant to answer (Stripe's are 7-21 days).
EVIDENCE_WINDOW_SECONDS = 7 * 24 * 3600


# Simulated provider ids need uniqueness, not secrecy: seed once instead of a syscall per id.
_IDS = random.Random(int.from_bytes(os.urandom(16), "big"))


_ID_BITS = ID_LENGTH * 8


# `letters`' table (byte → letter), to translate with directly: `letters` of exactly
# ID_LENGTH bytes is their translation (tests/gateways/simulator/test_fast_paths.py).
_LETTER_OF = bytes(ord("a") + b % 26 for b in range(256))


def _new_id(prefix: str) -> str:
    # What `_IDS.randbytes(ID_LENGTH)` returns (it is written so), one Python call fewer;
    # and their `letters`, translated here, another one fewer.
    drawn = _IDS.getrandbits(_ID_BITS).to_bytes(ID_LENGTH, "little")
    return f"{prefix}_{drawn.translate(_LETTER_OF).decode('ascii')}"


def _invalid(message: str) -> GatewayError:
    """The parameters alone are refused, before anything is looked up: not stored."""
    return GatewayError(ErrorCode.INVALID_REQUEST, message, provider=PROVIDER, http_status=400)


def _refuse(code: ErrorCode, message: str, *, http_status: int = 400) -> Refusal:
    """Refused from what the call found: the key's answer, stored."""
    return Refusal(code, message, http_status=http_status)


async def _must(tx: Tx, object_id: str, kind: str) -> dict[str, Any]:
    obj = await tx.get(object_id)
    if obj is None or obj.get("object") != kind or obj.get("deleted"):
        raise _refuse(ErrorCode.NOT_FOUND, f"no such {kind}: {object_id!r}", http_status=404)
    return obj


# ---- customers ---------------------------------------------------------------------


async def create_customer(tx: Tx, req: CreateCustomer, key: str) -> dict[str, Any]:
    cus = {"object": "customer", "id": _new_id("cus"), "deleted": False, **req.model_dump()}
    tx.put(cus)
    tx.effect(Effect.of("customer.created", key, cus["id"]))
    return {"ok": results.customer(cus)}


async def update_customer(tx: Tx, req: UpdateCustomer, key: str) -> dict[str, Any]:
    cus = await _must(tx, req.provider_customer_id, "customer")
    changes = req.model_dump(exclude={"provider_customer_id", "metadata"}, exclude_none=True)
    metadata = merged_metadata(cus.get("metadata") or {}, req.metadata)
    if len(metadata) > METADATA_KEYS_MAX:  # as Stripe: 50 keys in all, not per update
        raise _invalid(f"a customer holds at most {METADATA_KEYS_MAX} metadata keys")
    cus = {**cus, **changes, "metadata": metadata}
    tx.put(cus)
    tx.effect(Effect.of("customer.updated", key, cus["id"]))
    return {"ok": results.customer(cus)}


async def retrieve_customer(tx: Tx, req: RetrieveCustomer) -> dict[str, Any]:
    """The customer as it stands: read, nothing written (a deleted one is no such
    customer, as for every other call)."""
    cus = await _must(tx, req.provider_customer_id, "customer")
    return {"ok": results.customer_details(cus)}


async def delete_customer(tx: Tx, req: DeleteCustomer, key: str) -> dict[str, Any]:
    cus = await _must(tx, req.provider_customer_id, "customer")
    # As Stripe does: their subscriptions are canceled at once (the periods its clock
    # began before billed first, while their cards are still attached).
    if cus.get("subscriptions"):
        now = await clock_now(tx)
        for sub_id in cus["subscriptions"]:
            sub = await tx.get(sub_id)
            if sub is None or sub["status"] == _SUB_CANCELED:
                continue
            await _bill_due(tx, sub, now)
            if sub["status"] != _SUB_CANCELED:
                await _cancel_now(tx, sub, now)
            tx.put(sub)
    # As Stripe does ("deleting customers removes all credit card details"): its payment
    # methods are detached with it, and cannot be used or detached again.
    for pm_id in cus.get("payment_methods") or ():
        pm = await tx.get(pm_id)
        if pm is not None and pm.get("customer") == cus["id"]:
            tx.put({**pm, "customer": None})
    # Kept as Stripe keeps a deleted customer, its id alone: its e-mail, name and the
    # rest stayed in Redis for the key's 400 days, past an erasure (review h59j).
    cus = {
        **cus,
        "deleted": True,
        "payment_methods": [],
        "email": None,
        "name": None,
        "description": None,
        "metadata": {},
    }
    tx.put(cus)
    tx.effect(Effect.of("customer.deleted", key, cus["id"]))
    return {"ok": results.customer(cus)}


# ---- payment methods ---------------------------------------------------------------


def _decline(card: TestCard, payment_id: str | None = None) -> dict[str, Any]:
    assert card.error is not None
    return {
        "error": {
            "code": card.error.value,
            "message": card.message,
            "decline_code": card.decline_code,
            "http_status": 402,
            "provider_payment_id": payment_id,
        }
    }


async def attach_payment_method(tx: Tx, req: AttachPaymentMethod, key: str) -> dict[str, Any]:
    cus = await _must(tx, req.provider_customer_id, "customer")
    card = card_for_token(req.token)
    if card is None:
        existing = await tx.get(req.token)
        if existing is None or existing.get("object") != "payment_method":
            raise _refuse(
                ErrorCode.NOT_FOUND, f"no such payment method: {req.token!r}", http_status=404
            )
        raise _refuse(
            ErrorCode.INVALID_STATE,
            "a saved payment method that was attached once cannot be attached again",
        )
    if card.declines_on_attach:
        return _decline(card)  # Stripe verifies a card when it is saved to a customer
    pm = {
        "object": "payment_method",
        "id": _new_id("pm"),
        "card": req.token,
        "customer": req.provider_customer_id,
    }
    tx.put(pm)
    # The customer lists its methods: its deletion detaches them.
    tx.put({**cus, "payment_methods": [*(cus.get("payment_methods") or ()), pm["id"]]})
    tx.effect(Effect.of("payment_method.attached", key, pm["id"]))
    return {"ok": results.payment_method(pm)}


async def detach_payment_method(tx: Tx, req: DetachPaymentMethod, key: str) -> dict[str, Any]:
    pm = await _must(tx, req.provider_payment_method_id, "payment_method")
    if pm["customer"] is None:
        raise _refuse(ErrorCode.INVALID_STATE, "the payment method is not attached to a customer")
    owner = await tx.get(pm["customer"])
    if owner is not None and pm["id"] in (owner.get("payment_methods") or ()):
        listed = [other for other in owner["payment_methods"] if other != pm["id"]]
        tx.put({**owner, "payment_methods": listed})
    pm = {**pm, "customer": None}
    tx.put(pm)
    tx.effect(Effect.of("payment_method.detached", key, pm["id"]))
    return {"ok": results.payment_method(pm)}


# ---- payments ----------------------------------------------------------------------


async def _card_for_payment(tx: Tx, req: CreatePayment) -> tuple[TestCard, str]:
    """The test card a payment charges, and the token that names it."""
    if req.provider_customer_id is not None:
        await _must(tx, req.provider_customer_id, "customer")
    card = card_for_token(req.provider_payment_method_id)
    if card is not None:
        return card, req.provider_payment_method_id
    pm = await _must(tx, req.provider_payment_method_id, "payment_method")
    if pm["customer"] is None:
        raise _refuse(ErrorCode.INVALID_STATE, "a detached payment method cannot be used again")
    if pm["customer"] != req.provider_customer_id:
        raise _refuse(
            ErrorCode.INVALID_REQUEST,
            "the payment method belongs to another customer (or none was given)",
        )
    card = card_for_token(pm["card"])
    assert card is not None  # attach only stores tokens from the card table
    return card, pm["card"]


# Stripe's dispute fee (its "dispute received fee", per business country, charged in the
# account's currency), minor units: USD 15.00 (US), EUR 20.00 (euro area), GBP 20.00 (UK,
# since April 2023), JPY 1,500 (Japan). Stripe prices it "$15.00 or the local-currency
# equivalent" elsewhere; the simulator converts nothing, so any other currency's fee is
# 15 of its whole units (a simulator value, README "Payouts and balances").
DISPUTE_FEES: dict[str, int] = {"USD": 1500, "EUR": 2000, "GBP": 2000, "JPY": 1500}
_DISPUTE_FEE_UNITS = 15


def dispute_fee(currency: str) -> int:
    """The fee a dispute opened in ``currency`` (normalised) costs, in minor units."""
    fee = DISPUTE_FEES.get(currency)
    if fee is None:
        fee = _DISPUTE_FEE_UNITS * 10 ** CURRENCY_EXPONENTS.get(currency, 2)
    return fee


def _open_dispute_if_due(tx: Tx, pi: dict[str, Any], key: str) -> dict[str, Any]:
    """The dispute card's cardholder disputes as soon as money is captured: as Stripe, the
    disputed amount and the dispute fee are withdrawn from the available balance at once
    (below zero if need be); a won dispute gives the amount back, never the fee."""
    # (Synchronous, as `_authorise`: neither reads, so neither needs a coroutine.)
    card = card_for_token(pi["card"])
    if card is None or card.behaviour is not Behaviour.DISPUTE:
        return pi
    if pi["amount_captured"] == 0 or pi.get("dispute_id"):
        return pi
    currency = pi["currency"]
    dispute = {
        "object": "dispute",
        "id": _new_id("dp"),
        "payment_id": pi["id"],
        "amount": pi["amount_captured"],
        "currency": currency,
        "status": _NEEDS_RESPONSE,
        "evidence": {},
        # As Stripe's test card's: a fraud claim, evidence due in a week (epoch seconds,
        # as Stripe's evidence_details.due_by).
        "reason": "fraudulent",
        "evidence_due_by": int(time.time()) + EVIDENCE_WINDOW_SECONDS,
        # Its presence says the withdrawal was made at opening (a dispute stored before
        # it was, without one, is charged back when lost instead).
        "fee": dispute_fee(currency),
    }
    tx.put(dispute)
    # One commit with the capture that let the card dispute: the key's record keeps a
    # redelivery from withdrawing again, and the payment's one dispute_id a re-read.
    withdrawn = dispute["amount"] + dispute["fee"]
    tx.adjust_available(currency, -withdrawn)
    tx.effect(Effect.of("dispute.withdrawal", key, dispute["id"], withdrawn, currency))
    return {**pi, "dispute_id": dispute["id"]}


def _authorise(tx: Tx, pi: dict[str, Any], key: str) -> dict[str, Any]:
    """Money moves: authorise, and capture too unless capture is manual."""
    pi = {**pi, "charge_id": _new_id("ch"), "next_action": None}
    if pi["capture_method"] == _MANUAL:
        pi["status"] = _AUTHORIZED
        tx.effect(Effect.of("authorization", key, pi["id"], pi["amount"], pi["currency"]))
    else:
        pi["status"] = _SUCCEEDED
        pi["amount_captured"] = pi["amount"]
        tx.effect(Effect.of("charge", key, pi["id"], pi["amount"], pi["currency"]))
        tx.settle_later(pi["currency"], pi["amount"])
        pi = _transfer(tx, pi, key, pi["amount"])
    return _open_dispute_if_due(tx, pi, key)


# Stripe's cap (its currencies page): eight digits in minor units ("Amount must be no
# more than 999,999.99"), twelve for IDR (999,999,999,999: Rp 9,999,999,999.99). UGX,
# which Stripe counts in hundredths (stripe_rules.STRIPE_HUNDREDTHS), caps at 999,999.99
# of those: 999,999 whole shillings, paystream's unit (review h67c).
MAX_STRIPE_AMOUNT = 99_999_999
MAX_STRIPE_AMOUNT_BY_CURRENCY: dict[str, int] = {"IDR": 999_999_999_999, "UGX": 999_999}


def max_charge_amount(currency: str) -> int:
    """The largest amount Stripe charges in ``currency`` (normalised), in minor units."""
    return MAX_STRIPE_AMOUNT_BY_CURRENCY.get(currency, MAX_STRIPE_AMOUNT)


def _check_amount(amount: Money) -> None:
    """Stripe's bounds on a charge's amount, checked before anything is looked up."""
    if amount.amount < 1:
        raise _invalid("amount must be at least 1 minor unit")
    cap = max_charge_amount(amount.currency)
    if amount.amount > cap:
        raise _invalid(
            f"amount must be no more than {cap} minor units ({len(str(cap))} digits"
            f" in {amount.currency})"
        )
    problem = below_minimum_charge(amount) or three_decimal_problem(amount)
    if problem is not None:
        raise _invalid(problem)


async def create_payment(tx: Tx, req: CreatePayment, key: str) -> dict[str, Any]:
    _check_amount(req.amount)
    # In the keyed call: a create its key answered before (charged by an earlier version,
    # its batch lost) is answered as it was (review h68ak).
    problem = withdrawn_currency_problem(req.amount) or payment_parameters_problem(
        req.statement_descriptor, req.return_url, req.metadata
    )
    if problem is not None:
        raise _invalid(problem)
    # A test token and no customer (most payments): nothing to look up, so no coroutine;
    # `_card_for_payment` would answer the same without a read.
    token = req.provider_payment_method_id
    card = card_for_token(token) if req.provider_customer_id is None else None
    if card is None:
        card, token = await _card_for_payment(tx, req)
    method = req.capture_method
    if req.destination_account is not None:
        await _check_destination(tx, req)
    elif card.behaviour is _PLAIN_CARD and (
        method is _AUTOMATIC_CAPTURE or method is _MANUAL_CAPTURE
    ):
        return _charge(tx, req, key, token, method is _MANUAL_CAPTURE)
    return await _create_payment_full(tx, req, key, card, token)


async def _check_destination(tx: Tx, req: CreatePayment) -> None:
    """A destination charge's account and fee, as Stripe refuses them: an account of the
    platform's that can take transfers (its ``transfers`` capability active: requested,
    onboarding finished; a recipient's charges are never enabled), a fee of 0 up
    to the amount (a 400, in the keyed call: not kept under the key)."""
    acct = await tx.get(str(req.destination_account))
    if acct is None or acct.get("object") != "account":
        raise _refuse(
            ErrorCode.INVALID_REQUEST, f"No such destination: '{req.destination_account}'"
        )
    if not _transfers_active(acct):
        raise _invalid(
            f"the destination account {acct['id']} cannot receive transfers: its onboarding "
            "is not finished (transfers capability inactive)"
        )
    fee = req.application_fee_amount
    if fee is not None and not 0 <= fee <= req.amount.amount:
        raise _invalid(f"application_fee_amount {fee} must be between 0 and the amount")


def _transfer(tx: Tx, pi: dict[str, Any], key: str, captured: int) -> dict[str, Any]:
    """A destination charge's money once captured, as Stripe moves it: "the full charge
    amount is immediately transferred ... to the transfer_data[destination] account", and
    the application fee (at most what was captured, Stripe's cap) "is then transferred
    back to the platform". Each an effect under the key (once, as every effect)."""
    destination = pi.get("destination")
    if destination is None:
        return pi
    fee = min(pi.get("application_fee_amount") or 0, captured)
    currency = pi["currency"]
    tx.effect(Effect.of("transfer", key, destination, captured, currency))
    if pi.get("application_fee_amount") is not None:
        tx.effect(Effect.of("application_fee", key, pi["id"], fee, currency))
    return {**pi, "application_fee_amount": pi.get("application_fee_amount") and fee,
            "transferred": captured}  # fmt: skip


def _charge(tx: Tx, req: CreatePayment, key: str, token: str, manual: bool) -> dict[str, Any]:
    """``_create_payment_full`` for a card that simply succeeds (most payments): the
    payment made at once as it ends up there, rather than made awaiting action, copied
    with its charge, changed field by field and looked at for a dispute (the card opens
    none). The same ids drawn in the same order (payment, then charge), the same keys in
    the same order with the same values, the same effect, write and response;
    tests/gateways/simulator/test_fast_paths.py holds it to the full path."""
    amount = req.amount.amount
    currency = req.amount.currency
    pi_id = _new_id("pi")
    pi: dict[str, Any] = {
        "object": "payment_intent",
        "id": pi_id,
        "status": _AUTHORIZED if manual else _SUCCEEDED,
        "amount": amount,
        "currency": currency,
        "amount_captured": 0 if manual else amount,
        "amount_refunded": 0,
        "customer": req.provider_customer_id,
        "card": token,
        "capture_method": _MANUAL if manual else _AUTOMATIC,
        "charge_id": _new_id("ch"),
        "failure_code": None,
        "failure_message": None,
        "next_action": None,
        "dispute_id": None,
    }
    tx.effects.append(
        Effect.of("authorization" if manual else "charge", key, pi_id, amount, currency)
    )
    if not manual:
        tx.balance.append(("p", currency, amount, None))  # (tx.settle_later)
    tx.writes[pi_id] = pi  # (tx.put: the id is a str already)
    return {"ok": results.payment(pi, None)}


async def _create_payment_full(
    tx: Tx, req: CreatePayment, key: str, card: TestCard, token: str
) -> dict[str, Any]:
    """A payment charged to ``card`` (named by ``token``), whatever the card does."""
    pi: dict[str, Any] = {
        "object": "payment_intent",
        "id": _new_id("pi"),
        "status": _REQUIRES_ACTION,
        "amount": req.amount.amount,
        "currency": req.amount.currency,
        "amount_captured": 0,
        "amount_refunded": 0,
        "customer": req.provider_customer_id,
        "card": token,
        "capture_method": req.capture_method.value,
        "charge_id": None,
        "failure_code": None,
        "failure_message": None,
        "next_action": None,
        "dispute_id": None,
    }
    if req.destination_account is not None:
        pi["destination"] = req.destination_account
        pi["application_fee_amount"] = req.application_fee_amount
    if card.behaviour is Behaviour.DECLINE:
        assert card.error is not None
        # As Stripe's last_payment_error reports it (and our Stripe mapping reads it):
        # the decline code (lost_card, generic_decline, ...), not our vocabulary's.
        pi.update(
            status=_FAILED,
            failure_code=card.decline_code or card.stripe_code,
            failure_message=card.message,
        )
        tx.put(pi)
        return _decline(card, pi["id"])
    if card.behaviour is Behaviour.REQUIRE_ACTION:
        # As Stripe's 3-D Secure URL: it carries the payment's client secret, a
        # credential for the customer's step that paystream must never keep in clear.
        secret = f"{pi['id']}_secret_{_new_id('cs').removeprefix('cs_')}"
        pi["next_action"] = {
            "type": "redirect_to_url",
            "redirect_to_url": {
                "url": f"https://simulator.paystream.invalid/3ds/{pi['id']}"
                f"?payment_intent_client_secret={secret}",
                "return_url": req.return_url,
            },
        }
        tx.put(pi)
        dispute = await tx.get(pi["dispute_id"]) if pi.get("dispute_id") else None
        return {"ok": results.payment(pi, dispute)}
    pi = _authorise(tx, pi, key)
    tx.put(pi)
    dispute = await tx.get(pi["dispute_id"]) if pi.get("dispute_id") else None
    return {"ok": results.payment(pi, dispute)}


async def complete_authentication(tx: Tx, payment_id: str, succeed: bool) -> dict[str, Any]:
    pi = await _must(tx, payment_id, "payment_intent")
    if pi["status"] != PaymentStatus.REQUIRES_ACTION.value:
        raise _refuse(ErrorCode.INVALID_STATE, f"payment is {pi['status']}, not requires_action")
    card = card_for_token(pi["card"])
    if succeed and card is not None and card.error is not None:
        # The step passed, and the issuer declines the charge it let through: reported
        # as a decline at creation is, and open for another card (Stripe:
        # requires_payment_method), as after a failed step.
        pi = {
            **pi,
            "status": PaymentStatus.FAILED.value,
            "next_action": None,
            "failure_code": card.decline_code or card.stripe_code,
            "failure_message": card.message,
        }
    elif succeed:
        pi = _authorise(tx, pi, f"3ds:{payment_id}")
    else:
        pi = {
            **pi,
            "status": PaymentStatus.FAILED.value,
            "next_action": None,
            # Stripe's last_payment_error after a failed challenge (no decline code).
            "failure_code": "payment_intent_authentication_failure",
            "failure_message": "The provided PaymentMethod has failed authentication.",
        }
    tx.put(pi)
    dispute = await tx.get(pi["dispute_id"]) if pi.get("dispute_id") else None
    return {"ok": results.payment(pi, dispute)}


def _three_decimal_rule(amount: int, currency: str) -> None:
    """Stripe applies it to captures and refunds as to charges (its currencies page)."""
    if (
        type(amount) is int
        and 0 <= amount <= MAX_MINOR_AMOUNT
        and CURRENCY_EXPONENTS.get(currency, 3) != 3
    ):
        # Nothing to refuse, and nothing `Money` would refuse: an int in its bounds, and a
        # currency found as a key (so already as `Money` normalises it) whose amounts are
        # not in thousandths (`three_decimal_problem` answers None for those). Most
        # captures and refunds, spared validating a `Money` only to read it back.
        return
    _three_decimal_rule_full(amount, currency)


def _three_decimal_rule_full(amount: int, currency: str) -> None:
    problem = three_decimal_problem(Money(amount=amount, currency=currency))
    if problem is not None:
        # The parameters refused, as for a charge: not kept under the key (README), so
        # the corrected amount may be sent again under it.
        raise _invalid(problem)


def _capture_minimum(amount: int, currency: str) -> None:
    """Stripe refuses a partial capture under the currency's minimum charge as it refuses
    such a charge (`amount_too_small`; review h64a: USD 0.10 of 10.00 was captured)."""
    minimum = MINIMUM_CHARGE.get(currency)
    if minimum is not None and amount < minimum:
        problem = below_minimum_charge(Money(amount=amount, currency=currency))
        # (The parameters refused, as for a charge: not kept under the key.)
        raise _invalid(problem or "amount_too_small")


async def capture_payment(tx: Tx, req: CapturePayment, key: str) -> dict[str, Any]:
    if req.amount is not None and req.amount < 1:
        raise _invalid(f"capture amount {req.amount} must be at least 1")
    pi = await _must(tx, req.provider_payment_id, "payment_intent")
    if pi["status"] != _AUTHORIZED:
        raise _refuse(ErrorCode.INVALID_STATE, f"cannot capture a payment that is {pi['status']}")
    amount = pi["amount"] if req.amount is None else req.amount
    if amount > pi["amount"]:
        raise _refuse(
            ErrorCode.INVALID_REQUEST,
            f"capture amount {amount} must be between 1 and the authorised {pi['amount']}",
        )
    _three_decimal_rule(amount, pi["currency"])
    if req.amount is not None:
        _capture_minimum(amount, pi["currency"])
    # As at Stripe, what is not captured is released, so the payment is final.
    pi = {**pi, "status": _SUCCEEDED, "amount_captured": amount}
    if req.application_fee_amount is not None:
        if pi.get("destination") is None:
            # (Stripe: an application fee is a Connect charge's; refused, not dropped)
            raise _invalid("application_fee_amount needs a destination charge (transfer_data)")
        if not 0 <= req.application_fee_amount <= amount:
            raise _invalid(
                f"application_fee_amount {req.application_fee_amount} must be between 0 and "
                f"the amount captured {amount}"
            )
        pi["application_fee_amount"] = req.application_fee_amount
    tx.effect(Effect.of("capture", key, pi["id"], amount, pi["currency"]))
    tx.settle_later(pi["currency"], amount)
    pi = _transfer(tx, pi, key, amount)
    pi = _open_dispute_if_due(tx, pi, key)
    tx.put(pi)
    dispute = await tx.get(pi["dispute_id"]) if pi.get("dispute_id") else None
    return {"ok": results.payment(pi, dispute)}


# Stripe cancels anything not yet captured: awaiting action, authorised, or declined.
_CANCELLABLE = frozenset(
    {
        PaymentStatus.REQUIRES_ACTION.value,
        PaymentStatus.AUTHORIZED.value,
        PaymentStatus.FAILED.value,
    }
)


async def cancel_payment(tx: Tx, req: CancelPayment, key: str) -> dict[str, Any]:
    pi = await _must(tx, req.provider_payment_id, "payment_intent")
    if pi["status"] not in _CANCELLABLE:
        raise _refuse(ErrorCode.INVALID_STATE, f"cannot cancel a payment that is {pi['status']}")
    if pi["status"] == PaymentStatus.AUTHORIZED.value:
        tx.effect(Effect.of("void", key, pi["id"], pi["amount"], pi["currency"]))
    pi = {**pi, "status": _CANCELED, "next_action": None}
    tx.put(pi)
    dispute = await tx.get(pi["dispute_id"]) if pi.get("dispute_id") else None
    return {"ok": results.payment(pi, dispute)}


async def retrieve_payment(tx: Tx, req: RetrievePayment) -> dict[str, Any]:
    """The payment as it stands (after its 3-D Secure step, say): read, nothing written."""
    pi = await _must(tx, req.provider_payment_id, "payment_intent")
    dispute = await tx.get(pi["dispute_id"]) if pi.get("dispute_id") else None
    return {"ok": results.payment(pi, dispute)}


# ---- refunds -----------------------------------------------------------------------


async def create_refund(tx: Tx, req: CreateRefund, key: str) -> dict[str, Any]:
    if req.amount is not None and req.amount < 1:
        raise _invalid(f"refund amount {req.amount} must be at least 1")
    pi = await _must(tx, req.provider_payment_id, "payment_intent")
    if pi["status"] != _SUCCEEDED:
        raise _refuse(ErrorCode.INVALID_STATE, f"cannot refund a payment that is {pi['status']}")
    if pi.get("dispute_id"):
        dispute = await tx.get(pi["dispute_id"])
        if dispute and dispute["status"] in (
            DisputeStatus.NEEDS_RESPONSE,
            DisputeStatus.UNDER_REVIEW,
        ):
            raise _refuse(
                ErrorCode.INVALID_STATE, "the payment is disputed; respond to the dispute"
            )
        if dispute and dispute["status"] == DisputeStatus.LOST:
            # The disputed amount already went back to the cardholder (Stripe: charge_disputed).
            raise _refuse(
                ErrorCode.INVALID_STATE, "the payment's dispute was lost: it was charged back"
            )
    remaining = pi["amount_captured"] - pi["amount_refunded"]
    if remaining == 0:
        raise _refuse(ErrorCode.INVALID_STATE, "the payment has already been fully refunded")
    amount = remaining if req.amount is None else req.amount
    if amount > remaining:
        raise _refuse(
            ErrorCode.INVALID_REQUEST,
            f"refund amount {amount} must be between 1 and the unrefunded {remaining}",
        )
    _three_decimal_rule(amount, pi["currency"])
    card = card_for_token(pi["card"])
    later = card.refund if card is not None else RefundBehaviour.SUCCEED
    refund = {
        "object": "refund",
        "id": _new_id("re"),
        "payment_id": pi["id"],
        "amount": amount,
        "currency": pi["currency"],
        "status": "pending" if later is RefundBehaviour.PENDING else "succeeded",
    }
    if later is not RefundBehaviour.SUCCEED:
        # Not part of Stripe's object: what the refund becomes once read back.
        refund["settles_as"] = "succeeded" if later is RefundBehaviour.PENDING else "failed"
    if (req.reverse_transfer or req.refund_application_fee) and pi.get("destination") is None:
        raise _invalid(
            "reverse_transfer and refund_application_fee need a charge with transfer_data"
        )
    if req.refund_application_fee and not req.reverse_transfer:
        # (Stripe: "if you refund the application fee for a destination charge, you must
        # also reverse the transfer")
        raise _invalid("refund_application_fee needs reverse_transfer for a destination charge")
    tx.put(refund)
    tx.put({**pi, "amount_refunded": pi["amount_refunded"] + amount})
    tx.effect(Effect.of("refund", key, refund["id"], amount, pi["currency"]))
    if pi.get("destination") is not None:
        _reverse(tx, pi, refund, key, req)
    tx.adjust_available(pi["currency"], -amount)  # (Stripe's balance may go negative)
    return {"ok": results.refund(refund)}


def _reverse(
    tx: Tx, pi: dict[str, Any], refund: dict[str, Any], key: str, req: CreateRefund
) -> None:
    """A destination charge's refund, as Stripe's options say: ``reverse_transfer`` takes
    "a proportional amount of the transfer" back from the connected account (the whole
    amount was transferred: the amount refunded), ``refund_application_fee`` gives the
    fee back to it in the same proportion (rounded half up); the charge refunded entirely,
    all that is left of both comes back. Without them the platform bears the refund. Each
    an effect under the refund's key."""
    pi = dict(pi)  # (the read's value is the commit's check: changed on a copy)
    captured, amount, currency = pi["amount_captured"], refund["amount"], pi["currency"]
    entirely = pi["amount_refunded"] + amount >= captured
    if req.reverse_transfer:
        left = pi.get("transferred", 0) - pi.get("transfer_reversed", 0)
        back = left if entirely else min(amount, left)
        tx.effect(Effect.of("transfer_reversal", key, pi["destination"], back, currency))
        pi["transfer_reversed"] = pi.get("transfer_reversed", 0) + back
    if req.refund_application_fee and pi.get("application_fee_amount"):
        fee = pi["application_fee_amount"]
        given = pi.get("application_fee_refunded", 0)
        share = (2 * amount * fee + captured) // (2 * captured)
        back = fee - given if entirely else min(share, fee - given)
        tx.effect(Effect.of("application_fee_refund", key, pi["id"], back, currency))
        pi["application_fee_refunded"] = given + back
    tx.put({**pi, "amount_refunded": pi["amount_refunded"] + amount})


async def retrieve_refund(tx: Tx, req: RetrieveRefund) -> dict[str, Any]:
    """The refund as it stands. One of the refund test cards changes on its first read
    back: it settles, or fails (the card closed; its amount counts as not refunded
    again, as Stripe's charge then has it): committed with the read, so every later read
    (and a retried one) sees the same."""
    refund = await _must(tx, req.provider_refund_id, "refund")
    settles_as = refund.pop("settles_as", None)
    if settles_as is not None:
        refund["status"] = settles_as
        if settles_as == "failed":
            refund["failure_reason"] = "expired_or_canceled_card"
            pi = await _must(tx, refund["payment_id"], "payment_intent")
            tx.put({**pi, "amount_refunded": pi["amount_refunded"] - refund["amount"]})
            tx.adjust_available(refund["currency"], refund["amount"])  # returned
        tx.put(refund)
    return {"ok": results.refund(refund)}


# ---- disputes ----------------------------------------------------------------------


def _check_evidence(evidence: dict[str, str]) -> None:
    unknown = sorted(set(evidence) - DISPUTE_EVIDENCE_FIELDS)
    if unknown:
        raise _invalid(f"unknown evidence fields: {', '.join(unknown)}")
    for field in sorted(DISPUTE_EVIDENCE_FILE_FIELDS & set(evidence)):
        if not _FILE_ID.fullmatch(evidence[field]):
            # Stripe answers "No such file upload"; the value is not echoed (it may be a
            # customer's name or words, and the message travels in outcomes and logs).
            raise _invalid(
                f"No such file upload in evidence[{field}]: it takes the id of a file "
                "uploaded to the provider (file_...), not text"
            )


async def submit_dispute_evidence(tx: Tx, req: SubmitDisputeEvidence, key: str) -> dict[str, Any]:
    _check_evidence(req.evidence)
    dispute = await _must(tx, req.provider_dispute_id, "dispute")
    if dispute["status"] != DisputeStatus.NEEDS_RESPONSE.value:
        raise _refuse(ErrorCode.INVALID_STATE, f"the dispute is {dispute['status']}")
    dispute = {**dispute, "evidence": {**dispute["evidence"], **req.evidence}}
    if sum(len(v) for v in dispute["evidence"].values()) > EVIDENCE_MAX_CHARS:
        # Stripe: "The combined character count of all fields is limited to 150,000."
        raise _invalid(f"the evidence's fields hold more than {EVIDENCE_MAX_CHARS} characters")
    if req.submit:
        dispute["status"] = DisputeStatus.UNDER_REVIEW.value
    tx.put(dispute)
    tx.effect(Effect.of("dispute.evidence", key, dispute["id"]))
    return {"ok": results.dispute(dispute)}


async def accept_dispute(tx: Tx, req: AcceptDispute, key: str) -> dict[str, Any]:
    dispute = await _must(tx, req.provider_dispute_id, "dispute")
    if dispute["status"] != DisputeStatus.NEEDS_RESPONSE.value:
        raise _refuse(ErrorCode.INVALID_STATE, f"the dispute is {dispute['status']}")
    dispute = {**dispute, "status": DisputeStatus.LOST.value}
    tx.put(dispute)
    _charge_back_if_lost_late(tx, dispute)
    tx.effect(
        Effect.of("dispute.accepted", key, dispute["id"], dispute["amount"], dispute["currency"])
    )
    return {"ok": results.dispute(dispute)}


async def resolve_dispute(tx: Tx, dispute_id: str, won: bool) -> dict[str, Any]:
    dispute = await _must(tx, dispute_id, "dispute")
    if dispute["status"] not in (DisputeStatus.NEEDS_RESPONSE, DisputeStatus.UNDER_REVIEW):
        raise _refuse(ErrorCode.INVALID_STATE, f"the dispute is already {dispute['status']}")
    dispute = {**dispute, "status": (DisputeStatus.WON if won else DisputeStatus.LOST).value}
    tx.put(dispute)
    if not won:
        _charge_back_if_lost_late(tx, dispute)
    elif "fee" in dispute:
        # Stripe passes the disputed amount back; its dispute (received) fee it keeps.
        tx.adjust_available(dispute["currency"], dispute["amount"])
        tx.effect(
            Effect.of("dispute.reinstated", f"resolve:{dispute_id}", dispute_id,
                      dispute["amount"], dispute["currency"])
        )  # fmt: skip
    return {"ok": results.dispute(dispute)}


def _charge_back_if_lost_late(tx: Tx, dispute: dict[str, Any]) -> None:
    """A lost dispute moves nothing more (its amount and fee went at opening), unless it
    was stored before the simulator withdrew them then (no ``fee``): its amount now."""
    if "fee" not in dispute:
        tx.adjust_available(dispute["currency"], -dispute["amount"])  # charged back


# ---- subscriptions ------------------------------------------------------------------
#
# A subscription bills its saved card once per period, on the simulator's clock: the
# first period at create (or at the end of a free trial), each later one when its period
# has begun. Renewals are made when the subscription is next touched (a read, a cancel),
# inside that call's transaction: its commit re-checks the subscription (and the clock)
# it read, so two reads racing bill each period once (the loser recomputes from what the
# winner wrote), and a period's charge is an effect keyed by the subscription and the
# period, never by the read. The clock is the machine's plus a per-tenant offset that
# `paystream simulator advance` moves forward (an object of the store: "clock").

CLOCK_ID = "clock"
_DAY = 24 * 3600
_INTERVAL_DAYS = {"day": 1, "week": 7}
_MONTHS = {"month": 1, "year": 12}
# The longest period, as Stripe's: one year in all.
_MAX_INTERVAL_COUNT = {"day": 365, "week": 52, "month": 12, "year": 1}
_MAX_TRIAL_DAYS = 730
_SUB_TRIALING = "trialing"
_SUB_ACTIVE = "active"
_SUB_PAST_DUE = "past_due"
_SUB_CANCELED = "canceled"
_SUB_INCOMPLETE = "incomplete"
_SUB_PAUSED = "paused"


async def clock_now(tx: Tx) -> int:
    """The simulator's time for this tenant (unix seconds): the machine's, moved forward
    by `advance_clock`. Read in the transaction: an advance meanwhile recomputes it."""
    return clock_of(await tx.get(CLOCK_ID))


def clock_of(clock: Mapping[str, Any] | None) -> int:
    """The time (unix seconds) of the tenant's clock object (None: never advanced)."""
    return int(time.time()) + int((clock or {}).get("offset") or 0)


async def advance_clock(tx: Tx, seconds: int) -> dict[str, Any]:
    if seconds < 0:
        raise _invalid("the simulator's clock only moves forward")
    clock = await tx.get(CLOCK_ID) or {"object": "clock", "id": CLOCK_ID, "offset": 0}
    clock = {**clock, "offset": int(clock.get("offset") or 0) + seconds}
    tx.put(clock)
    return {"ok": {"offset": clock["offset"], "now": int(time.time()) + clock["offset"]}}


def _add_months(at: int, months: int) -> int:
    """``at`` (unix seconds, UTC) ``months`` calendar months later, the day of the month
    kept or, past the month's end, its last day (as Stripe anchors billing)."""
    import calendar
    from datetime import UTC, datetime

    start = datetime.fromtimestamp(at, UTC)
    month0 = start.month - 1 + months
    year, month = start.year + month0 // 12, month0 % 12 + 1
    day = min(start.day, calendar.monthrange(year, month)[1])
    return int(start.replace(year=year, month=month, day=day).timestamp())


def period_start(sub: dict[str, Any], k: int) -> int:
    """When the subscription's ``k``-th billed period (0: the first) begins."""
    anchor, count, interval = sub["anchor"], sub["interval_count"], sub["interval"]
    if interval in _INTERVAL_DAYS:
        return anchor + k * count * _INTERVAL_DAYS[interval] * _DAY
    return _add_months(anchor, k * count * _MONTHS[interval])


def _current_period(sub: dict[str, Any]) -> tuple[int, int]:
    billed = sub["periods_billed"]
    if billed == 0:  # (a trial: from its start to its end)
        return sub["created"], sub["anchor"]
    return period_start(sub, billed - 1), period_start(sub, billed)


def _bill_period(
    tx: Tx, sub: dict[str, Any], k: int, key: str, attached: bool = True
) -> dict[str, Any]:
    """Period ``k``'s invoice, its charge attempted now (off-session: a card that asks
    for 3-D Secure cannot be charged so, and declines). ``attached``: its payment method
    is still its customer's; detached since, nothing is charged (the invoice stays open,
    as Stripe's with no payment method to charge). Proration lines pending (a price
    change's, ``create_prorations``) are on it, and a credit left over from earlier
    prorations is taken off it (Stripe's customer credit balance)."""
    start, end = period_start(sub, k), period_start(sub, k + 1)
    subtotal, tax, total = _taxed(sub)
    lines = list(sub.get("pending_prorations") or ())
    sub["pending_prorations"] = []
    invoice = _invoice_of(tx, sub, key, start, end, (subtotal, tax, total), lines, attached)
    sub["periods_billed"] = k + 1
    return invoice


def _invoice_of(
    tx: Tx,
    sub: dict[str, Any],
    key: str,
    start: int,
    end: int,
    taxed: tuple[int, int, int],
    lines: list[dict[str, Any]],
    attached: bool,
) -> dict[str, Any]:
    """An invoice of ``sub`` for ``[start, end)``: ``taxed`` (subtotal, tax, total, of
    its period's price; zeros for a proration invoice) plus its proration ``lines``,
    less the subscription's credit; what is left due charged now under ``key``. Due
    below zero (a downgrade's credit larger than the rest): nothing charged, the
    invoice paid at zero and the rest kept as credit for the next invoices (Stripe
    carries a negative invoice total to the customer's credit balance); due above zero
    but under the currency's minimum charge: nothing charged, the invoice paid and what
    was due billed with the next one (Stripe's rule for such an invoice)."""
    subtotal, tax, total = taxed
    for line in lines:
        subtotal, tax, total = subtotal + line["amount"], tax + line["tax"], total + line["total"]
    due = total - int(sub.get("credit") or 0)
    sub["credit"] = max(0, -due)
    due = max(0, due)
    minimum = MINIMUM_CHARGE.get(str(sub["currency"]).upper())
    if due and minimum is not None and due < minimum:
        # (Stripe marks an invoice due less than its currency's minimum charge paid and
        # adds what was due to the customer's balance, a debit the next invoice bills:
        # kept here as a negative credit; review h79r_e M4)
        sub["credit"], due = -due, 0
    card = card_for_token(sub["card"])
    pi: dict[str, Any] = {
        "object": "payment_intent",
        "id": _new_id("pi"),
        "status": _SUCCEEDED,
        "amount": due,
        "currency": sub["currency"],
        "amount_captured": due,
        "amount_refunded": 0,
        "customer": sub["customer"],
        "card": sub["card"],
        "capture_method": _AUTOMATIC,
        "charge_id": _new_id("ch"),
        "failure_code": None,
        "failure_message": None,
        "next_action": None,
        "dispute_id": None,
    }
    invoice: dict[str, Any] = {
        "object": "invoice",
        "id": _new_id("in"),
        "subscription": sub["id"],
        "status": "paid",
        "amount": due,
        "currency": sub["currency"],
        "period_start": start,
        "period_end": end,
        "payment_intent": pi["id"] if due else None,
        "failure_code": None,
        "failure_message": None,
    }
    if sub.get("tax_rates"):
        invoice.update(subtotal=subtotal, tax=tax, total=total)
    if lines:
        invoice["proration_lines"] = [
            {k: line[k] for k in ("description", "amount", "period_start", "period_end")}
            for line in lines
        ]
    if not due:
        pass  # (nothing to charge: paid by credit, or at zero)
    elif (
        not attached
        or card is None
        or card.behaviour
        in (
            Behaviour.DECLINE,
            Behaviour.REQUIRE_ACTION,
        )
    ):
        code = "authentication_required"
        message = "The payment needs the customer's authentication (off-session)."
        if not attached:
            code = "payment_method_detached"
            message = "The subscription's payment method was detached: nothing was charged."
        elif card is not None and card.behaviour is Behaviour.DECLINE:
            code = card.decline_code or card.stripe_code or "card_declined"
            message = card.message
        pi.update(
            status=_FAILED,
            amount_captured=0,
            charge_id=None,
            failure_code=code,
            failure_message=message,
        )
        invoice.update(status="open", failure_code=code, failure_message=message)
    else:
        tx.effect(Effect.of("charge", key, pi["id"], due, sub["currency"]))
        tx.settle_later(sub["currency"], due, at=start)  # (charged as it began)
    if due:
        tx.put(pi)
    tx.put(invoice)
    sub["invoices"] = [*sub["invoices"], invoice["id"]]
    return invoice


def _proration_lines(sub: dict[str, Any], new: int, now: int) -> list[dict[str, Any]]:
    """The lines a change of ``sub``'s price to ``new`` at ``now`` makes (paystream.
    proration: Stripe's arithmetic), each with its tax by the subscription's rates (a
    credit's the negative of the same charge's). None during a trial (nothing paid to
    credit) or for a subscription never billed."""
    if sub["status"] == _SUB_TRIALING or not sub["periods_billed"]:
        return []
    start, end = _current_period(sub)
    lines = []
    for line in prorate(sub["amount"], new, sub["currency"], start, end, now):
        sign = -1 if line.amount < 0 else 1
        _, tax, total = _taxed(sub, abs(line.amount))
        lines.append(
            {
                "description": line.description,
                "amount": line.amount,
                "tax": sign * tax,
                "total": sign * total,
                "period_start": line.start,
                "period_end": line.end,
            }
        )
    return lines


def _taxed(sub: dict[str, Any], amount: int | None = None) -> tuple[int, int, int]:
    """A period's (subtotal, tax, total) by the subscription's tax rates, as kept when it
    was made (paystream.tax: Stripe Billing's arithmetic for default_tax_rates); of
    ``amount`` (a proration line's, >= 0) in place of its price if given."""
    price = sub["amount"] if amount is None else amount
    rates = [
        Rate(r["id"], parse_percentage(r["percentage"]), bool(r["inclusive"]))
        for r in sub.get("tax_rates") or ()
    ]
    if not rates:
        return price, 0, price
    # (each tax to the currency's chargeable increment: a KWD invoice stays chargeable)
    calc = calculate([Line(price, 1, rates)], sub["currency"])
    return calc.amount_subtotal, calc.amount_tax, calc.amount_total


async def _bill_due(tx: Tx, sub: dict[str, Any], now: int) -> bool:
    """Bill every period begun by ``now`` and not billed yet (each once: keyed by the
    subscription and the period), and end one to be canceled at its period's end.
    Whether anything changed."""
    changed = False
    attached: bool | None = None
    while sub["status"] not in (_SUB_CANCELED, _SUB_INCOMPLETE):
        k = sub["periods_billed"]
        start = period_start(sub, k)
        if start > now:
            break
        changed = True
        if sub["cancel_at_period_end"]:
            sub.update(status=_SUB_CANCELED, canceled_at=start)
            break
        if _paused_at(sub, start):
            # (Stripe's pause_collection ``void``: the period's invoice is voided, never
            # charged; here it is not made. The billing cycle goes on.)
            sub["periods_billed"] = k + 1
            continue
        if sub.get("pause") is not None:  # (its resumes_at came before this period)
            await _unpause(tx, sub)
        if attached is None:
            pm = await tx.get(sub["payment_method"])
            attached = pm is not None and pm.get("customer") == sub["customer"]
        _bill_period(tx, sub, k, f"sub:{sub['id']}:period:{k}", attached)
        sub["status"] = await _standing(tx, sub)
    resumes = (sub.get("pause") or {}).get("resumes_at")
    if resumes is not None and resumes <= now and sub["status"] == _SUB_PAUSED:
        await _unpause(tx, sub)  # (its resumes_at passed, no period begun since)
        changed = True
    return changed


def _paused_at(sub: dict[str, Any], at: int) -> bool:
    """Is ``sub``'s billing paused at ``at`` (paused, its resumes_at not reached)?"""
    pause = sub.get("pause")
    if pause is None:
        return False
    resumes = pause.get("resumes_at")
    return resumes is None or at < resumes


async def _unpause(tx: Tx, sub: dict[str, Any]) -> None:
    """Billing again: the pause cleared, its status as its invoices have it."""
    sub["pause"] = None
    sub["status"] = await _standing(tx, sub)


async def _standing(tx: Tx, sub: dict[str, Any]) -> str:
    """past_due while its newest invoice is open (its payment declined), else active: as
    Stripe's, which follows the latest finalized invoice. An older one left open (never
    retried here) keeps no subscription past_due once a later period is paid, on a card
    changed since (review h77i F5)."""
    newest = await tx.get(sub["invoices"][-1]) if sub["invoices"] else None
    if newest is not None and newest["status"] == "open":
        return _SUB_PAST_DUE
    return _SUB_ACTIVE


async def _subscription_answer(tx: Tx, sub: dict[str, Any]) -> dict[str, Any]:
    from paystream.gateways.base import INVOICES_LISTED_MAX

    listed = []
    for invoice_id in reversed(sub["invoices"][-INVOICES_LISTED_MAX:]):
        invoice = await tx.get(invoice_id)
        if invoice is not None:
            listed.append(invoice)
    return {"ok": results.subscription(sub, _current_period(sub), listed)}


async def create_subscription(tx: Tx, req: CreateSubscription, key: str) -> dict[str, Any]:
    _check_amount(req.amount)
    most = _MAX_INTERVAL_COUNT.get(req.interval)
    if most is None:
        raise _invalid(f"interval must be one of day, week, month, year, not {req.interval!r}")
    if not 1 <= req.interval_count <= most:
        raise _invalid(f"interval_count must be 1..{most} for interval {req.interval}")
    if not 0 <= req.trial_days <= _MAX_TRIAL_DAYS:
        raise _invalid(f"trial_days must be 0..{_MAX_TRIAL_DAYS}")
    problem = withdrawn_currency_problem(req.amount) or payment_parameters_problem(
        None, None, req.metadata
    )
    if problem is not None:
        raise _invalid(problem)
    if len({r.provider_tax_rate_id for r in req.tax_rates}) != len(req.tax_rates):
        raise _invalid("a tax rate is applied once")
    cus = await _must(tx, req.provider_customer_id, "customer")
    pm = await _must(tx, req.provider_payment_method_id, "payment_method")
    if pm["customer"] is None:
        raise _refuse(ErrorCode.INVALID_STATE, "a detached payment method cannot be used again")
    if pm["customer"] != req.provider_customer_id:
        raise _refuse(ErrorCode.INVALID_REQUEST, "the payment method belongs to another customer")
    tax_rates = []
    for ref in req.tax_rates:
        txr = await _must(tx, ref.provider_tax_rate_id, "tax_rate")
        if not txr["active"]:
            raise _refuse(ErrorCode.INVALID_STATE, f"tax rate {txr['id']} is archived")
        # (its own percentage and behaviour, as the provider holds them)
        tax_rates.append(
            {"id": txr["id"], "percentage": txr["percentage"], "inclusive": txr["inclusive"]}
        )
    now = await clock_now(tx)
    trial = req.trial_days > 0
    sub: dict[str, Any] = {
        "object": "subscription",
        "id": _new_id("sub"),
        "customer": req.provider_customer_id,
        "payment_method": pm["id"],
        "card": pm["card"],
        "amount": req.amount.amount,
        "currency": req.amount.currency,
        "interval": req.interval,
        "interval_count": req.interval_count,
        "status": _SUB_TRIALING if trial else _SUB_ACTIVE,
        "created": now,
        "anchor": now + req.trial_days * _DAY,
        "trial_end": now + req.trial_days * _DAY if trial else None,
        "periods_billed": 0,
        "invoices": [],
        "cancel_at_period_end": False,
        "canceled_at": None,
        "description": req.description,
        "metadata": dict(req.metadata),
        "tax_rates": tax_rates,
    }
    _check_amount(Money(amount=_taxed(sub)[2], currency=req.amount.currency))
    if trial:
        tx.effect(Effect.of("subscription.created", key, sub["id"]))
    else:
        # The first invoice, charged under the create's own key: a create redelivered is
        # answered from its key, never charged again.
        first = _bill_period(tx, sub, 0, key)
        if first["status"] == "open":
            sub["status"] = _SUB_INCOMPLETE  # never active; nothing more is billed
    tx.put(sub)
    # Listed on its customer, whose deletion cancels it (as Stripe's does).
    tx.put({**cus, "subscriptions": [*(cus.get("subscriptions") or ()), sub["id"]]})
    return await _subscription_answer(tx, sub)


async def _cancel_now(tx: Tx, sub: dict[str, Any], now: int) -> None:
    """Cancel ``sub`` at ``now``: nothing more billed, its open invoices voided."""
    sub.update(status=_SUB_CANCELED, canceled_at=now)
    for invoice_id in sub["invoices"]:
        invoice = await tx.get(invoice_id)
        if invoice is not None and invoice["status"] == "open":
            tx.put({**invoice, "status": "void"})


async def cancel_subscription(tx: Tx, req: CancelSubscription, key: str) -> dict[str, Any]:
    sub = await _must(tx, req.provider_subscription_id, "subscription")
    now = await clock_now(tx)
    await _bill_due(tx, sub, now)  # (what its clock billed before the cancel)
    if sub["status"] == _SUB_CANCELED:
        raise _refuse(ErrorCode.INVALID_STATE, "the subscription is canceled")
    if req.at_period_end:
        if sub["status"] == _SUB_INCOMPLETE:
            raise _refuse(
                ErrorCode.INVALID_STATE, "an incomplete subscription has no period to end"
            )
        sub["cancel_at_period_end"] = True
        tx.effect(Effect.of("subscription.cancel_scheduled", key, sub["id"]))
    else:
        await _cancel_now(tx, sub, now)
        tx.effect(Effect.of("subscription.canceled", key, sub["id"]))
    tx.put(sub)
    return await _subscription_answer(tx, sub)


async def update_subscription(tx: Tx, req: UpdateSubscription, key: str) -> dict[str, Any]:
    """Stripe's subscription update: the periods its clock began before are billed
    first, as they were; from then on every period (a trial's first one included) is
    billed at the new amount to the new payment method. A new amount with
    ``create_prorations``: the unused time's credit and the remaining time's charge
    (paystream.proration, at this call's time on its clock) pend for the next invoice;
    with ``always_invoice``: they are invoiced and charged now, under the update's key
    (once: a replay is answered from it), with any lines still pending from an earlier
    ``create_prorations`` (Stripe's invoice bills the pending invoice items). Declined,
    the update stands, the invoice stays open and the subscription goes past_due
    (Stripe's default payment_behavior for an update, allow_incomplete). During a trial
    nothing is prorated (nothing was paid)."""
    if req.amount is not None:
        _check_amount(req.amount)
    if req.proration is not None and req.proration not in PRORATIONS:
        raise _invalid("proration must be none, create_prorations or always_invoice")
    if req.proration is not None and req.amount is None:
        raise _invalid("proration needs a new amount")
    sub = await _must(tx, req.provider_subscription_id, "subscription")
    now = await clock_now(tx)
    await _bill_due(tx, sub, now)  # (what its clock billed before the change)
    if sub["status"] == _SUB_CANCELED:
        raise _refuse(ErrorCode.INVALID_STATE, "the subscription is canceled")
    if sub["status"] == _SUB_INCOMPLETE:
        raise _refuse(ErrorCode.INVALID_STATE, "an incomplete subscription cannot be updated")
    _check_trial_end(sub, req, now)
    lines: list[dict[str, Any]] = []
    if req.amount is not None:
        if req.amount.currency != sub["currency"]:
            raise _refuse(
                ErrorCode.INVALID_REQUEST,
                f"the subscription bills in {sub['currency']}, not {req.amount.currency}",
            )
        lines = [] if req.proration is None else _proration_lines(sub, req.amount.amount, now)
        sub["amount"] = req.amount.amount
        # (with its tax rates, each period's total is still a chargeable amount)
        _check_amount(Money(amount=_taxed(sub)[2], currency=sub["currency"]))
        if lines and req.proration == "create_prorations":
            sub["pending_prorations"] = [*(sub.get("pending_prorations") or ()), *lines]
    if req.provider_payment_method_id is not None:
        pm = await _must(tx, req.provider_payment_method_id, "payment_method")
        if pm["customer"] is None:
            raise _refuse(ErrorCode.INVALID_STATE, "a detached payment method cannot be used again")
        if pm["customer"] != sub["customer"]:
            raise _refuse(
                ErrorCode.INVALID_REQUEST, "the payment method belongs to another customer"
            )
        sub.update(payment_method=pm["id"], card=pm["card"])
    if req.cancel_at_period_end is not None:
        sub["cancel_at_period_end"] = req.cancel_at_period_end
    if lines and req.proration == "always_invoice":
        # (charged to the payment method just set, if one was: as Stripe, which applies
        # the whole update before it invoices)
        billed = await tx.get(sub["payment_method"])
        attached = billed is not None and billed.get("customer") == sub["customer"]
        start, end = lines[-1]["period_start"], lines[-1]["period_end"]
        # (its invoice bills the subscription's pending invoice items too, an earlier
        # create_prorations's lines: Stripe's invoice item "will be on the next invoice
        # created for the customer"; review h79r_e M1)
        swept = [*(sub.get("pending_prorations") or ()), *lines]
        sub["pending_prorations"] = []
        _invoice_of(tx, sub, key, start, end, (0, 0, 0), swept, attached)
        sub["status"] = await _standing(tx, sub)
    if req.trial_end == "now":
        # The trial ends now: its first period begins now (the billing anchor moved, as
        # Stripe's does), billed as a trial's end bills it, under the update's key (a
        # replay is answered from it, charged once), to the payment method just set if
        # one was; declined, the subscription is past_due (allow_incomplete).
        billed = await tx.get(sub["payment_method"])
        attached = billed is not None and billed.get("customer") == sub["customer"]
        sub.update(anchor=now, trial_end=now)
        _bill_period(tx, sub, 0, key, attached)
        sub["status"] = await _standing(tx, sub)
    elif req.trial_end is not None:
        # (moved: its first period, still unbilled, begins at the new end)
        sub.update(anchor=req.trial_end, trial_end=req.trial_end)
    tx.put(sub)
    tx.effect(Effect.of("subscription.updated", key, sub["id"]))
    return await _subscription_answer(tx, sub)


def _check_trial_end(sub: dict[str, Any], req: UpdateSubscription, now: int) -> None:
    """Stripe's rules for an update's ``trial_end``: a trialing subscription only (its
    periods due billed first: a trial over on the clock is over), ``now`` or a time
    ahead, at most 730 days from now. One to be canceled at its trial's end is refused
    an end now (which end would it cancel at?): resumed in the same update, it is not."""
    if req.trial_end is None:
        return
    if sub["status"] != _SUB_TRIALING:
        raise _refuse(
            ErrorCode.INVALID_STATE,
            f"the subscription is {sub['status']}: only a trialing subscription's trial "
            "can end or move",
        )
    if req.trial_end == "now":
        if sub["cancel_at_period_end"] and req.cancel_at_period_end is not False:
            raise _refuse(
                ErrorCode.INVALID_STATE,
                "the subscription is to be canceled at its trial's end: resume it to end "
                "its trial now",
            )
        return
    if not now < req.trial_end <= now + _MAX_TRIAL_DAYS * _DAY:
        raise _invalid(f"trial_end must be ahead, at most {_MAX_TRIAL_DAYS} days from now")


async def pause_subscription(tx: Tx, req: PauseSubscription, key: str) -> dict[str, Any]:
    """Stripe's ``pause_collection`` (``behavior: void``): the subscription's periods
    go on as before, but none begun while it is paused is billed (Stripe voids their
    invoices); ``resumes_at`` (ahead on its clock) ends the pause by itself. Periods
    its clock began before are billed first. Paused again, its resumes_at is replaced."""
    sub = await _must(tx, req.provider_subscription_id, "subscription")
    now = await clock_now(tx)
    if req.resumes_at is not None and req.resumes_at <= now:
        raise _invalid("resumes_at must be in the future")
    await _bill_due(tx, sub, now)  # (what its clock billed before the pause)
    if sub["status"] == _SUB_CANCELED:
        raise _refuse(ErrorCode.INVALID_STATE, "the subscription is canceled")
    if sub["status"] == _SUB_INCOMPLETE:
        raise _refuse(ErrorCode.INVALID_STATE, "an incomplete subscription cannot be paused")
    sub.update(pause={"resumes_at": req.resumes_at}, status=_SUB_PAUSED)
    tx.put(sub)
    tx.effect(Effect.of("subscription.paused", key, sub["id"]))
    return await _subscription_answer(tx, sub)


async def resume_subscription(tx: Tx, req: ResumeSubscription, key: str) -> dict[str, Any]:
    """Stripe's ``pause_collection`` cleared: billing resumes on the cycle it kept,
    nothing charged now (the next period is billed as it begins; Stripe's ``void``
    pause made no invoice to collect). One not paused is answered as it is (Stripe
    takes a clear of nothing)."""
    sub = await _must(tx, req.provider_subscription_id, "subscription")
    await _bill_due(tx, sub, await clock_now(tx))
    if sub["status"] == _SUB_CANCELED:
        raise _refuse(ErrorCode.INVALID_STATE, "the subscription is canceled")
    if sub.get("pause") is not None:
        await _unpause(tx, sub)
        tx.effect(Effect.of("subscription.resumed", key, sub["id"]))
    tx.put(sub)
    return await _subscription_answer(tx, sub)


async def retrieve_subscription(tx: Tx, req: RetrieveSubscription) -> dict[str, Any]:
    """The subscription as its clock has it now: periods begun since billed (a read
    that commits them, once), a cancel at period end taken effect."""
    sub = await _must(tx, req.provider_subscription_id, "subscription")
    if await _bill_due(tx, sub, await clock_now(tx)):
        tx.put(sub)
    return await _subscription_answer(tx, sub)


# ---- payouts and the balance --------------------------------------------------------
#
# The tenant's balance (store.Tx.settle_later): what a capture brings is pending for the
# settlement delay on the tenant's clock, then available; refunds take from available,
# and a dispute its amount and fee as it opens, its amount given back if won (below zero
# if need be, as Stripe's); a payout takes its amount from
# available when made (refused above it: balance_insufficient) and gives it back when
# canceled or failed. A standard payout is in transit a day after it is made and arrives
# a day later; an instant one arrives at once. Its status moves when it is read (or a
# cancel is tried), as subscriptions' renewals do, on the tenant's clock.

# Stripe's test bank account numbers for payouts (its Connect testing docs): the payout
# fails with the code; any other number is paid.
PAYOUT_TEST_ACCOUNTS: dict[str, tuple[str, str]] = {
    "000111111116": (
        "no_account",
        "The bank account details on file are probably incorrect: no bank account "
        "could be located with those details.",
    ),
    "000111111113": ("account_closed", "The bank account has been closed."),
    "000222222227": (
        "insufficient_funds",
        "The payout could not be completed: the account has insufficient funds to cover it.",
    ),
    "000333333335": (
        "debit_not_authorized",
        "Debit transactions are not approved on the bank account.",
    ),
    "000444444440": (
        "invalid_currency",
        "The bank was unable to process this payout because of its currency.",
    ),
}
_IN_TRANSIT_AFTER = _DAY
_STANDARD_ARRIVAL = 2 * _DAY
_PAYOUT_METHODS = frozenset({"standard", "instant"})


def _advance_payout(tx: Tx, po: dict[str, Any], now: int) -> bool:
    """Move ``po`` on to where the clock has it by ``now`` (in transit, paid, or failed
    at arrival: its amount available again). Whether it changed."""
    before = po["status"]
    if before not in ("pending", "in_transit"):
        return False
    if now >= po["arrival_date"]:
        if po.get("fails_as"):
            code, message = po["fails_as"]
            po.update(status="failed", failure_code=code, failure_message=message)
            tx.adjust_available(po["currency"], po["amount"])
            tx.effect(
                Effect.of("payout.failed", f"payout:{po['id']}:failed", po["id"],
                          po["amount"], po["currency"])
            )  # fmt: skip
        else:
            po["status"] = "paid"
    elif now >= po["in_transit_at"]:
        po["status"] = "in_transit"
    return po["status"] != before


async def create_payout(
    tx: Tx, req: CreatePayout, key: str, destination: str = "000123456789"
) -> dict[str, Any]:
    """A payout to ``destination`` (the tenant's bank account: its option)."""
    if req.amount.amount < 1:
        raise _invalid("amount must be at least 1 minor unit")
    if req.method not in _PAYOUT_METHODS:
        raise _invalid(f"method must be standard or instant, not {req.method!r}")
    descriptor = req.statement_descriptor
    problem = None if descriptor is None else payout_descriptor_problem(descriptor)
    if problem is not None:
        raise _invalid(f"statement_descriptor: {problem}")
    # (Stripe's amount rules, the Stripe gateway's own: what passes here passes there)
    problem = payout_amount_problem(req.amount) or payment_parameters_problem(
        None, None, req.metadata
    )
    if problem is not None:
        raise _invalid(problem)
    currency, amount = req.amount.currency, req.amount.amount
    _, balance = await tx.read_balance()
    now = await clock_now(tx)  # (read in the transaction: an advance meanwhile recomputes)
    available = balance.get(currency, (0, 0))[0]
    if amount > available:
        raise _refuse(
            ErrorCode.BALANCE_INSUFFICIENT,
            f"You have insufficient funds in your {PROVIDER} account for this payout: "
            f"{format_minor(available, currency)} available",
        )
    instant = req.method == "instant"
    po: dict[str, Any] = {
        "object": "payout",
        "id": _new_id("po"),
        "amount": amount,
        "currency": currency,
        "method": req.method,
        "status": "in_transit" if instant else "pending",
        "created": now,
        "in_transit_at": now if instant else now + _IN_TRANSIT_AFTER,
        "arrival_date": now if instant else now + _STANDARD_ARRIVAL,
        "destination": destination,
        "fails_as": PAYOUT_TEST_ACCOUNTS.get(destination),
        "failure_code": None,
        "failure_message": None,
        "description": req.description,
        "statement_descriptor": descriptor,
        "metadata": dict(req.metadata),
    }
    tx.require_available(currency, amount, now)
    tx.adjust_available(currency, -amount)
    tx.put(po)
    tx.effect(Effect.of("payout.created", key, po["id"], amount, currency))
    return {"ok": results.payout(po)}


async def cancel_payout(tx: Tx, req: CancelPayout, key: str) -> dict[str, Any]:
    po = await _must(tx, req.provider_payout_id, "payout")
    _advance_payout(tx, po, await clock_now(tx))
    if po["status"] != "pending":
        # (what the clock moved it to meanwhile is not kept: a refusal writes nothing,
        # and the next read moves it again)
        raise _refuse(ErrorCode.INVALID_STATE, f"cannot cancel a payout that is {po['status']}")
    po["status"] = "canceled"
    tx.adjust_available(po["currency"], po["amount"])
    tx.put(po)
    tx.effect(Effect.of("payout.canceled", key, po["id"], po["amount"], po["currency"]))
    return {"ok": results.payout(po)}


async def retrieve_payout(tx: Tx, req: RetrievePayout) -> dict[str, Any]:
    """The payout as the clock has it now (a read that commits its moves, once)."""
    po = await _must(tx, req.provider_payout_id, "payout")
    if _advance_payout(tx, po, await clock_now(tx)):
        tx.put(po)
    return {"ok": results.payout(po)}


async def retrieve_balance(tx: Tx, req: RetrieveBalance) -> dict[str, Any]:
    _, balance = await tx.read_balance()
    return {
        "ok": {
            "balances": [
                {"currency": cur, "available": available, "pending": pending}
                for cur, (available, pending) in sorted(balance.items())
            ]
        }
    }


# ---- tax rates ----------------------------------------------------------------------


async def create_tax_rate(tx: Tx, req: CreateTaxRate, key: str) -> dict[str, Any]:
    try:
        parse_percentage(req.percentage)
    except ValueError as exc:
        raise _invalid(str(exc)) from None
    if not req.display_name or len(req.display_name) > 50:
        raise _invalid("display_name is 1 to 50 characters")
    problem = payment_parameters_problem(None, None, req.metadata)
    if problem is not None:
        raise _invalid(problem)
    txr = {
        "object": "tax_rate",
        "id": _new_id("txr"),
        "active": True,
        **req.model_dump(mode="json"),
    }
    tx.put(txr)
    tx.effect(Effect.of("tax_rate.created", key, txr["id"]))
    return {"ok": results.tax_rate(txr)}


async def archive_tax_rate(tx: Tx, req: ArchiveTaxRate, key: str) -> dict[str, Any]:
    txr = await _must(tx, req.provider_tax_rate_id, "tax_rate")
    if not txr["active"]:
        raise _refuse(ErrorCode.INVALID_STATE, "the tax rate is archived already")
    txr = {**txr, "active": False}
    tx.put(txr)
    tx.effect(Effect.of("tax_rate.archived", key, txr["id"]))
    return {"ok": results.tax_rate(txr)}


# ---- connected accounts ---------------------------------------------------------------
#
# A new account is `pending` as Stripe's are: nothing enabled, nothing submitted, its
# requirements currently due. Its holder "onboards" once an account link is made for it
# (the simulator has no browser): as its email's tag says, `+enabled` (charges and
# payouts enabled, nothing due), `+restricted` (submitted; a document still due, past
# due: neither enabled) or `+rejected` (rejected.fraud). Without a tag the holder never
# finishes: the account stays pending. (`SimulatorGateway.complete_onboarding` moves one
# by hand, as the holder's visit would.)

ONBOARDING_TAGS = ("enabled", "restricted", "rejected")
_ACCOUNT_LINK_SECONDS = 300  # Stripe's account links expire after a few minutes
# What a new account must still give (Stripe's requirement names; none of their values).
_DUE_ALWAYS = ("business_profile.url", "external_account", "tos_acceptance.date",
               "tos_acceptance.ip")  # fmt: skip
_DUE_BY_TYPE = {
    None: ("business_type",),
    "individual": ("individual.dob.day", "individual.first_name", "individual.last_name"),
    "company": ("company.name", "company.tax_id", "representative.first_name"),
    "non_profit": ("company.name", "company.tax_id", "representative.first_name"),
    "government_entity": ("company.name", "representative.first_name"),
}
_ONBOARDED: dict[str, dict[str, Any]] = {
    "enabled": {"charges_enabled": True, "payouts_enabled": True, "details_submitted": True,
                "currently_due": [], "disabled_reason": None},
    "restricted": {"charges_enabled": False, "payouts_enabled": False,
                   "details_submitted": True,
                   "currently_due": ["individual.verification.document"],
                   "disabled_reason": "requirements.past_due"},
    "rejected": {"charges_enabled": False, "payouts_enabled": False, "details_submitted": True,
                 "currently_due": [], "disabled_reason": "rejected.fraud"},
}  # fmt: skip


def _onboarded(acct: dict[str, Any], outcome: str) -> dict[str, Any]:
    """The account once its holder finished onboarding as ``outcome``: as Stripe, one
    that requested ``transfers`` alone (a recipient: it "can't process payments") never
    has its charges enabled (review h79r_a L3)."""
    done = {**acct, **_ONBOARDED[outcome]}
    if not account_takes_charges(list(acct.get("capabilities") or [])):
        done["charges_enabled"] = False
    return done


def _transfers_active(acct: dict[str, Any]) -> bool:
    """Stripe's ``transfers`` capability: requested (or the defaults, none named) and the
    account's onboarding finished (its payouts enabled: nothing disables it)."""
    capabilities = acct.get("capabilities") or []
    return bool(acct["payouts_enabled"]) and (not capabilities or "transfers" in capabilities)


def onboarding_tag(email: str | None) -> str | None:
    """The onboarding an account's email asks the simulator for (``+enabled`` etc. in
    its local part), or None."""
    local = (email or "").partition("@")[0].lower()
    return next((tag for tag in ONBOARDING_TAGS if f"+{tag}" in local), None)


async def create_connected_account(tx: Tx, req: CreateConnectedAccount, key: str) -> dict[str, Any]:
    if not re.fullmatch(r"[A-Z]{2}", req.country):
        raise _invalid("country must be an ISO 3166-1 alpha-2 code")
    if req.business_type is not None and req.business_type not in ACCOUNT_BUSINESS_TYPES:
        raise _invalid(f"business_type may not be {req.business_type!r}")
    unknown = set(req.capabilities) - ACCOUNT_CAPABILITIES
    if unknown:
        raise _invalid(f"capabilities not requestable: {', '.join(sorted(unknown))}")
    if req.type is ConnectedAccountType.CUSTOM and not req.capabilities:
        raise _invalid(custom_account_capabilities_problem())  # (as Stripe refuses it)
    problem = payment_parameters_problem(None, None, req.metadata)
    if problem is not None:
        raise _invalid(problem)
    acct = {
        "object": "account",
        "id": _new_id("acct"),
        **req.model_dump(mode="json"),
        "onboards_as": onboarding_tag(req.email),
        "charges_enabled": False,
        "payouts_enabled": False,
        "details_submitted": False,
        "currently_due": sorted({*_DUE_ALWAYS, *_DUE_BY_TYPE[req.business_type]}),
        "disabled_reason": "requirements.past_due",
    }
    tx.put(acct)
    tx.effect(Effect.of("account.created", key, acct["id"]))
    return {"ok": results.connected_account(acct)}


async def create_account_link(tx: Tx, req: CreateAccountLink, key: str) -> dict[str, Any]:
    for name, url in (("refresh_url", req.refresh_url), ("return_url", req.return_url)):
        problem = account_link_url_problem(name, url)
        if problem is not None:
            raise _invalid(problem)
    acct = await _must(tx, req.provider_account_id, "account")
    onboards_as = acct.get("onboards_as")
    if onboards_as is not None and not acct["details_submitted"]:
        tx.put(_onboarded(acct, onboards_as))  # (its holder's visit, at once)
    now = await clock_now(tx)
    url = f"https://connect.simulator.invalid/setup/{acct['id']}/{_new_id('al')}"
    tx.effect(Effect.of("account_link.created", key, acct["id"]))
    return {"ok": {"url": url, "expires_at": now + _ACCOUNT_LINK_SECONDS}}


async def retrieve_connected_account(tx: Tx, req: RetrieveConnectedAccount) -> dict[str, Any]:
    return {"ok": results.connected_account(await _must(tx, req.provider_account_id, "account"))}


async def complete_onboarding(tx: Tx, account_id: str, outcome: str) -> dict[str, Any]:
    """The holder finishes onboarding as ``outcome`` (one of ONBOARDING_TAGS)."""
    if outcome not in _ONBOARDED:
        raise _invalid(f"outcome must be one of {', '.join(ONBOARDING_TAGS)}")
    acct = _onboarded(await _must(tx, account_id, "account"), outcome)
    tx.put(acct)
    return {"ok": results.connected_account(acct)}


# ---- transfers (separate charges and transfers) ---------------------------------------
#
# As Stripe's Transfer: money of the platform's moved to a connected account that can
# take it. Without a source_transaction it is taken from the available balance (more than
# is available: balance_insufficient, nothing moved); with one (a charge of the
# platform's, succeeded) from that charge's funds, at most what is left of it (captured,
# less refunded, less transferred from it; a reversal gives back to it), whatever the
# available balance holds: taken from available at once, below zero until the charge's
# funds settle. A reversal gives its amount back to available.


def _transferred_from(pi: dict[str, Any]) -> int:
    return int(pi.get("source_transferred", 0))


async def create_transfer(tx: Tx, req: CreateTransfer, key: str) -> dict[str, Any]:
    currency, amount = req.amount.currency, req.amount.amount
    if amount < 1:
        raise _invalid("amount must be at least 1 minor unit")
    problem = payment_parameters_problem(None, None, req.metadata)
    if problem is not None:
        raise _invalid(problem)
    acct = await tx.get(req.destination_account)
    if acct is None or acct.get("object") != "account":
        raise _refuse(ErrorCode.NOT_FOUND, f"No such destination: '{req.destination_account}'")
    # (The transfers capability alone, as Stripe: a recipient's charges are never
    # enabled, and it takes transfers.)
    if not _transfers_active(acct):
        raise _invalid(
            f"the destination account {acct['id']} cannot receive transfers (its transfers "
            "capability is not active)"
        )
    pi = None
    if req.source_payment_id is not None:
        pi = await _must(tx, req.source_payment_id, "payment_intent")
        if pi["status"] != _SUCCEEDED or pi.get("destination") is not None:
            raise _invalid(
                f"source_transaction {pi['charge_id']} must be a succeeded charge without "
                "transfer_data"
            )
        if pi["currency"] != currency:
            raise _invalid(f"the source_transaction is in {pi['currency']}, not {currency}")
        left = pi["amount_captured"] - pi["amount_refunded"] - _transferred_from(pi)
        if amount > left:
            raise _invalid(
                f"the transfer amount {amount} exceeds what is left of the source_transaction "
                f"({max(left, 0)})"
            )
    now = await clock_now(tx)
    if pi is None:
        _, balance = await tx.read_balance()
        available = balance.get(currency, (0, 0))[0]
        if amount > available:
            raise _refuse(
                ErrorCode.BALANCE_INSUFFICIENT,
                f"You have insufficient funds in your {PROVIDER} account for this transfer: "
                f"{format_minor(available, currency)} available",
            )
        tx.require_available(currency, amount, now)
    else:
        tx.put({**pi, "source_transferred": _transferred_from(pi) + amount})
    tr: dict[str, Any] = {
        "object": "transfer",
        "id": _new_id("tr"),
        "amount": amount,
        "currency": currency,
        "amount_reversed": 0,
        "destination": acct["id"],
        "source_payment": None if pi is None else pi["id"],
        "source_transaction": None if pi is None else pi["charge_id"],
        "transfer_group": req.transfer_group,
        "description": req.description,
        "metadata": dict(req.metadata),
        "created": now,
    }
    tx.adjust_available(currency, -amount)
    tx.put(tr)
    tx.effect(Effect.of("transfer.created", key, tr["id"], amount, currency))
    return {"ok": results.transfer(tr)}


async def reverse_transfer(tx: Tx, req: ReverseTransfer, key: str) -> dict[str, Any]:
    tr = await _must(tx, req.provider_transfer_id, "transfer")
    left = tr["amount"] - tr["amount_reversed"]
    amount = left if req.amount is None else req.amount
    if left <= 0:
        raise _invalid(f"transfer {tr['id']} has already been fully reversed")
    if not 1 <= amount <= left:
        raise _invalid(f"reversal amount {amount} must be between 1 and the unreversed {left}")
    problem = payment_parameters_problem(None, None, req.metadata)
    if problem is not None:
        raise _invalid(problem)
    tr["amount_reversed"] += amount
    if tr.get("source_payment") is not None:
        pi = await tx.get(tr["source_payment"])
        if pi is not None:
            tx.put({**pi, "source_transferred": max(0, _transferred_from(pi) - amount)})
    tx.adjust_available(tr["currency"], amount)
    tx.put(tr)
    tx.effect(Effect.of("transfer.reversed", key, tr["id"], amount, tr["currency"]))
    return {"ok": results.transfer(tr)}


async def retrieve_transfer(tx: Tx, req: RetrieveTransfer) -> dict[str, Any]:
    """The transfer now: its reversals, paystream's or made outside it, counted."""
    return {"ok": results.transfer(await _must(tx, req.provider_transfer_id, "transfer"))}
