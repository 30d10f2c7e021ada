"""Migration 0012 (review h71f): the master keys the ledger has seen, recorded from the
rows already there and by trigger since; `paystream migrate --downgrade 0011` removes
all of it, and the way back up takes in what was written meanwhile."""

from __future__ import annotations

import asyncio

import pytest
from click.testing import CliRunner
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import NullPool

from paystream.ledger import create_engine, write_events
from paystream.ledger.audit import GENESIS_HASH, audit_key
from paystream.ledger.cli import migrate_command
from paystream.ledger.migrate import app_database_url, current, head, upgrade
from paystream.ledger.sink import FailureKind, classify_failure
from paystream.tenancy.crypto import MasterKey, MasterKeyring
from tests.ledger.factories import EventFactory, insert_audit_row, sink_audit_row

_OBJECTS = (
    "SELECT to_regclass('master_keys_seen') IS NOT NULL, "
    "to_regprocedure('ledger_master_key_known(text, text[], boolean)') IS NOT NULL, "
    "to_regprocedure('master_keys_seen_record()') IS NOT NULL, "
    "(SELECT count(*) FROM pg_trigger WHERE tgname = 'master_keys_seen')"
)


async def _state(url: str) -> tuple[tuple[object, ...], list[tuple[str, str]]]:
    engine = create_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            objects = tuple((await conn.execute(text(_OBJECTS))).one())
            seen: list[tuple[str, str]] = []
            if objects[0]:
                rows = await conn.execute(
                    text("SELECT tenant_id, key_id FROM master_keys_seen ORDER BY 1, 2")
                )
                seen = [(str(t), str(k)) for t, k in rows]
            return objects, seen
    finally:
        await engine.dispose()


async def _as_an_older_version(owner: AsyncEngine, tenant: str, key: MasterKey) -> None:
    """What a worker of the version before 0012 writes while the schema is downgraded: a
    tenant's first keyed audit row and a customer's data key, under ``key``."""
    async with owner.begin() as conn:
        await conn.execute(text("INSERT INTO tenants (tenant_id) VALUES (:t)"), {"t": tenant})
        row = sink_audit_row(
            "com.paystream.payment.succeeded", "payment", "pay_1", {"status": "succeeded"}
        )
        digest = await insert_audit_row(
            conn, tenant, 1, GENESIS_HASH, row, audit_key(key), key.key_id
        )
        await conn.execute(
            text("INSERT INTO audit_heads (tenant_id, seq, hash) VALUES (:t, 1, :h)"),
            {"t": tenant, "h": digest},
        )
        await conn.execute(
            text(
                "INSERT INTO data_keys (tenant_id, key_ref, master_key_id, wrapped_key) "
                "VALUES (:t, 'customer/cus_1', :k, '\\x00')"
            ),
            {"t": tenant, "k": key.key_id},
        )


async def test_0012_backfills_records_and_downgrades(module_database_url: str) -> None:
    url = module_database_url
    await upgrade(url, "0011", app_password="m12-pw")
    owner = create_engine(url)
    app = create_engine(app_database_url(url, "m12-pw"))
    k1, k2, k3 = (MasterKey.generate() for _ in range(3))
    make = EventFactory()
    try:
        # Rows already there when 0012 runs: taken in, from audit_log and data_keys.
        await _as_an_older_version(owner, "m1", k1)
        await upgrade(url)
        assert await current(url) == head()
        assert await _state(url) == ((True, True, True, 2), [("m1", k1.key_id)])
        await app.dispose()  # (the upgrade changed what the pool's connections cached)
        await write_events(app, [make.customer("m2", "cus_1")], keyring=MasterKeyring(k1))
        with pytest.raises(Exception) as refused:
            await write_events(app, [make.payment("m3", "pay_1")], keyring=MasterKeyring(k2))
        assert classify_failure(refused.value) == FailureKind.CONFIG

        # `paystream migrate --downgrade 0011`: table, function and triggers gone.
        env = {"DATABASE_URL": url, "PAYSTREAM_DB_APP_PASSWORD": "m12-pw"}
        down = await asyncio.to_thread(
            CliRunner().invoke, migrate_command, ["--downgrade", "0011", "--yes"], env=env
        )
        assert down.exit_code == 0, down.output
        assert await current(url) == "0011"
        assert await _state(url) == ((False, False, False, 0), [])
        await _as_an_older_version(owner, "m4", k2)  # an older worker, meanwhile

        # Back up: what was written meanwhile is taken in.
        await upgrade(url)
        await app.dispose()
        assert await _state(url) == (
            (True, True, True, 2),
            [("m1", k1.key_id), ("m2", k1.key_id), ("m4", k2.key_id)],
        )
        await write_events(app, [make.payment("m5", "pay_1")], keyring=MasterKeyring(k2))
        with pytest.raises(Exception) as refused:
            await write_events(app, [make.payment("m6", "pay_1")], keyring=MasterKeyring(k3))
        assert classify_failure(refused.value) == FailureKind.CONFIG
    finally:
        await app.dispose()
        await owner.dispose()
