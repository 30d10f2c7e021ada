"""The application role cannot put code where the ledger's trigger functions, or the schema
owner's own sessions, will run it (review h67l; migration 0011).

PostgreSQL 14 and older grant CREATE on schema ``public`` to PUBLIC, and a cluster
upgraded from one (pg_upgrade, dump and restore) keeps that grant on 15 and later. The
migrations did not take it back. A function or operator the application role creates in
``public`` with a closer argument match than pg_catalog's is then chosen by name
resolution (CVE-2018-1058's pattern): inside the forward-only trigger (search path
``pg_catalog, public, pg_temp``), and in the owner's sessions (`paystream migrate`,
`paystream keys rotate`, `paystream doctor`), where it runs with the owner's rights.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from paystream.ledger import create_engine, tenant_session, write_events
from paystream.ledger.migrate import app_database_url, upgrade
from paystream.tenancy.crypto import MasterKey, MasterKeyring
from paystream.tenancy.rotation import record_audit_retirements
from tests.fixtures.postgres import fresh_database
from tests.ledger.factories import EventFactory

PASSWORD = "h67l-app-pw"


def _plain(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest_asyncio.fixture
async def pg14_style_database(ledger_database_url: str) -> AsyncIterator[tuple[str, AsyncEngine]]:
    """A ledger database whose schema ``public`` grants CREATE to PUBLIC (PostgreSQL 14's
    default, kept by clusters upgraded from it), migrated to head; the owner's URL and
    an engine as paystream_app. ``owner_ran`` (made by the server's superuser) records
    which roles ran the code planted below."""
    url = await fresh_database(ledger_database_url, prefix="h67l")
    admin = await asyncpg.connect(_plain(url))
    try:
        await admin.execute("GRANT CREATE ON SCHEMA public TO PUBLIC")
        await admin.execute("CREATE TABLE owner_ran (who text)")
        await admin.execute("GRANT INSERT, SELECT ON owner_ran TO PUBLIC")
    finally:
        await admin.close()
    await upgrade(url, app_password=PASSWORD)
    app = create_engine(app_database_url(url, PASSWORD))
    yield url, app
    await app.dispose()


async def _try(app: AsyncEngine, statement: str) -> bool:
    """Run ``statement`` as paystream_app, outside any tenant; False if refused."""
    try:
        async with app.begin() as conn:
            await conn.execute(text(statement))
    except DBAPIError:
        return False
    return True


async def test_code_the_app_role_plants_never_runs_as_the_schema_owner(
    pg14_style_database: tuple[str, AsyncEngine],
) -> None:
    url, app = pg14_style_database
    keyring = MasterKeyring(MasterKey.generate())
    await write_events(app, [EventFactory().payment("acme", "pay_1")], keyring=keyring)
    # A stolen paystream_app credential: an `=` for (name, varchar) and (varchar,
    # varchar), an exact match where pg_catalog's needs a cast. Run by anyone else, it
    # records who, and hands paystream_app what only the owner may write.
    for left in ("name", "varchar"):
        await _try(
            app,
            f"CREATE FUNCTION public.h67l_eq(a {left}, b varchar) RETURNS boolean "
            "LANGUAGE plpgsql AS $$ BEGIN "
            "IF current_user <> 'paystream_app' THEN "
            "INSERT INTO public.owner_ran VALUES (current_user); "
            "EXECUTE 'GRANT INSERT ON audit_legacy TO paystream_app'; END IF; "
            "RETURN a::text OPERATOR(pg_catalog.=) b::text; END $$",
        )
        await _try(
            app,
            f"CREATE OPERATOR public.= (LEFTARG = {left}, RIGHTARG = varchar, "
            "FUNCTION = public.h67l_eq)",
        )
    # The operator's routine work as the owner: a deploy's `paystream migrate` (already
    # at head), then `paystream keys rotate` recording a retirement.
    await upgrade(url, app_password=PASSWORD)
    await record_audit_retirements(url, keyring.rotated_to(MasterKey.generate()), ["acme"])

    async with app.connect() as conn:
        ran_as = (await conn.scalars(text("SELECT DISTINCT who FROM owner_ran"))).all()
        legacy_writable = await conn.scalar(
            text("SELECT has_table_privilege('paystream_app', 'audit_legacy', 'INSERT')")
        )
    assert ran_as == [], f"paystream_app's operator ran as {ran_as}"
    assert not legacy_writable  # (an unkeyed forged range would then verify)


async def test_a_function_the_app_role_plants_does_not_open_the_forward_only_trigger(
    pg14_style_database: tuple[str, AsyncEngine],
) -> None:
    _, app = pg14_style_database
    keyring = MasterKeyring(MasterKey.generate())
    await write_events(app, [EventFactory().payment("acme", "pay_1")], keyring=keyring)
    # to_jsonb(payments) is a closer match than pg_catalog's to_jsonb(anyelement): the
    # trigger's `to_jsonb(NEW)` and `to_jsonb(OLD)` then compare two empty objects.
    await _try(
        app,
        "CREATE FUNCTION public.to_jsonb(payments) RETURNS jsonb LANGUAGE sql "
        "AS $$ SELECT '{}'::jsonb $$",
    )
    with pytest.raises(DBAPIError, match="payments rows"):
        async with tenant_session(app, "acme") as s:
            # Rewritten at its version: what 0006's trigger exists to refuse.
            await s.execute(
                text("UPDATE payments SET amount = 1, amount_captured = 1 "
                     "WHERE payment_id = 'pay_1'")
            )  # fmt: skip
