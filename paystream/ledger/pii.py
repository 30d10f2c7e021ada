"""Sealing customer personal data under the customer's data key (and opening it again)."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from paystream.ledger.events import PII_FIELDS
from paystream.tenancy.crypto import aad, decrypt, encrypt

__all__ = [
    "CUSTOMER_PII_COLUMNS",
    "ERASED",
    "open_customer_columns",
    "open_event_data",
    "seal_customer_columns",
    "seal_event_data",
]

# Customer row columns holding ciphertext, by the data field they encrypt.
CUSTOMER_PII_COLUMNS: dict[str, str] = {
    "email": "email_ciphertext",
    "name": "name_ciphertext",
    "address": "address_ciphertext",
}
# What stands in for personal data whose key has been destroyed.
ERASED: dict[str, bool] = {"erased": True}


def _seal(key: bytes, value: Any, tenant_id: str, purpose: str, row: str) -> bytes:
    # JSON first, so structured addresses round-trip as well as plain strings.
    plaintext = json.dumps(value, separators=(",", ":")).encode()
    return encrypt(key, plaintext, aad(tenant_id, purpose, row))


def _open(key: bytes, blob: bytes, tenant_id: str, purpose: str, row: str) -> Any:
    return json.loads(decrypt(key, blob, aad(tenant_id, purpose, row)))


def seal_customer_columns(
    key: bytes | None, tenant_id: str, customer_id: str, data: Mapping[str, Any]
) -> dict[str, bytes | None]:
    """Ciphertext per PII column; all None when the key is gone (customer erased)."""
    columns: dict[str, bytes | None] = {}
    for name, column in CUSTOMER_PII_COLUMNS.items():
        value = data.get(name)
        columns[column] = (
            None
            if key is None or value is None
            else _seal(key, value, tenant_id, f"customer.{name}", customer_id)
        )
    return columns


def open_customer_columns(
    key: bytes | None, tenant_id: str, customer_id: str, row: Mapping[str, Any]
) -> dict[str, Any]:
    """Decrypted PII fields of a customer row (None where absent or shredded)."""
    out: dict[str, Any] = {}
    for name, column in CUSTOMER_PII_COLUMNS.items():
        blob = row.get(column)
        out[name] = (
            None
            if key is None or blob is None
            else _open(key, bytes(blob), tenant_id, f"customer.{name}", customer_id)
        )
    return out


def seal_event_data(
    key: bytes | None, tenant_id: str, event_id: str, data: Mapping[str, Any]
) -> dict[str, Any]:
    """The event's data with each PII field replaced by ``{"sealed": b64}`` (or ERASED)."""
    sealed = dict(data)
    for name in PII_FIELDS:
        if sealed.get(name) is None:
            continue
        if key is None:
            sealed[name] = ERASED
        else:
            blob = _seal(key, sealed[name], tenant_id, f"event.{name}", event_id)
            sealed[name] = {"sealed": base64.b64encode(blob).decode()}
    return sealed


def open_event_data(
    key: bytes | None, tenant_id: str, event_id: str, data: Mapping[str, Any]
) -> dict[str, Any]:
    """Inverse of :func:`seal_event_data`; without the key, sealed fields read as ERASED."""
    opened = dict(data)
    for name in PII_FIELDS:
        value = opened.get(name)
        if isinstance(value, Mapping) and "sealed" in value:
            blob = base64.b64decode(value["sealed"])
            opened[name] = (
                ERASED if key is None else _open(key, blob, tenant_id, f"event.{name}", event_id)
            )
    return opened
