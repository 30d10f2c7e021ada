"""Migration 0012 run while a worker of the release before it writes (the chart's setup job
migrates before the new workers start, the old ones still writing). A ledger write locks
data_keys (a new customer's key), then audit_log; 0012 took audit_log first, and the two
deadlocked, PostgreSQL aborting the migration (review h71i). It now takes them in the
writers' order, and the write in flight finishes first."""

from __future__ import annotations

import asyncio
import time

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import NullPool

from paystream.ledger import create_engine
from paystream.ledger.audit import GENESIS_HASH, audit_key
from paystream.ledger.migrate import app_database_url, current, head, upgrade
from paystream.tenancy.crypto import MasterKey
from tests.ledger.factories import insert_audit_row, sink_audit_row


async def _until_a_backend_waits_for_a_lock(owner: AsyncEngine, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        async with owner.connect() as conn:
            waiting = await conn.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock'"
                )
            )
        if waiting:
            return
        assert time.monotonic() < deadline, "the migration never waited for the writer"
        await asyncio.sleep(0.05)


async def test_0012_while_an_older_worker_writes_a_new_customer(
    module_database_url: str,
) -> None:
    url = module_database_url
    await upgrade(url, "0011", app_password="m12-lock-pw")
    app = create_engine(app_database_url(url, "m12-lock-pw"), poolclass=NullPool)
    owner = create_engine(url, poolclass=NullPool)
    key = MasterKey.generate()
    migration: asyncio.Task[None] | None = None
    writer_error: BaseException | None = None
    try:
        async with app.connect() as conn:
            tx = await conn.begin()
            # What the older release's `_write_tenant` does, in its order: the tenant,
            # its head (lock_tenant), a new customer's data key ...
            await conn.execute(text("SELECT set_config('app.current_tenant_id', 'lk1', true)"))
            await conn.execute(text("INSERT INTO tenants (tenant_id) VALUES ('lk1')"))
            await conn.execute(
                text("INSERT INTO audit_heads (tenant_id, seq, hash) VALUES ('lk1', 0, :h)"),
                {"h": GENESIS_HASH},
            )
            await conn.execute(
                text(
                    "INSERT INTO data_keys (tenant_id, key_ref, master_key_id, wrapped_key) "
                    "VALUES ('lk1', 'customer/cus_1', :k, '\\x00')"
                ),
                {"k": key.key_id},
            )
            # ... meanwhile the setup job runs `paystream migrate` ...
            migration = asyncio.create_task(upgrade(url))
            await _until_a_backend_waits_for_a_lock(owner)
            # ... and the write goes on to its audit row, and commits.
            try:
                row = sink_audit_row(
                    "com.paystream.customer.created", "customer", "cus_1", {"email": "[encrypted]"}
                )
                digest = await asyncio.wait_for(
                    insert_audit_row(conn, "lk1", 1, GENESIS_HASH, row, audit_key(key), key.key_id),
                    timeout=30,
                )
                await conn.execute(
                    text("UPDATE audit_heads SET seq = 1, hash = :h WHERE tenant_id = 'lk1'"),
                    {"h": digest},
                )
                await tx.commit()
            except Exception as exc:  # (a deadlock's victim: retried by the sink)
                writer_error = exc
                await tx.rollback()
        migration_error: BaseException | None = None
        try:
            await asyncio.wait_for(migration, timeout=60)
        except Exception as exc:
            migration_error = exc
        assert migration_error is None and writer_error is None, (
            f"migration: {migration_error!r}; writer: {writer_error!r}"
        )
        assert await current(url) == head()
    finally:
        if migration is not None and not migration.done():
            migration.cancel()
        await app.dispose()
        await owner.dispose()
