"""The owner-side checks (`keys rotate`, `doctor`) see every tenant's data keys when the
schema owner is an ordinary role, as on managed PostgreSQL: with FORCE ROW LEVEL SECURITY
and no policy for it, such an owner saw none, and rotation said nothing was left under a
retired key."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import asyncpg
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.engine import make_url

from paystream.ledger import create_engine, write_events
from paystream.ledger.migrate import app_database_url, upgrade
from paystream.tenancy.crypto import MasterKey, MasterKeyring
from paystream.tenancy.rotation import ledger_keys_left
from tests.ledger.factories import EventFactory


def _plain(url: str, **parts: str) -> str:
    return make_url(url).set(drivername="postgresql", **parts).render_as_string(hide_password=False)


@pytest_asyncio.fixture
async def ordinary_owner(ledger_database_url: str) -> AsyncIterator[str]:
    """A database owned by a login role that is neither superuser nor BYPASSRLS."""
    suffix = secrets.token_hex(4)
    role, database, password = f"owner_{suffix}", f"ledger_{suffix}", secrets.token_hex(12)
    admin = await asyncpg.connect(_plain(ledger_database_url))
    try:
        await admin.execute(
            f"CREATE ROLE {role} LOGIN CREATEROLE NOSUPERUSER NOBYPASSRLS PASSWORD '{password}'"
        )
        await admin.execute(f"CREATE DATABASE {database} OWNER {role}")
        # The application role is cluster-wide: when it exists already, a DBA lets the
        # owner administer it (migrations set its password).
        await admin.execute(
            "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = "
            "'paystream_app') THEN CREATE ROLE paystream_app NOLOGIN; END IF; END $$"
        )
        await admin.execute(f"GRANT paystream_app TO {role} WITH ADMIN OPTION")
    finally:
        await admin.close()
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


async def test_an_ordinary_owner_sees_every_tenants_key_headers(
    ordinary_owner: str, make_event: EventFactory
) -> None:
    app_password = secrets.token_hex(12)
    await upgrade(ordinary_owner, app_password=app_password)
    app = create_engine(app_database_url(ordinary_owner, app_password))
    owner = create_engine(ordinary_owner)
    try:
        old = MasterKeyring(MasterKey.generate())
        events = [make_event.customer("acme", "cus_1"), make_event.customer("globex", "cus_2")]
        await write_events(app, events, keyring=old)
        # `keys rotate`'s gate, under a new current key: both tenants' keys are left.
        left = await ledger_keys_left(ordinary_owner, MasterKey.generate().key_id)
        assert left == {"acme": 1, "globex": 1}
        # `doctor`'s query: every wrapping key.
        async with owner.connect() as conn:
            used = (await conn.execute(text("SELECT DISTINCT master_key_id FROM data_keys"))).all()
            assert [r[0] for r in used] == [old.current.key_id]
            # Reading only: the owner still cannot see tenant rows elsewhere.
            customers = await conn.execute(text("SELECT count(*) FROM customers"))
            assert customers.scalar() == 0
    finally:
        await app.dispose()
        await owner.dispose()


async def test_an_ordinary_owner_upgrades_again_after_a_downgrade(ordinary_owner: str) -> None:
    """Revision 0004's records survive its downgrade, FORCE included: on the way back up
    the owner recording what the older version wrote was refused by its own policy."""
    from paystream.ledger import create_engine, verify_audit, write_events
    from paystream.ledger.migrate import app_database_url, downgrade, upgrade
    from paystream.tenancy.crypto import MasterKey, MasterKeyring
    from tests.ledger.factories import EventFactory
    from tests.ledger.test_audit_forgery import _append_forged

    password = secrets.token_hex(12)
    await upgrade(ordinary_owner, app_password=password)
    app = create_engine(app_database_url(ordinary_owner, password))
    keyring = MasterKeyring(MasterKey.generate())
    try:
        await write_events(app, [EventFactory().payment("oo", "pay_1")], keyring=keyring)
        await downgrade(ordinary_owner, "0003")
        await _append_forged(app, "oo", None, None)  # an older (unkeyed) worker meanwhile
        await app.dispose()
        await upgrade(ordinary_owner)
        await app.dispose()
        result = await verify_audit(app, "oo", keyring)
        assert result.ok, result.problems
    finally:
        await app.dispose()
