"""LedgerEvent: one outcome event as the ledger stores it, validated before any SQL runs."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from paystream.ledger.errors import ForbiddenDataError, InvalidEventError
from paystream.money import MAX_MINOR_AMOUNT, normalise_currency
from paystream.streams.pan import contains_card_number, redact_card_numbers, security_code_at
from paystream.tables.records import CUSTOMER_PII_FIELDS
from paystream.tax import PERCENTAGE_PATTERN
from paystream.tenancy.models import TENANT_ID_PATTERN

__all__ = ["PII_FIELDS", "EntityType", "LedgerEvent"]

_TENANT_ID = re.compile(TENANT_ID_PATTERN)
_PERCENTAGE = re.compile(PERCENTAGE_PATTERN)
# The pipeline's own bound on command ids (outcome ids and entity ids are shorter).
ID_MAX_CHARS = 255

# Customer fields that are personal data: encrypted under the customer's key, never plain,
# so that erasure (deleting the key) shreds them in stored events too. Every field the
# pipeline itself scrubs on erasure is one.
PII_FIELDS: tuple[str, ...] = tuple(
    dict.fromkeys(("email", "name", "address", "phone", *CUSTOMER_PII_FIELDS))
)


class EntityType(StrEnum):
    """Entities whose latest state the ledger keeps."""

    CUSTOMER = "customer"
    PAYMENT_METHOD = "payment_method"
    PAYMENT = "payment"
    REFUND = "refund"
    DISPUTE = "dispute"
    # Tables of their own since migration 0013 (their events stored before it are
    # applied by `paystream ledger backfill`).
    SUBSCRIPTION = "subscription"
    INVOICE = "invoice"
    # A table of its own since migration 0014 (its events stored before it are applied
    # by `paystream ledger backfill`).
    PAYOUT = "payout"
    # Tables of their own since migration 0015 (their events stored before it are applied
    # by `paystream ledger backfill`).
    TAX_RATE = "tax_rate"
    TAX_CALCULATION = "tax_calculation"
    # A table of its own since migration 0016, which came with the entity (no events of
    # it were stored before: nothing to backfill).
    CONNECTED_ACCOUNT = "connected_account"
    # In the events table only (no table of its own: a later migration may add one and
    # backfill it from these events).
    TRANSFER = "transfer"


# Column -> (python type, required) per entity; the row's other columns are bookkeeping.
_FIELDS: dict[EntityType, dict[str, tuple[type, bool]]] = {
    EntityType.CUSTOMER: {"provider_customer_id": (str, False)},
    EntityType.PAYMENT_METHOD: {
        "customer_id": (str, False),
        "provider": (str, False),
        "provider_token": (str, False),
        "brand": (str, False),
        "last4": (str, False),
        "exp_month": (int, False),
        "exp_year": (int, False),
        "fingerprint": (str, False),
        "status": (str, False),
    },
    EntityType.PAYMENT: {
        "customer_id": (str, False),
        "payment_method_id": (str, False),
        "amount": (int, True),
        "currency": (str, True),
        "status": (str, True),
        "amount_captured": (int, False),
        "amount_refunded": (int, False),
        "provider": (str, False),
        "provider_payment_id": (str, False),
        "failure_code": (str, False),
        # (0015: written only when set: a payment naming a tax calculation)
        "amount_tax": (int, False),
        "tax_calculation_id": (str, False),
        # (0017: written only when set: a destination charge)
        "connected_account_id": (str, False),
        "application_fee_amount": (int, False),
    },
    EntityType.REFUND: {
        "payment_id": (str, False),
        "amount": (int, True),
        "currency": (str, True),
        "status": (str, True),
        "reason": (str, False),
        "provider_refund_id": (str, False),
        "failure_code": (str, False),
        # (0018: written only when set: a destination charge's refund options)
        "reverse_transfer": (bool, False),
        "refund_application_fee": (bool, False),
    },
    EntityType.DISPUTE: {
        "payment_id": (str, False),
        "amount": (int, True),
        "currency": (str, True),
        "status": (str, True),
        "reason": (str, False),
        "provider_dispute_id": (str, False),
        "evidence_due_by": (datetime, False),
    },
    EntityType.SUBSCRIPTION: {
        "customer_id": (str, False),
        "payment_method_id": (str, False),
        "amount": (int, True),
        "currency": (str, True),
        "status": (str, True),
        "interval": (str, False),
        "interval_count": (int, False),
        "trial_end": (datetime, False),
        "current_period_start": (datetime, False),
        "current_period_end": (datetime, False),
        "cancel_at_period_end": (bool, False),
        "canceled_at": (datetime, False),
        "latest_invoice_id": (str, False),
        "provider": (str, False),
        "provider_subscription_id": (str, False),
        "tax_rate_ids": (list, False),  # (0015)
    },
    EntityType.INVOICE: {
        "subscription_id": (str, False),
        "customer_id": (str, False),
        "amount": (int, True),
        "currency": (str, True),
        "status": (str, True),
        "period_start": (datetime, False),
        "period_end": (datetime, False),
        "provider": (str, False),
        "provider_invoice_id": (str, False),
        "provider_payment_id": (str, False),
        "failure_code": (str, False),
        "created_by": (str, False),
        # (0015: an invoice of a taxed subscription; its total is ``amount``)
        "subtotal": (int, False),
        "tax": (int, False),
    },
    EntityType.PAYOUT: {
        "amount": (int, True),
        "currency": (str, True),
        "status": (str, True),
        "method": (str, False),
        "arrival_date": (datetime, False),
        "failure_code": (str, False),
        "failure_message": (str, False),
        "description": (str, False),
        "statement_descriptor": (str, False),
        "metadata": (dict, False),
        "provider": (str, False),
        "provider_payout_id": (str, False),
        "created_by": (str, False),
    },
    EntityType.TAX_RATE: {
        "status": (str, True),
        "display_name": (str, False),
        "percentage": (str, True),  # the decimal string it was made with (never a float)
        "inclusive": (bool, True),
        "country": (str, False),
        "state": (str, False),
        "jurisdiction": (str, False),
        "tax_type": (str, False),
        "description": (str, False),
        "metadata": (dict, False),
        "provider": (str, False),
        "provider_tax_rate_id": (str, False),
        "created_by": (str, False),
    },
    EntityType.TAX_CALCULATION: {
        "currency": (str, True),
        "amount_subtotal": (int, True),
        "amount_tax": (int, True),
        "amount_tax_inclusive": (int, False),
        "amount_tax_exclusive": (int, False),
        "amount_total": (int, True),
        "tax_by_rate": (dict, False),
        "line_items": (list, False),
        "expires_at": (datetime, False),
        "provider": (str, False),
        "created_by": (str, False),
    },
    EntityType.TRANSFER: {
        "status": (str, True),
        "amount": (int, True),
        "currency": (str, True),
        "amount_reversed": (int, False),
        "connected_account_id": (str, False),
        "payment_id": (str, False),
        "transfer_group": (str, False),
        "description": (str, False),
        "metadata": (dict, False),
        "provider": (str, False),
        "provider_transfer_id": (str, False),
        "created_by": (str, False),
    },
    EntityType.CONNECTED_ACCOUNT: {
        "status": (str, True),
        "type": (str, False),
        "country": (str, False),
        "business_type": (str, False),
        "capabilities": (list, False),
        "metadata": (dict, False),
        "provider": (str, False),
        "provider_account_id": (str, False),
        "charges_enabled": (bool, False),
        "payouts_enabled": (bool, False),
        "details_submitted": (bool, False),
        "currently_due": (list, False),
        "disabled_reason": (str, False),
        "created_by": (str, False),
    },
}
_DEFAULTS: dict[str, Any] = {
    "amount_captured": 0,
    "amount_refunded": 0,
    "cancel_at_period_end": False,
}


# The provider's own free text (redirect URLs, bank transfer references): the pipeline
# never scanned it, and a long reference can pass Luhn by chance.
_PROVIDER_TEXT = frozenset({"next_action"})


# paystream's own outcomes nest a few levels (an entity's metadata inside its snapshot
# inside the outcome); JSON parsers take up to 1024, which recursion cannot walk.
MAX_DEPTH = 64


def _deeper_than(value: Any, limit: int, skip: frozenset[str] = _PROVIDER_TEXT) -> bool:
    """Does ``value`` nest containers more than ``limit`` deep, but under its own keys
    ``skip``? (No recursion.)"""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Mapping | list):
            if depth >= limit:
                return True
            children = (
                [v for k, v in item.items() if depth or k not in skip]
                if isinstance(item, Mapping)
                else item
            )
            stack.extend((child, depth + 1) for child in children)
    return False


def _client_data(value: Any) -> Any:
    """What is scanned of the data: all but the provider's own part of a next action, the
    snapshot's own (one nested elsewhere, in metadata say, is scanned whole: review
    h64h)."""
    if isinstance(value, Mapping):
        return {
            k: _provider_part(v) if k in _PROVIDER_TEXT else _scanned(v) for k, v in value.items()
        }
    return _scanned(value)


def _scanned(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _scanned(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scanned(v) for v in value]
    return value


def _provider_part(action: Any) -> Any:
    """What is scanned of a next action: its type, or all of one that is no mapping (no
    provider sends that). Stored whole, unscanned, a string or a type held a card number
    (review h64f)."""
    if isinstance(action, Mapping):
        return {"type": _scanned(action.get("type"))}
    return _scanned(action)


def _check_no_card_data(event_id: str, value: Any) -> None:
    """A last line of defence, by the pipeline's own rules (paystream refuses such commands
    before they run): a Luhn-valid card number anywhere, or a card security code under a
    key naming one. (Key names alone refused ordinary data: an Indian tax id under "pan",
    a phone number under "number", parked for good with every later event of the
    customer.)"""
    if _deeper_than(value, MAX_DEPTH):
        # Not walked (recursion): unchecked, it is treated as holding card data (parked
        # without its bytes; the source header says where the outcome is).
        raise ForbiddenDataError(
            event_id, f"nested deeper than {MAX_DEPTH} levels: not checked for card data"
        )
    if _deeper_than(value, MAX_DEPTH, skip=frozenset()):
        # The provider's own part, not scanned, is no deeper: the database's JSON encoder
        # recurses, and an outcome it cannot encode would be retried for ever.
        raise InvalidEventError(event_id, f"nested deeper than {MAX_DEPTH} levels")
    value = _client_data(value)
    if contains_card_number(value):
        raise ForbiddenDataError(event_id, "the data holds a card number")
    if (key := security_code_at(value)) is not None:
        raise ForbiddenDataError(event_id, f"{key!r} holds a card security code")


# Money in minor units besides the ``amount*`` fields (an invoice's subtotal and tax).
_MONEY = frozenset({"subtotal", "tax"})


def _coerce(name: str, kind: type, value: Any) -> Any:
    if kind is list:
        if not isinstance(value, list):
            raise ValueError(f"{name} must be a list")
        return list(value)
    if kind is dict:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise ValueError(f"{name} must be an object")
        return dict(value)
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be a boolean")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer")
        if (name.startswith("amount") or name in _MONEY) and not 0 <= value <= MAX_MINOR_AMOUNT:
            raise ValueError(f"{name} out of range")
        if name == "exp_month" and not 1 <= value <= 12:
            raise ValueError("exp_month must be 1..12")
        if name == "exp_year" and not 2000 <= value <= 2200:
            raise ValueError("exp_year must be a four-digit year")
        return value
    if kind is datetime:
        parsed = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
        if parsed.tzinfo is None:
            raise ValueError(f"{name} must carry a timezone")
        return parsed
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string")
    if name == "currency":
        return normalise_currency(value)
    if name == "percentage" and not _PERCENTAGE.fullmatch(value):
        raise ValueError("percentage must be a decimal string from 0 to 100")
    if name == "last4" and not re.fullmatch(r"[0-9]{4}", value):
        raise ValueError("last4 must be four digits")
    return value


@dataclass(frozen=True)
class LedgerEvent:
    """An outcome event: the entity snapshot in ``data`` at sequence number ``version``."""

    event_id: str
    type: str
    tenant_id: str
    causation_id: str | None
    time: datetime
    entity_type: EntityType
    entity_id: str
    version: int
    data: Mapping[str, Any]
    actor: str = "system:ledger-sink"
    columns: Mapping[str, Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # First: an event refused for another reason is parked with its bytes.
        _check_no_card_data(self.event_id, self.data)
        # Its names are stored too, as columns, keys and (type, entity id) in the
        # append-only audit log (review h64f: only the data was scanned).
        names = [self.event_id, self.type, self.causation_id, self.entity_id]
        if contains_card_number([n for n in names if isinstance(n, str)]):
            raise ForbiddenDataError(
                redact_card_numbers(str(self.event_id)), "an id or the type holds a card number"
            )
        try:
            object.__setattr__(self, "entity_type", EntityType(self.entity_type))
            if not _TENANT_ID.fullmatch(self.tenant_id):
                raise ValueError(f"invalid tenant id {self.tenant_id!r}")
            if not self.event_id or not self.entity_id:
                raise ValueError("event_id and entity_id are required")
            if max(len(self.event_id), len(self.entity_id), len(self.causation_id or "")) > (
                ID_MAX_CHARS
            ):
                # An index row has a size limit: a longer id would fail its batch for ever.
                raise ValueError(f"ids are at most {ID_MAX_CHARS} characters")
            if isinstance(self.version, bool) or not isinstance(self.version, int):
                raise ValueError("version must be an integer")
            if self.version < 0:
                raise ValueError("version must be >= 0")
            if self.time.tzinfo is None:
                raise ValueError("time must be timezone-aware")
            columns: dict[str, Any] = {}
            for name, (kind, required) in _FIELDS[self.entity_type].items():
                value = self.data.get(name, _DEFAULTS.get(name))
                if value is None and kind is dict:
                    value = {}  # (a payout's or tax rate's metadata: none is an empty object)
                if value is None:
                    if required:
                        raise ValueError(f"data.{name} is required")
                    columns[name] = None
                else:
                    columns[name] = _coerce(name, kind, value)
        except ValueError as exc:
            raise InvalidEventError(self.event_id, str(exc)) from exc
        object.__setattr__(self, "columns", columns)
