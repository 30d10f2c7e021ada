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
from paystream.tables.records import CUSTOMER_PII_FIELDS
from paystream.tenancy.models import TENANT_ID_PATTERN

__all__ = ["PII_FIELDS", "EntityType", "LedgerEvent"]

_TENANT_ID = re.compile(TENANT_ID_PATTERN)

# Customer fields that are personal data: encrypted under the customer's key, never plain,
# so that erasure (deleting the key) shreds them in stored events too. Every field the
# pipeline itself scrubs on erasure is one.
PII_FIELDS: tuple[str, ...] = tuple(
    dict.fromkeys(("email", "name", "address", "phone", *CUSTOMER_PII_FIELDS))
)

# Keys that only ever hold card data; refusing them is a last line of defence, since
# paystream should never have received a PAN or CVC in the first place.
_CARD_KEYS = frozenset({"card_number", "cardnumber", "pan", "cvc", "cvv", "cvc2", "cvv2"})
_PAN_LIKE = re.compile(r"[0-9][0-9 -]{10,22}[0-9]")


class EntityType(StrEnum):
    """Entities whose latest state the ledger keeps."""

    CUSTOMER = "customer"
    PAYMENT_METHOD = "payment_method"
    PAYMENT = "payment"
    REFUND = "refund"
    DISPUTE = "dispute"


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
    },
    EntityType.REFUND: {
        "payment_id": (str, False),
        "amount": (int, True),
        "currency": (str, True),
        "status": (str, True),
        "reason": (str, False),
        "provider_refund_id": (str, False),
        "failure_code": (str, False),
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
}
_DEFAULTS: dict[str, Any] = {"amount_captured": 0, "amount_refunded": 0}


def _check_no_card_data(event_id: str, value: Any, path: str = "data") -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            name = str(key).lower()
            if name in _CARD_KEYS or (
                name == "number" and isinstance(item, str) and _PAN_LIKE.fullmatch(item)
            ):
                raise ForbiddenDataError(event_id, f"{path}.{key} looks like card data")
            _check_no_card_data(event_id, item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_no_card_data(event_id, item, f"{path}[{i}]")


def _coerce(name: str, kind: type, value: Any) -> Any:
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer")
        if name.startswith("amount") and not 0 <= value <= MAX_MINOR_AMOUNT:
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
        try:
            object.__setattr__(self, "entity_type", EntityType(self.entity_type))
            if not _TENANT_ID.fullmatch(self.tenant_id):
                raise ValueError(f"invalid tenant id {self.tenant_id!r}")
            if not self.event_id or not self.entity_id:
                raise ValueError("event_id and entity_id are required")
            if isinstance(self.version, bool) or not isinstance(self.version, int):
                raise ValueError("version must be an integer")
            if self.version < 0:
                raise ValueError("version must be >= 0")
            if self.time.tzinfo is None:
                raise ValueError("time must be timezone-aware")
            columns: dict[str, Any] = {}
            for name, (kind, required) in _FIELDS[self.entity_type].items():
                value = self.data.get(name, _DEFAULTS.get(name))
                if value is None:
                    if required:
                        raise ValueError(f"data.{name} is required")
                    columns[name] = None
                else:
                    columns[name] = _coerce(name, kind, value)
        except ValueError as exc:
            raise InvalidEventError(self.event_id, str(exc)) from exc
        _check_no_card_data(self.event_id, self.data)
        object.__setattr__(self, "columns", columns)
