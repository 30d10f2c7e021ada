"""Master-key rotation re-wraps data keys in place; encrypted rows are never rewritten."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from paystream.ledger import export_customer, rotate_master_key, tenant_session, write_events
from paystream.ledger.models import Customer, DataKey
from paystream.tenancy.crypto import CryptoError, MasterKey, MasterKeyring
from tests.ledger.factories import EventFactory


async def _snapshot(engine: AsyncEngine, tenant: str) -> tuple[dict, dict]:
    async with tenant_session(engine, tenant) as s:
        keys = {
            k.key_ref: (k.master_key_id, k.wrapped_key) for k in await s.scalars(select(DataKey))
        }
        rows = {c.customer_id: c.email_ciphertext for c in await s.scalars(select(Customer))}
    return keys, rows


async def test_rotation_rewraps_keys_without_touching_rows(
    app_engine: AsyncEngine, make_event: EventFactory
) -> None:
    old = MasterKeyring(MasterKey.generate())
    events = [make_event.customer(t, f"cus_{i}") for t in ("k1", "k2") for i in range(3)]
    await write_events(app_engine, events, keyring=old)
    keys_before, rows_before = await _snapshot(app_engine, "k1")

    new_key = MasterKey.generate()
    rotating = old.rotated_to(new_key)
    assert await rotate_master_key(app_engine, rotating, ["k1", "k2"]) == 6
    assert await rotate_master_key(app_engine, rotating, ["k1", "k2"]) == 0  # resumable no-op

    keys_after, rows_after = await _snapshot(app_engine, "k1")
    assert rows_after == rows_before  # ciphertext untouched
    assert {mk for mk, _ in keys_after.values()} == {new_key.key_id}
    assert all(keys_after[r][1] != keys_before[r][1] for r in keys_before)

    only_new = MasterKeyring(new_key)  # no longer needed to open the data
    exported = await export_customer(app_engine, only_new, "k2", "cus_1")
    assert exported["customer"]["email"] == "cus_1@example.com"
    with pytest.raises(CryptoError):
        await export_customer(app_engine, old, "k2", "cus_1")
