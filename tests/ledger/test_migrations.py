"""Migrations: upgrade builds the schema the models describe, with RLS; downgrade undoes it."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from paystream.ledger import create_engine
from paystream.ledger.migrate import (
    app_database_url,
    current,
    downgrade,
    head,
    scram_verifier,
    upgrade,
)
from paystream.ledger.models import TENANT_TABLES, Base


@pytest_asyncio.fixture(scope="module")
async def owner(module_database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(module_database_url)
    yield engine
    await engine.dispose()


async def _tables(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        )
        return {r[0] for r in rows}


async def test_upgrade_matches_models_and_secures_every_table(
    module_database_url: str, owner: AsyncEngine
) -> None:
    await upgrade(module_database_url)
    assert await current(module_database_url) == head()
    async with owner.connect() as conn:
        diff = await conn.run_sync(
            lambda sync: compare_metadata(MigrationContext.configure(sync), Base.metadata)
        )
        assert diff == []
        rls = await conn.execute(
            text(
                "SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class "
                "WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace "
                "AND relname <> 'alembic_version'"
            )
        )
        flags = {r.relname: (r.relrowsecurity, r.relforcerowsecurity) for r in rls}
        assert flags == dict.fromkeys(TENANT_TABLES, (True, True))
        policies = (
            await conn.execute(
                text("SELECT tablename, policyname, cmd, roles::text[], qual FROM pg_policies")
            )
        ).all()
        isolation = {r.tablename: r.qual for r in policies if r.policyname == "tenant_isolation"}
        assert set(isolation) == set(TENANT_TABLES)
        assert all("current_setting('app.current_tenant_id'" in q for q in isolation.values())
        # The exceptions, all the owner's: it reads which master key wraps each data key
        # and where each audit chain stands, records retired keys' last rows, the
        # master keys the ledger has seen (0012's trigger and function), and which
        # tenants have events to backfill (0013).
        owner_name = (await conn.execute(text("SELECT current_user"))).scalar()
        others = sorted(
            (r.tablename, r.policyname, r.cmd, r.roles)
            for r in policies
            if r.policyname != "tenant_isolation"
        )
        assert others == [
            ("audit_heads", "owner_reads_heads", "SELECT", [owner_name]),
            ("audit_key_retirements", "owner_records_retirements", "ALL", [owner_name]),
            ("data_keys", "owner_key_audit", "SELECT", [owner_name]),
            # Which tenants have events for `paystream ledger backfill` (0013).
            ("entity_backfill", "owner_reads_backfill", "SELECT", [owner_name]),
            ("master_keys_seen", "owner_records_master_keys", "ALL", [owner_name]),
        ]


async def test_keys_and_indexes_lead_with_tenant_id(
    module_database_url: str, owner: AsyncEngine
) -> None:
    await upgrade(module_database_url)
    async with owner.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT c.relname AS index, a.attname AS first_column "
                "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "JOIN pg_class t ON t.oid = i.indrelid "
                "JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = i.indkey[0] "
                "WHERE t.relnamespace = 'public'::regnamespace "
                "AND t.relname <> 'alembic_version'"
            )
        )
        firsts = {r.index: r.first_column for r in rows}
    assert len(firsts) >= len(TENANT_TABLES) + 8
    assert set(firsts.values()) == {"tenant_id"}, firsts


async def test_app_role_is_not_privileged(module_database_url: str, owner: AsyncEngine) -> None:
    await upgrade(module_database_url)
    async with owner.connect() as conn:
        role = (
            await conn.execute(
                text(
                    "SELECT rolsuper, rolbypassrls, rolcreaterole, rolcreatedb FROM pg_roles "
                    "WHERE rolname = 'paystream_app'"
                )
            )
        ).one()
        assert tuple(role) == (False, False, False, False)
        can = await conn.execute(
            text(
                "SELECT has_table_privilege('paystream_app', 'audit_log', 'UPDATE'), "
                "has_table_privilege('paystream_app', 'audit_log', 'DELETE'), "
                "has_table_privilege('paystream_app', 'events', 'UPDATE'), "
                "has_table_privilege('paystream_app', 'audit_log', 'INSERT'), "
                # Which schema it is on (0005): a worker given only its URL checks that.
                "has_table_privilege('paystream_app', 'alembic_version', 'SELECT'), "
                "has_table_privilege('paystream_app', 'alembic_version', 'UPDATE')"
            )
        )
        assert tuple(can.one()) == (False, False, False, True, True, False)


async def test_downgrade_to_base_and_back(module_database_url: str, owner: AsyncEngine) -> None:
    await upgrade(module_database_url)
    await downgrade(module_database_url, "0001")
    assert await current(module_database_url) == "0001"
    async with owner.connect() as conn:
        forced = await conn.execute(
            text("SELECT relname FROM pg_class WHERE relforcerowsecurity ORDER BY relname")
        )
        # Only revision 0004's audit records, which survive its downgrade (see there).
        assert forced.scalars().all() == ["audit_key_retirements", "audit_legacy"]
    await downgrade(module_database_url, "base")
    assert await current(module_database_url) is None
    assert await _tables(owner) == {"alembic_version"}
    await upgrade(module_database_url)
    assert await _tables(owner) == {*TENANT_TABLES, "alembic_version"}


@pytest.mark.parametrize(
    "password",
    [
        "it's:a %s 'secret'",  # quotes, a colon, a format marker
        "tab\there\x7f",  # ASCII control characters: used as they are
        "pässwörd\u00a0x",  # SASLprep maps the no-break space
        "key\U0001f511",  # unassigned in SASLprep's Unicode: used as it is
        "\u00ad",  # mapped to nothing by SASLprep: used as it is
    ],
)
async def test_app_password_reaches_the_server_only_as_a_scram_verifier(
    module_database_url: str, owner: AsyncEngine, password: str
) -> None:
    """The login goes over TCP, which the test server authenticates with SCRAM: the
    verifier must be the one PostgreSQL's clients compute (they normalise as it does)."""
    await upgrade(module_database_url, app_password=password)
    async with owner.connect() as conn:
        superuser = (
            await conn.execute(text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"))
        ).scalar()
        if superuser:  # pg_authid is readable by superusers only
            stored = (
                await conn.execute(
                    text("SELECT rolpassword FROM pg_authid WHERE rolname = 'paystream_app'")
                )
            ).scalar()
            assert stored is not None and stored.startswith("SCRAM-SHA-256$4096:")
    app = create_engine(app_database_url(module_database_url, password))
    try:
        async with app.connect() as conn:
            assert (await conn.execute(text("SELECT current_user"))).scalar() == "paystream_app"
    finally:
        await app.dispose()


def test_scram_verifier_holds_no_password_and_is_salted() -> None:
    first, second = scram_verifier("hunter2"), scram_verifier("hunter2")
    assert re.fullmatch(
        r"SCRAM-SHA-256\$4096:[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+:[A-Za-z0-9+/=]+", first
    )
    assert "hunter2" not in first
    assert first != second  # a fresh salt each time


async def test_a_chain_begun_before_keying_verifies_as_the_migration_found_it(
    module_database_url: str, owner: AsyncEngine
) -> None:
    """Migration 0004 records where each chain stood (unkeyed rows up to there are the
    older version's); rows an older version writes while downgraded are taken in on the
    way back up; an unkeyed row past the record is reported."""
    from paystream.ledger import verify_audit, write_events
    from paystream.tenancy.crypto import MasterKey, MasterKeyring
    from tests.ledger.factories import EventFactory

    keyring = MasterKeyring(MasterKey.generate())
    make = EventFactory()
    await downgrade(module_database_url, "base")
    await upgrade(module_database_url, "0003")
    await _write_unkeyed(owner, "lg1", 2)  # what the version before 0004 wrote
    await upgrade(module_database_url)
    assert (await verify_audit(owner, "lg1", keyring)).ok
    await write_events(owner, [make.payment("lg1", "pay_new")], keyring=keyring)
    assert (await verify_audit(owner, "lg1", keyring)).ok
    await downgrade(module_database_url, "0003")
    await _write_unkeyed(owner, "lg1", 1)  # an older worker, while downgraded
    await upgrade(module_database_url)
    result = await verify_audit(owner, "lg1", keyring)
    assert (result.ok, result.checked) == (True, 4), result.problems
    await _write_unkeyed(owner, "lg1", 1)  # no migration in between: not accepted
    problems = (await verify_audit(owner, "lg1", keyring)).problems
    assert problems == [
        "1 row(s) not keyed (seq 5), outside what the version before keyed chains wrote "
        "(as migration 0004 recorded): written by someone without the key"
    ]


async def _write_unkeyed(owner: AsyncEngine, tenant: str, n: int) -> None:
    """Audit rows as versions before 0004 wrote them: plain sha256, no key id."""
    from datetime import UTC, datetime

    from paystream.ledger.audit import GENESIS_HASH
    from tests.ledger.factories import insert_audit_row

    async with owner.begin() as conn:
        await conn.execute(
            text("INSERT INTO tenants (tenant_id) VALUES (:t) ON CONFLICT DO NOTHING"),
            {"t": tenant},
        )
        head = (
            await conn.execute(
                text("SELECT seq, hash FROM audit_heads WHERE tenant_id = :t"), {"t": tenant}
            )
        ).one_or_none()
        seq, prev = (head.seq, bytes(head.hash)) if head else (0, GENESIS_HASH)
        for _ in range(n):
            seq += 1
            row = {
                "occurred_at": datetime(2025, 1, 1, tzinfo=UTC),
                "actor": "system:ledger-sink",
                "action": "com.paystream.payment.succeeded",
                "entity_type": "payment",
                "entity_id": f"pay_{seq}",
                "before": None,
                "after": {"status": "succeeded"},
            }
            digest = await insert_audit_row(conn, tenant, seq, prev, row)
            prev = digest
        await conn.execute(
            text(
                "INSERT INTO audit_heads (tenant_id, seq, hash) VALUES (:t, :s, :h) "
                "ON CONFLICT (tenant_id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash"
            ),
            {"t": tenant, "s": seq, "h": prev},
        )


async def test_a_downgrade_and_back_neither_accepts_a_forgery_nor_forgets_a_rotation(
    module_database_url: str, owner: AsyncEngine
) -> None:
    """The audit records survive a downgrade to 0003: an unkeyed row written under 0004
    before keyed rows is not taken for the older version's on the way back up, and the
    old key's recorded retirement still holds."""
    from sqlalchemy.ext.asyncio import AsyncSession

    from paystream.ledger import create_engine, verify_audit, write_events
    from paystream.ledger.audit import audit_key, record_retirements
    from paystream.ledger.migrate import app_database_url
    from paystream.tenancy.crypto import MasterKey, MasterKeyring
    from tests.ledger.factories import EventFactory, forget_master_keys
    from tests.ledger.test_audit_forgery import _append_forged

    await upgrade(module_database_url, app_password="dg2-pw")
    await forget_master_keys(module_database_url)  # (earlier tests' keys: other ledgers')
    app = create_engine(app_database_url(module_database_url, "dg2-pw"))  # RLS: one tenant
    make = EventFactory()
    k1 = MasterKeyring(MasterKey.generate())
    await write_events(app, [make.payment("dg2", "pay_1")], keyring=k1)
    k2 = k1.rotated_to(MasterKey.generate())
    async with AsyncSession(owner) as session, session.begin():
        await record_retirements(session, ["dg2"], k2)  # `keys rotate`
    await write_events(app, [make.payment("dg2", "pay_2")], keyring=k2)
    await _append_forged(app, "dg2", None, None)  # unkeyed, under 0004
    await _append_forged(app, "dg2", audit_key(k1.current), k1.current.key_id)
    await write_events(app, [make.payment("dg2", "pay_3")], keyring=k2)
    before = (await verify_audit(app, "dg2", k2)).problems
    assert len(before) == 2, before
    await downgrade(module_database_url, "0003")
    await upgrade(module_database_url)
    await app.dispose()  # (the upgrade changed the types the pool's connections cached)
    try:
        assert (await verify_audit(app, "dg2", k2)).problems == before
    finally:
        await app.dispose()


async def test_idle_chains_take_in_what_the_older_version_wrote_downgrade_after_downgrade(
    module_database_url: str, owner: AsyncEngine
) -> None:
    """A tenant with no keyed row since the last upgrade (idle), written to by the older
    version while downgraded, twice: each time its new unkeyed end is recorded (the
    range used to collide with the one before and be dropped: a false alarm)."""
    from paystream.ledger import create_engine, verify_audit, write_events
    from paystream.ledger.migrate import app_database_url
    from paystream.tenancy.crypto import MasterKey, MasterKeyring
    from tests.ledger.factories import EventFactory

    keyring = MasterKeyring(MasterKey.generate())
    await downgrade(module_database_url, "base")
    await upgrade(module_database_url, "0003")
    await _write_unkeyed(owner, "idle", 2)
    await _write_unkeyed(owner, "busy", 1)
    await upgrade(module_database_url, app_password="idle-pw")
    app = create_engine(app_database_url(module_database_url, "idle-pw"))  # RLS: one tenant
    try:
        await write_events(app, [EventFactory().payment("busy", "pay_k")], keyring=keyring)
        for _ in range(2):
            await downgrade(module_database_url, "0003")
            await _write_unkeyed(owner, "idle", 1)
            await _write_unkeyed(owner, "busy", 1)
            await upgrade(module_database_url)
            await app.dispose()
            for tenant in ("idle", "busy"):
                result = await verify_audit(app, tenant, keyring)
                assert result.ok, (tenant, result.problems)
    finally:
        await app.dispose()
