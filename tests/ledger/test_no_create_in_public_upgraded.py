"""Migration 0011 (REVOKE CREATE ON SCHEMA public) where it cannot, or where it comes too
late (review h67n): run by a role that does not own the schema, it only warned and nothing
refused the app role; and what the app role planted before it stayed."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import asyncpg
import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from paystream.ledger import assert_rls_enforced, create_engine, tenant_session
from paystream.ledger.migrate import app_database_url, upgrade
from paystream.ledger.session import RlsNotEnforcedError
from tests.fixtures.postgres import fresh_database


def _plain(url: str, **parts: str) -> str:
    return make_url(url).set(drivername="postgresql", **parts).render_as_string(hide_password=False)


@pytest_asyncio.fixture
async def upgraded_cluster_ordinary_owner(ledger_database_url: str) -> AsyncIterator[str]:
    """A database owned by an ordinary role (managed PostgreSQL's layout) on a cluster
    upgraded from PostgreSQL 14: schema ``public`` owned by the bootstrap superuser, CREATE
    granted to PUBLIC (pg_upgrade and dump/restore keep both)."""
    suffix = secrets.token_hex(4)
    role, database, password = f"own_{suffix}", f"ledger_{suffix}", secrets.token_hex(12)
    admin = await asyncpg.connect(_plain(ledger_database_url))
    try:
        await admin.execute(
            f"CREATE ROLE {role} LOGIN CREATEROLE NOSUPERUSER NOBYPASSRLS PASSWORD '{password}'"
        )
        await admin.execute(f"CREATE DATABASE {database} OWNER {role}")
        await admin.execute(
            "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = "
            "'paystream_app') THEN CREATE ROLE paystream_app NOLOGIN; END IF; END $$"
        )
        await admin.execute(f"GRANT paystream_app TO {role} WITH ADMIN OPTION")
    finally:
        await admin.close()
    db_admin = await asyncpg.connect(_plain(ledger_database_url, database=database))
    try:
        await db_admin.execute("ALTER SCHEMA public OWNER TO postgres")
        await db_admin.execute("GRANT CREATE ON SCHEMA public TO PUBLIC")
    finally:
        await db_admin.close()
    yield (
        make_url(ledger_database_url)
        .set(username=role, password=password, database=database)
        .render_as_string(hide_password=False)
    )
    admin = await asyncpg.connect(_plain(ledger_database_url))
    try:
        await admin.execute(f"DROP DATABASE {database} WITH (FORCE)")
        await admin.execute(f"DROP ROLE {role}")
    finally:
        await admin.close()


async def test_an_app_role_that_can_still_create_in_public_is_refused(
    upgraded_cluster_ordinary_owner: str,
) -> None:
    """Migrated by the database's (ordinary) owner, not the schema's: the REVOKE is a
    warning and `paystream migrate` succeeds; `assert_rls_enforced` refuses the app
    role, which can still create there (nothing did)."""
    url = upgraded_cluster_ordinary_owner
    password = secrets.token_hex(12)
    await upgrade(url, app_password=password)  # succeeds (PostgreSQL: a WARNING only)
    app = create_engine(app_database_url(url, password))
    try:
        async with app.connect() as conn:
            can_create = await conn.scalar(
                text("SELECT has_schema_privilege('paystream_app', 'public', 'CREATE')")
            )
        assert can_create  # the hole 0011 meant to close is open
        with pytest.raises(RlsNotEnforcedError):  # what 0011 says happens: it does not
            await assert_rls_enforced(app)
    finally:
        await app.dispose()


async def test_a_function_planted_before_0011_stops_the_migration(
    ledger_database_url: str,
) -> None:
    """0011 takes CREATE back but what the app role already made in ``public`` while it
    had it stays: a to_jsonb(payments) planted at 0010 opened the forward-only trigger
    after `paystream migrate` to head. The migration now refuses, naming it."""
    url = await fresh_database(ledger_database_url, prefix="h67n")
    admin = await asyncpg.connect(_plain(url))
    try:
        await admin.execute("GRANT CREATE ON SCHEMA public TO PUBLIC")  # PG 14's default
    finally:
        await admin.close()
    password = secrets.token_hex(12)
    await upgrade(url, "0010", app_password=password)
    app = create_engine(app_database_url(url, password))
    try:
        # (As the version of 0010 stored it: this one's writer asks 0012's function.)
        async with tenant_session(app, "acme") as s:
            await s.execute(text("INSERT INTO tenants (tenant_id) VALUES ('acme')"))
            await s.execute(
                text(
                    "INSERT INTO payments (tenant_id, payment_id, amount, currency, status, "
                    "amount_captured, version, last_event_id, created_at, updated_at) "
                    "VALUES ('acme', 'pay_1', 1000, 'USD', 'succeeded', 1000, 1, 'evt_1', "
                    "now(), now())"
                )
            )
        async with app.begin() as conn:  # a stolen app credential, before the upgrade
            await conn.execute(
                text(
                    "CREATE FUNCTION public.to_jsonb(payments) RETURNS jsonb LANGUAGE sql "
                    "AS $$ SELECT '{}'::jsonb $$"
                )
            )
        with pytest.raises(Exception, match=r"function to_jsonb\(payments\)"):
            await upgrade(url)  # the deploy that brings 0011
        async with app.begin() as conn:  # the operator looks, and drops it
            await conn.execute(text("DROP FUNCTION public.to_jsonb(payments)"))
        await upgrade(url)
        await app.dispose()
        with pytest.raises(DBAPIError, match="payments rows"):
            async with tenant_session(app, "acme") as s:
                await s.execute(
                    text(
                        "UPDATE payments SET amount = 1, amount_captured = 1 "
                        "WHERE payment_id = 'pay_1'"
                    )
                )
    finally:
        await app.dispose()
