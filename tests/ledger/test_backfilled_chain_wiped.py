"""A backfilled tenant's audit chain deleted whole is still reported as deleted.

The wiped-chain check left out every event migrations 0013 and 0014 listed for
`paystream ledger backfill`, for ever, not only those still waiting for it: a tenant
holding only listed events (subscriptions and invoices stored before 0013, payouts
before 0014), backfilled, then its audit chain, head and rows deleted by the owner, was
reported as "waiting for the backfill"; running the backfill as told rebuilt the rows
under a new chain and `audit verify` was clean: the deletion was gone (review h74m,
finding 3). Now the check skips listed events only while the tenant's chain never
began, and the backfill refuses to build a new chain over a deleted one."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable

import pytest
from click.testing import CliRunner
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import NullPool

from paystream.ledger import create_engine, tenant_session, verify_audit
from paystream.ledger.audit import lock_tenant
from paystream.ledger.cli import ledger_group
from paystream.ledger.errors import ChainWipedError
from paystream.ledger.migrate import downgrade, upgrade
from paystream.ledger.writer import backfill_entities
from paystream.tenancy.crypto import MasterKey, MasterKeyring
from tests.ledger import test_migration_0013 as m13
from tests.ledger import test_migration_0014 as m14
from tests.ledger.factories import EventFactory, wipe_audit_chain

OlderSink = Callable[[AsyncEngine, str, EventFactory], Awaitable[list[str]]]

# (listing migration, the version before it, what its older sink stored, entity tables)
LISTINGS = {
    "0013": ("0012", m13._as_the_older_sink, ("subscriptions", "invoices")),
    "0014": ("0013", m14._as_the_older_sink, ("payouts",)),
}


@pytest.mark.parametrize("listing", sorted(LISTINGS))
def test_a_backfilled_chain_wiped_with_its_rows_is_not_read_as_waiting(
    module_database_url: str, listing: str
) -> None:
    url = module_database_url
    key = MasterKey.generate()
    keyring = MasterKeyring(key)
    make = EventFactory()
    before, older_sink, tables = LISTINGS[listing]
    t = f"w{listing}"

    async def go() -> tuple[list[str], list[str], list[str]]:
        await downgrade(url, "base")
        await upgrade(url, before, app_password=m14.PASSWORD)
        owner = create_engine(url, poolclass=NullPool)
        try:
            async with tenant_session(owner, t) as s:  # (each sink of then locked its head)
                await s.execute(
                    text("INSERT INTO tenants (tenant_id) VALUES (:t) ON CONFLICT DO NOTHING"),
                    {"t": t},
                )
                await lock_tenant(s, t)
            await older_sink(owner, t, make)
            await upgrade(url, app_password=m14.PASSWORD)
            app = m14._app(url)
            try:
                waiting = (await verify_audit(app, t, keyring)).problems
                await backfill_entities(app, t, keyring=keyring)
                assert (await verify_audit(app, t, keyring)).problems == []
                async with owner.begin() as conn:
                    await wipe_audit_chain(conn, t)
                    for table in tables:
                        await conn.execute(
                            text(f"DELETE FROM {table} WHERE tenant_id = :t"), {"t": t}
                        )
                wiped = (await verify_audit(app, t, keyring)).problems
                with pytest.raises(ChainWipedError, match="audit chain is empty"):
                    await backfill_entities(app, t, keyring=keyring)
                after = (await verify_audit(app, t, keyring)).problems
                return waiting, wiped, after
            finally:
                await app.dispose()
        finally:
            await owner.dispose()

    waiting, wiped, after = asyncio.run(go())
    # Before the backfill: waiting for it, no chain to have lost (no false alarm).
    assert waiting and all("have no row yet: run `paystream ledger backfill" in p for p in waiting)
    # The chain that verified was deleted whole: that must be said, not "run the backfill".
    assert "events are recorded for this tenant but its audit chain is empty" in wiped, wiped
    assert not any("have no row yet: run `paystream ledger backfill" in p for p in wiped), wiped
    # And the backfill did not paper it over (a chain once verified rebuilt from scratch).
    assert after == wiped, after
    # `paystream ledger backfill` (every listed tenant) says so, and exits 1.
    env = {
        "DATABASE_URL": url,
        "PAYSTREAM_DB_APP_PASSWORD": m14.PASSWORD,
        "PAYSTREAM_MASTER_KEY": base64.b64encode(key.key).decode(),
    }
    ran = CliRunner().invoke(ledger_group, ["backfill"], env=env)
    assert ran.exit_code == 1, ran.output
    assert f"{t}: refused: tenant {t}: events are recorded but its audit chain" in ran.output
    assert "1 tenant(s) refused: their audit chain was deleted" in ran.output
