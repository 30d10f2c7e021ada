"""What counts as a sealed value in a stored event ({"sealed": <base64 of a v1
ciphertext>} only, review h60n), as review h60o probed it: whatever the writer seals
has that shape and opens; an older version's clear description or metadata that merely
looks sealed is exported as it is and is no remade key."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from paystream.ledger import export_customer, pii, verify_audit, write_events
from paystream.tenancy.crypto import MasterKeyring, generate_data_key

VALUES = {
    "empty": "",
    "long": "x" * 200_000,
    "unicode": "Zoë Ωmega \u2028 \U0001f600",
    "address": {
        "line1": "1 Main St",
        "city": "Zürich",
        "postal_code": "8000",
        "country": "CH",
        "sealed": "not a key of ours",
    },
    "metadata": {"sealed": "yes", "a": "b"},
    "number": 0,
    "false": False,
    "list": [1, "two", {"three": 3}],
}


@pytest.mark.parametrize("value", list(VALUES.values()), ids=list(VALUES))
def test_whatever_the_writer_seals_has_the_sealed_shape_and_opens(value: Any) -> None:
    key = generate_data_key()
    data = {n: value for n in ("email", "name", "address", "phone", "description", "metadata")}
    sealed = pii.seal_event_data(key, "t1", "evt_1", data)
    found = pii.sealed_event_fields(sealed)
    assert set(found) == set(data) and all(b is not None for b in found.values())
    assert pii.open_event_data(key, "t1", "evt_1", sealed) == data


# What an older version (before d079e5a) stored in clear: a merchant's metadata whose one
# key is "sealed", its value a base64 token (first byte 0x01, 30 bytes): {"sealed": token}.
LOOKALIKE = base64.b64encode(bytes(range(1, 31))).decode()  # "AQIDBAUG..."


async def _old_customer(
    engine: AsyncEngine,
    keyring: MasterKeyring,
    make_event: Any,
    monkeypatch: pytest.MonkeyPatch,
    t: str,
) -> None:
    monkeypatch.setattr(pii, "PII_FIELDS", ("email", "name", "address", "phone"))  # old writer
    await write_events(
        engine, [make_event.customer(t, "cus_1", metadata={"sealed": LOOKALIKE})], keyring=keyring
    )
    monkeypatch.undo()


async def test_older_plain_metadata_that_looks_sealed_exports(
    app_engine: AsyncEngine,
    keyring: MasterKeyring,
    make_event: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await _old_customer(app_engine, keyring, make_event, monkeypatch, "ho1")
    exported = await export_customer(app_engine, keyring, "ho1", "cus_1")  # CryptoError here
    assert exported["customer"]["email"] == "cus_1@example.com"


async def test_older_plain_metadata_that_looks_sealed_is_no_remade_key(
    app_engine: AsyncEngine,
    keyring: MasterKeyring,
    make_event: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await _old_customer(app_engine, keyring, make_event, monkeypatch, "ho2")
    result = await verify_audit(app_engine, "ho2", keyring)
    assert result.ok, result.problems
