"""The start-up guard refuses roles and tables row-level security would not hold.

Its own module (own database): the owner-membership grant is cluster-wide and the
switched-off table must not leak into other tests; both are undone in ``finally``.
"""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from paystream.ledger import (
    RlsNotEnforcedError,
    assert_rls_enforced,
    create_engine,
    tenant_session,
    write_events,
)
from paystream.tenancy.crypto import MasterKeyring
from tests.ledger.factories import EventFactory, LedgerDb

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_a_member_of_the_owning_role_is_refused(
    ledger_db: LedgerDb,
    owner_engine: AsyncEngine,
    keyring: MasterKeyring,
    make_event: EventFactory,
) -> None:
    """PostgreSQL lets members of a table's owning role act as its owner (a common
    managed-PostgreSQL layout): such an app role can switch FORCE off and read every
    tenant. The guard used to compare only the owner's name with the current user."""
    app = create_engine(ledger_db.app_url)
    await write_events(
        app,
        [make_event.payment("om_a", "pay_a"), make_event.payment("om_b", "pay_b")],
        keyring=keyring,
    )
    await assert_rls_enforced(app)
    async with owner_engine.begin() as c:
        owner = (
            await c.execute(text("SELECT tableowner FROM pg_tables WHERE tablename = 'payments'"))
        ).scalar()
        await c.execute(text(f'GRANT "{owner}" TO paystream_app'))
    try:
        await app.dispose()
        async with tenant_session(app, "om_a") as s:  # the hole is real
            await s.execute(text("ALTER TABLE payments NO FORCE ROW LEVEL SECURITY"))
            seen = (await s.execute(text("SELECT DISTINCT tenant_id FROM payments"))).scalars()
            assert sorted(seen) == ["om_a", "om_b"]
            await s.rollback()
        with pytest.raises(RlsNotEnforcedError, match="member of the role owning"):
            await assert_rls_enforced(app)
    finally:
        async with owner_engine.begin() as c:
            await c.execute(text(f'REVOKE "{owner}" FROM paystream_app'))
        await app.dispose()
    await assert_rls_enforced(app)


@pytest.mark.parametrize(
    ("off", "on"),
    [
        ("DISABLE ROW LEVEL SECURITY", "ENABLE ROW LEVEL SECURITY"),
        ("NO FORCE ROW LEVEL SECURITY", "FORCE ROW LEVEL SECURITY"),
    ],
)
async def test_a_table_without_row_level_security_in_force_is_refused(
    ledger_db: LedgerDb, owner_engine: AsyncEngine, off: str, on: str
) -> None:
    """Left off after maintenance, one table would show every tenant's rows."""
    await _refused_while(
        ledger_db, owner_engine, f"ALTER TABLE refunds {off}", f"ALTER TABLE refunds {on}",
        "not in force on refunds",
    )  # fmt: skip


async def test_a_table_without_its_policy_is_refused(
    ledger_db: LedgerDb, owner_engine: AsyncEngine
) -> None:
    await _refused_while(
        ledger_db,
        owner_engine,
        "ALTER POLICY tenant_isolation ON disputes RENAME TO other",
        "ALTER POLICY other ON disputes RENAME TO tenant_isolation",
        "not in force on disputes",
    )


async def test_a_private_schema_for_the_app_role_is_not_a_broken_deployment(
    ledger_db: LedgerDb, owner_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    """PostgreSQL's docs suggest a schema per role; with the default search path
    ("$user", public) the app's queries still reach the ledger's tables, so the guard
    must look there too, as the queries resolve them, not in current_schema()."""
    async with owner_engine.begin() as c:
        await c.execute(text("CREATE SCHEMA paystream_app AUTHORIZATION paystream_app"))
    app = create_engine(ledger_db.app_url)
    try:
        await write_events(app, [make_event.payment("sc1", "pay_1")], keyring=keyring)
        await assert_rls_enforced(app)
    finally:
        await app.dispose()
        async with owner_engine.begin() as c:
            await c.execute(text("DROP SCHEMA paystream_app"))


async def test_a_mixed_case_schema_first_in_the_search_path(
    ledger_db: LedgerDb, owner_engine: AsyncEngine
) -> None:
    async with owner_engine.begin() as c:
        await c.execute(text('CREATE SCHEMA "Ledger"'))
        await c.execute(text('GRANT USAGE ON SCHEMA "Ledger" TO paystream_app'))
    app = create_engine(
        ledger_db.app_url, connect_args={"server_settings": {"search_path": '"Ledger", public'}}
    )
    try:
        await assert_rls_enforced(app)
    finally:
        await app.dispose()
        async with owner_engine.begin() as c:
            await c.execute(text('DROP SCHEMA "Ledger"'))


@pytest.mark.parametrize(
    ("loosen", "restore"),
    [
        (
            "ALTER POLICY tenant_isolation ON payments USING (true)",
            "ALTER POLICY tenant_isolation ON payments USING "
            "(tenant_id = current_setting('app.current_tenant_id', true))",
        ),
        (
            "CREATE POLICY peek ON payments FOR SELECT USING (true)",
            "DROP POLICY peek ON payments",
        ),
        # Reads isolated, writes not: a tenant's session could write rows under another
        # tenant's id (mutation testing: the WITH CHECK clause was checked by no test).
        (
            "ALTER POLICY tenant_isolation ON payments WITH CHECK (true)",
            "ALTER POLICY tenant_isolation ON payments WITH CHECK "
            "(tenant_id = current_setting('app.current_tenant_id', true))",
        ),
    ],
)
async def test_a_loosened_or_widened_policy_is_refused(
    ledger_db: LedgerDb, owner_engine: AsyncEngine, loosen: str, restore: str
) -> None:
    """A policy named tenant_isolation that no longer isolates, or another permissive
    policy beside it (policies are OR-ed), shows every tenant's rows."""
    await _refused_while(ledger_db, owner_engine, loosen, restore, "not in force on payments")
    restored = create_engine(ledger_db.app_url)
    await assert_rls_enforced(restored)
    await restored.dispose()


async def test_a_role_with_bypassrls_is_refused(
    ledger_db: LedgerDb, owner_engine: AsyncEngine
) -> None:
    """BYPASSRLS reads every tenant's rows, as a superuser does (mutation testing: only
    the superuser case was tested)."""
    await _refused_while(
        ledger_db,
        owner_engine,
        "ALTER ROLE paystream_app BYPASSRLS",
        "ALTER ROLE paystream_app NOBYPASSRLS",
        "bypasses row-level security",
    )
    app = create_engine(ledger_db.app_url)
    await assert_rls_enforced(app)
    await app.dispose()


async def test_a_member_of_a_role_that_bypasses_rls_is_refused(
    ledger_db: LedgerDb, owner_engine: AsyncEngine
) -> None:
    """It may SET ROLE to it and read every tenant (review finding: only the role's own
    attributes were checked)."""
    await _refused_while(
        ledger_db,
        owner_engine,
        "CREATE ROLE rls_bypasser NOLOGIN BYPASSRLS; GRANT rls_bypasser TO paystream_app",
        "REVOKE rls_bypasser FROM paystream_app; DROP ROLE rls_bypasser",
        "member of a role that bypasses",
    )


async def test_a_role_with_createrole_is_refused(
    ledger_db: LedgerDb, owner_engine: AsyncEngine
) -> None:
    """Before PostgreSQL 16 it may grant itself the tables' owner (review finding)."""
    await _refused_while(
        ledger_db,
        owner_engine,
        "ALTER ROLE paystream_app CREATEROLE",
        "ALTER ROLE paystream_app NOCREATEROLE",
        "CREATEROLE",
    )
    app = create_engine(ledger_db.app_url)
    await assert_rls_enforced(app)
    await app.dispose()


async def _refused_while(
    ledger_db: LedgerDb, owner_engine: AsyncEngine, change: str, undo: str, match: str
) -> None:
    """With ``change`` made by the owner, the guard refuses the app role (``match``);
    ``undo`` puts it back whatever happens."""
    app = create_engine(ledger_db.app_url)
    async with owner_engine.begin() as c:
        for statement in change.split("; "):
            await c.execute(text(statement))
    try:
        with pytest.raises(RlsNotEnforcedError, match=match):
            await assert_rls_enforced(app)
    finally:
        async with owner_engine.begin() as c:
            for statement in undo.split("; "):
                await c.execute(text(statement))
        await app.dispose()
