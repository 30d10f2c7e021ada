"""assert_rls_enforced's refusal of paystream_app as a member of a role that may create in
schema public (review h67t of h67q): no refusal for a membership it cannot use (PostgreSQL
16's neither SET nor INHERIT), and the advice that helps when PUBLIC holds CREATE."""

from __future__ import annotations

import secrets

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from paystream.ledger import assert_rls_enforced, create_engine
from paystream.ledger.migrate import app_database_url, upgrade
from paystream.ledger.session import RlsNotEnforcedError
from tests.fixtures.postgres import fresh_database


def _plain(url: str, **parts: str) -> str:
    return make_url(url).set(drivername="postgresql", **parts).render_as_string(hide_password=False)


async def _fresh(ledger_database_url: str) -> tuple[str, str]:
    url = await fresh_database(ledger_database_url, prefix="h67t")
    password = secrets.token_hex(12)
    await upgrade(url, app_password=password)
    return url, password


async def _admin(url: str, *statements: str) -> None:
    admin = await asyncpg.connect(_plain(url))
    try:
        for statement in statements:
            await admin.execute(statement)
    finally:
        await admin.close()


async def test_a_membership_that_grants_neither_set_nor_inherit_is_not_refused(
    ledger_database_url: str,
) -> None:
    """PostgreSQL 16: GRANT g TO paystream_app WITH INHERIT FALSE, SET FALSE (no ADMIN):
    paystream_app can neither SET ROLE g nor use g's privileges, so g's CREATE on public
    is out of its reach. pg_has_role(..., 'MEMBER') counts the bare membership."""
    url, password = await _fresh(ledger_database_url)
    group = f"app_writers_{secrets.token_hex(4)}"
    await _admin(
        url,
        f"CREATE ROLE {group} NOLOGIN",
        f"GRANT CREATE ON SCHEMA public TO {group}",
        f"GRANT {group} TO paystream_app WITH INHERIT FALSE, SET FALSE",
    )
    app = create_engine(app_database_url(url, password))
    try:
        async with app.connect() as conn:  # it really cannot
            with pytest.raises(Exception, match="permission denied"):
                await conn.exec_driver_sql(f"SET ROLE {group}")
        await assert_rls_enforced(app)
    finally:
        await app.dispose()
        await _admin(
            url,
            f"REVOKE {group} FROM paystream_app",
            f"DROP OWNED BY {group}",
            f"DROP ROLE {group}",
        )


async def test_with_create_granted_to_public_the_advice_is_to_revoke_it_from_public(
    ledger_database_url: str,
) -> None:
    """Where CREATE on public is PUBLIC's (PostgreSQL 14 and older by default, and 0011
    run by a role that does not own the schema: the case its message is for), every
    role paystream_app is a member of "may create in public". The member check runs
    first, names an innocent group (one with no privilege of its own), and advises
    revoking that membership or that role's CREATE: neither helps."""
    url, password = await _fresh(ledger_database_url)
    group = f"readers_{secrets.token_hex(4)}"
    await _admin(
        url,
        "GRANT CREATE ON SCHEMA public TO PUBLIC",
        f"CREATE ROLE {group} NOLOGIN",
        f"GRANT {group} TO paystream_app",
    )
    app = create_engine(app_database_url(url, password))
    try:
        with pytest.raises(RlsNotEnforcedError) as refused:
            await assert_rls_enforced(app)
        assert "FROM PUBLIC" in str(refused.value), str(refused.value)
    finally:
        await app.dispose()
        await _admin(
            url,
            "REVOKE CREATE ON SCHEMA public FROM PUBLIC",
            f"REVOKE {group} FROM paystream_app",
            f"DROP ROLE {group}",
        )


@pytest.mark.parametrize("predefined", ["pg_write_all_data", "pg_read_all_data", "pg_monitor"])
async def test_predefined_roles_are_not_taken_for_creators_in_public(
    ledger_database_url: str, predefined: str
) -> None:
    """(Coverage, passes: predefined roles hold USAGE on schemas, not CREATE.)"""
    url, password = await _fresh(ledger_database_url)
    await _admin(url, f"GRANT {predefined} TO paystream_app")
    app = create_engine(app_database_url(url, password))
    try:
        await assert_rls_enforced(app)
    finally:
        await app.dispose()
        await _admin(url, f"REVOKE {predefined} FROM paystream_app")


async def test_a_membership_with_admin_option_alone_is_still_refused(
    ledger_database_url: str,
) -> None:
    """(Coverage for the fix: ADMIN lets paystream_app grant itself SET on the role.)"""
    url, password = await _fresh(ledger_database_url)
    group = f"app_writers_{secrets.token_hex(4)}"
    await _admin(
        url,
        f"CREATE ROLE {group} NOLOGIN",
        f"GRANT CREATE ON SCHEMA public TO {group}",
        f"GRANT {group} TO paystream_app WITH ADMIN TRUE, INHERIT FALSE, SET FALSE",
    )
    app = create_engine(app_database_url(url, password))
    try:
        async with app.begin() as conn:  # what the credential can do
            await conn.exec_driver_sql(f"GRANT {group} TO paystream_app WITH SET TRUE")
            await conn.exec_driver_sql(f"SET ROLE {group}")
            await conn.exec_driver_sql("RESET ROLE")
            await conn.exec_driver_sql(f"GRANT {group} TO paystream_app WITH SET FALSE")
        with pytest.raises(RlsNotEnforcedError, match=group):
            await assert_rls_enforced(app)
    finally:
        await app.dispose()
        await _admin(
            url,
            f"DROP OWNED BY {group}",  # (DROP ROLE ends its memberships, self-granted too)
            f"DROP ROLE {group}",
        )
