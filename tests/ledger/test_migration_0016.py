"""Migration 0016 (connected accounts' table): up from 0015 and down again while the
table is empty; the downgrade refused (and rolled back whole) once it holds audited
rows; nothing listed for the backfill (no connected account event was ever stored
before it)."""

from __future__ import annotations

import asyncio

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import NullPool

from paystream.ledger import create_engine, tenant_session, verify_audit, write_events
from paystream.ledger.migrate import app_database_url, current, downgrade, head, upgrade
from paystream.tenancy.crypto import MasterKey, MasterKeyring
from tests.ledger.factories import EventFactory, connected_account

PASSWORD = "m16-pw"


def _app(url: str) -> AsyncEngine:
    return create_engine(app_database_url(url, PASSWORD), poolclass=NullPool)


async def _exists(url: str) -> object:
    owner = create_engine(url, poolclass=NullPool)
    try:
        async with owner.connect() as conn:
            return (
                await conn.execute(text("SELECT to_regclass('public.connected_accounts')"))
            ).scalar()
    finally:
        await owner.dispose()


def test_0016_up_and_down_while_empty_then_refused_once_it_holds_rows(
    module_database_url: str,
) -> None:
    url = module_database_url
    keyring = MasterKeyring(MasterKey.generate())
    t = "m16"

    async def go() -> tuple[object, ...]:
        await downgrade(url, "base")
        await upgrade(url, "0015", app_password=PASSWORD)
        before = await _exists(url)
        await upgrade(url, app_password=PASSWORD)
        assert await current(url) == head() == "0019"
        made = await _exists(url)
        await downgrade(url, "0015")  # (empty: allowed)
        gone = await _exists(url), await current(url)
        await upgrade(url, app_password=PASSWORD)
        app = _app(url)
        try:
            await write_events(app, [connected_account(EventFactory(), t, "ca1")], keyring=keyring)
            problems = (await verify_audit(app, t, keyring)).problems
            async with tenant_session(app, t) as s:
                listed = await s.scalar(text("SELECT count(*) FROM entity_backfill"))
        finally:
            await app.dispose()
        refusal = None
        try:
            await downgrade(url, "0015")
        except RuntimeError as exc:
            refusal = str(exc)
        return before, made, gone, problems, listed, refusal, await current(url)

    before, made, gone, problems, listed, refusal, at = asyncio.run(go())
    assert (before, made, gone) == (None, "connected_accounts", (None, "0015"))
    assert (problems, listed) == ([], 0)
    assert refusal is not None and refusal.startswith(
        "migration 0016 down: connected_accounts hold audited rows"
    )
    assert at == "0019"  # (the whole downgrade rolled back)
