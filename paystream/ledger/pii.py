"""Sealing customer personal data under the customer's data key (and opening it again)."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from paystream.ledger.events import PII_FIELDS
from paystream.tenancy.crypto import FORMAT_V1, NONCE_BYTES, CryptoError, aad, decrypt, encrypt

__all__ = [
    "CUSTOMER_PII_COLUMNS",
    "ERASED",
    "open_customer_columns",
    "open_event_data",
    "seal_customer_columns",
    "seal_event_data",
    "sealed_event_fields",
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
    """Inverse of :func:`seal_event_data`; without the key, sealed fields read as ERASED.
    A field sealed by every version holding no ciphertext is a CryptoError (the row was
    altered); a description or metadata stored in clear by an older version is as it is."""
    opened = dict(data)
    unopened: list[str] = []  # description or metadata that did not open
    confirmed = False  # a field every version seals opened under this key
    for name, blob in sealed_event_fields(data).items():
        if key is None:
            opened[name] = ERASED
        elif blob is None:
            raise CryptoError(f"event {event_id}: its {name} holds no sealed value")
        elif name in _ALWAYS_SEALED:
            opened[name] = _open(key, blob, tenant_id, f"event.{name}", event_id)
            confirmed = True
        else:
            try:
                opened[name] = _open(key, blob, tenant_id, f"event.{name}", event_id)
            except CryptoError:
                unopened.append(name)
    if unopened and not confirmed:
        raise CryptoError(f"event {event_id}: its {unopened[0]} does not open under the key")
    # (Else the key is the event's, and those are an older version's clear description
    # or metadata that merely look sealed: kept as they are; review h60o.)
    return opened


# The shortest sealed value: format byte, nonce and GCM tag around an empty plaintext.
_SEALED_MIN = 1 + NONCE_BYTES + 16
# Fields sealed by every version; the others (description, metadata) were stored in
# clear before d079e5a, so a value of theirs merely shaped like a sealed one is theirs.
_ALWAYS_SEALED = frozenset({"email", "name", "address", "phone"})


def _sealed_blob(value: Any) -> bytes | None:
    """The ciphertext of ``{"sealed": <base64 of a v1 ciphertext>}``, else None."""
    if not (isinstance(value, Mapping) and len(value) == 1):
        return None
    text = value.get("sealed")
    if not isinstance(text, str):
        return None
    try:
        blob = base64.b64decode(text, validate=True)
    except ValueError:
        return None
    return blob if len(blob) >= _SEALED_MIN and blob[:1] == FORMAT_V1 else None


def sealed_event_fields(data: Mapping[str, Any]) -> dict[str, bytes | None]:
    """The event's PII fields holding a sealed value, as their ciphertext: exactly
    ``{"sealed": <base64 of a v1 ciphertext>}``; None for a field sealed by every
    version whose value is shaped otherwise ({"sealed": "abc"}: no ciphertext, a row
    altered). A description or metadata an older version stored in clear, a "sealed"
    key among them, is no sealed value (review h60n)."""
    found: dict[str, bytes | None] = {}
    for name in PII_FIELDS:
        value = data.get(name)
        if not (isinstance(value, Mapping) and "sealed" in value):
            continue
        blob = _sealed_blob(value)
        if blob is not None or name in _ALWAYS_SEALED:
            found[name] = blob
    return found
