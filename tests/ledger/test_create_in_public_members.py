"""assert_rls_enforced's CREATE-in-public check and a role paystream_app is a member of
(a DBA's group role holding CREATE on public, for other apps; review h67q): one it may
SET ROLE to was not counted, and the message blamed migration 0011 for an inherited one."""

from __future__ import annotations

import secrets

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from paystream.ledger import assert_rls_enforced, create_engine
from paystream.ledger.migrate import app_database_url, upgrade
from paystream.ledger.session import RlsNotEnforcedError
from tests.fixtures.postgres import fresh_database


def _plain(url: str, **parts: str) -> str:
    return make_url(url).set(drivername="postgresql", **parts).render_as_string(hide_password=False)


async def _with_group(ledger_database_url: str, inherit: bool) -> tuple[str, str, str]:
    url = await fresh_database(ledger_database_url, prefix="h67q")
    password = secrets.token_hex(12)
    await upgrade(url, app_password=password)  # to head: 0011 revoked CREATE (superuser)
    group = f"app_writers_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(_plain(url))
    try:
        # A DBA's role for the apps that may create in public; paystream_app put in it.
        await admin.execute(f"CREATE ROLE {group} NOLOGIN")
        await admin.execute(f"GRANT CREATE ON SCHEMA public TO {group}")
        await admin.execute(
            f"GRANT {group} TO paystream_app WITH INHERIT {'TRUE' if inherit else 'FALSE'}"
        )
    finally:
        await admin.close()
    return url, password, group


async def _drop_group(url: str, group: str) -> None:
    admin = await asyncpg.connect(_plain(url))
    try:
        await admin.execute(f"REVOKE {group} FROM paystream_app")
        await admin.execute(f"DROP OWNED BY {group}")
        await admin.execute(f"DROP ROLE {group}")
    finally:
        await admin.close()


async def test_an_app_role_that_may_set_role_to_a_creator_in_public_is_refused(
    ledger_database_url: str,
) -> None:
    """paystream_app is a member (WITH INHERIT FALSE: it may SET ROLE) of a role holding
    CREATE on public: has_schema_privilege(current_user, ...) says no, yet a stolen app
    credential plants a closer to_jsonb(payments) there (as that role), which is the
    hole 0011 closes. assert_rls_enforced already refuses a member of a BYPASSRLS role
    for the same reason (it may SET ROLE to it); this one passes."""
    url, password, group = await _with_group(ledger_database_url, inherit=False)
    app = create_engine(app_database_url(url, password))
    try:
        async with app.begin() as conn:  # what the credential can do
            await conn.execute(text(f"SET ROLE {group}"))
            await conn.execute(
                text(
                    "CREATE FUNCTION public.h67q_planted(int) RETURNS int LANGUAGE sql "
                    "AS $$ SELECT 1 $$"
                )
            )
            await conn.execute(text("RESET ROLE"))
        with pytest.raises(RlsNotEnforcedError):
            await assert_rls_enforced(app)
    finally:
        await app.dispose()
        await _drop_group(url, group)


async def test_the_refusal_names_what_to_revoke_when_create_comes_through_a_role(
    ledger_database_url: str,
) -> None:
    """paystream_app inherits CREATE on public from a group role: refused (right), but the
    message says to run REVOKE ... FROM PUBLIC, paystream_app "(migration 0011 could
    not: it was run by another role)": 0011 ran as the schema's owner, and doing what the
    message says leaves the app refused with the same message."""
    url, password, group = await _with_group(ledger_database_url, inherit=True)
    app = create_engine(app_database_url(url, password))
    try:
        with pytest.raises(RlsNotEnforcedError) as first:
            await assert_rls_enforced(app)
        admin = await asyncpg.connect(_plain(url))  # the schema's owner does as told
        try:
            await admin.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC, paystream_app")
        finally:
            await admin.close()
        try:
            await assert_rls_enforced(app)
        except RlsNotEnforcedError as again:
            assert group in str(again), (
                f"told {str(first.value)!r}, done, and refused again: the role it comes "
                "through is not named"
            )
    finally:
        await app.dispose()
        await _drop_group(url, group)
