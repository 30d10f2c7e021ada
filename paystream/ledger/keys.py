"""The database-backed key store for wrapped data keys, and master-key rotation."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from paystream.ledger.chunks import chunked, execute_in_chunks
from paystream.ledger.models import DataKey, table_of
from paystream.ledger.session import tenant_session
from paystream.tenancy.crypto import (
    CryptoError,
    MasterKeyring,
    WrappedKey,
    customer_key_ref,
    generate_data_key,
    rewrap_data_key,
    unwrap_data_key,
    wrap_data_key,
)

__all__ = ["SqlKeyStore", "customer_data_keys", "rotate_master_key"]


class SqlKeyStore:
    """:class:`paystream.tenancy.crypto.KeyStore` on a tenant session (RLS applies)."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def get(self, tenant_id: str, key_ref: str) -> WrappedKey | None:
        """The wrapped key, or None (never created, or crypto-shredded)."""
        found = await self.get_many(tenant_id, [key_ref])
        return found.get(key_ref)

    async def get_many(self, tenant_id: str, key_refs: Iterable[str]) -> dict[str, WrappedKey]:
        """Wrapped keys by ref; refs without a key are absent."""
        found: dict[str, WrappedKey] = {}
        for refs in chunked(key_refs):
            rows = await self._session.execute(
                select(DataKey.key_ref, DataKey.master_key_id, DataKey.wrapped_key).where(
                    DataKey.tenant_id == tenant_id, DataKey.key_ref.in_(refs)
                )
            )
            found.update(
                {r.key_ref: WrappedKey(r.master_key_id, bytes(r.wrapped_key)) for r in rows}
            )
        return found

    async def put(self, tenant_id: str, key_ref: str, wrapped: WrappedKey) -> None:
        """Store a new wrapped key; an existing key for the ref is an error, never replaced."""
        await self.put_many(tenant_id, {key_ref: wrapped})

    async def put_many(self, tenant_id: str, keys: dict[str, WrappedKey]) -> None:
        """Store several new wrapped keys (one cached statement, executemany calls)."""
        rows = [
            {"tenant_id": tenant_id, "key_ref": ref, "master_key_id": w.master_key_id,
             "wrapped_key": w.blob}
            for ref, w in keys.items()
        ]  # fmt: skip
        await execute_in_chunks(self._session, pg_insert(table_of(DataKey)), rows)

    async def delete(self, tenant_id: str, key_ref: str) -> bool:
        """Destroy a data key (crypto-shredding whatever it encrypted); True if one existed."""
        result = await self._session.execute(
            delete(DataKey)
            .where(DataKey.tenant_id == tenant_id, DataKey.key_ref == key_ref)
            .returning(DataKey.key_ref)
        )
        return result.first() is not None


async def customer_data_keys(
    session: AsyncSession,
    keyring: MasterKeyring,
    tenant_id: str,
    customer_ids: Iterable[str],
    *,
    create: bool,
) -> dict[str, bytes]:
    """Unwrapped PII keys by customer id; with ``create``, make the missing ones (one
    insert). One missing for a customer already in the ledger (deleted outside an
    erasure) is made afresh too, so that the ledger goes on recording them; `audit
    verify` still names them, their key not opening their older sealed events (which
    open no more: key_check.py)."""
    store = SqlKeyStore(session)
    refs = {customer_key_ref(c): c for c in customer_ids}
    wrapped = await store.get_many(tenant_id, refs)
    keys = {refs[r]: unwrap_data_key(keyring, w, tenant_id, r) for r, w in wrapped.items()}
    if create:
        new: dict[str, WrappedKey] = {}
        for ref, customer_id in refs.items():
            if customer_id not in keys:
                keys[customer_id] = generate_data_key()
                new[ref] = wrap_data_key(keyring.current, keys[customer_id], tenant_id, ref)
        await store.put_many(tenant_id, new)
    return keys


async def rotate_master_key(
    engine: AsyncEngine,
    keyring: MasterKeyring,
    tenant_ids: Iterable[str],
    unopenable: list[str] | None = None,
) -> int:
    """Re-wrap every data key not under ``keyring.current``; rows stay untouched.

    One transaction per tenant (RLS scopes the work), so a crash leaves each tenant
    either fully re-wrapped or untouched, and re-running resumes where it stopped.
    A key no key of the keyring opens (damaged, or wrapped under a master key it lacks)
    is left as it is and named in ``unopenable`` ("tenant/key_ref: why"): it stopped
    the rotation of every key after it, naming none (review h60k).
    Returns how many keys were re-wrapped.
    """
    count = 0
    for tenant_id in tenant_ids:
        async with tenant_session(engine, tenant_id) as session:
            rows = await session.execute(
                select(DataKey.key_ref, DataKey.master_key_id, DataKey.wrapped_key)
                .where(DataKey.master_key_id != keyring.current.key_id)
                .with_for_update()
            )
            for row in rows.all():
                old = WrappedKey(row.master_key_id, bytes(row.wrapped_key))
                try:
                    new = rewrap_data_key(keyring, old, tenant_id, row.key_ref)
                except CryptoError as exc:
                    if unopenable is not None:
                        unopenable.append(f"{tenant_id}/{row.key_ref}: {exc}")
                    continue
                await session.execute(
                    update(DataKey)
                    .where(DataKey.tenant_id == tenant_id, DataKey.key_ref == row.key_ref)
                    .values(
                        master_key_id=new.master_key_id,
                        wrapped_key=new.blob,
                        rewrapped_at=func.now(),
                    )
                )
                count += 1
    return count
