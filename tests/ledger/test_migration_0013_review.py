"""Review h73p: the ledger's subscriptions/invoices tables (migration 0013)."""

from __future__ import annotations

import asyncio

from sqlalchemy import text
from sqlalchemy.pool import NullPool

from paystream.ledger import create_engine, tenant_session, verify_audit, write_events
from paystream.ledger.migrate import app_database_url, current, downgrade, upgrade
from paystream.ledger.writer import backfill_entities
from paystream.tenancy.crypto import MasterKey, MasterKeyring
from tests.ledger.factories import EventFactory

PASSWORD = "h73p-pw"


def test_0013_down_and_up_again_leaves_a_chain_that_verifies(module_database_url: str) -> None:
    """A rollback (downgrade to 0012, the release before) and the roll forward again:
    the rows the sink built under 0013 are dropped, 0013 lists every stored event again,
    and the backfill rebuilds the rows. `audit verify` must still pass; and an events row
    the application role inserted while on 0013 (reported then as never applied) must not
    become a listed, backfilled (laundered) one."""
    url = module_database_url
    keyring = MasterKeyring(MasterKey.generate())
    make = EventFactory()
    t = "p13"

    async def go() -> tuple[list[str], list[str], object]:
        await upgrade(url, app_password=PASSWORD)
        app = create_engine(app_database_url(url, PASSWORD), poolclass=NullPool)
        try:
            # The sink of 0013 writes a subscription and its invoice, with audit entries.
            await write_events(
                app,
                [make.subscription(t, "sub_1"), make.invoice(t, "in_1")],
                keyring=keyring,
            )
            # An events row alone, as the app role can insert one (a forgery).
            async with tenant_session(app, t) as s:
                await s.execute(
                    text(
                        "INSERT INTO events (tenant_id, event_id, type, entity_type, "
                        "entity_id, entity_version, time, data) VALUES (:t, 'forged', 'x', "
                        "'subscription', 'sub_1', 2, now(), '{\"amount\": 1, "
                        '"currency": "EUR", "status": "active"}\')'
                    ),
                    {"t": t},
                )
            flagged = (await verify_audit(app, t, keyring)).problems
        finally:
            await app.dispose()
        # Rolled back, then forward again (a downgrade that refuses, the tables holding
        # audited rows, is as good: nothing is lost).
        try:
            await downgrade(url, "0012")
        except Exception:  # refused: the fix this test also accepts
            return flagged, [], 1500
        await upgrade(url, app_password=PASSWORD)
        app = create_engine(app_database_url(url, PASSWORD), poolclass=NullPool)
        try:
            await backfill_entities(app, t, keyring=keyring)
            async with tenant_session(app, t) as s:
                amount = (
                    await s.execute(
                        text("SELECT amount FROM subscriptions WHERE subscription_id = 'sub_1'")
                    )
                ).scalar()
            return flagged, (await verify_audit(app, t, keyring)).problems, amount
        finally:
            await app.dispose()

    flagged, problems, amount = asyncio.run(go())
    assert any("never applied" in p for p in flagged), flagged  # (0013 caught it)
    assert amount == 1500, "the forged event was listed and applied by the backfill"
    assert problems == [], problems


def test_0013_lets_events_be_read_while_it_lists_them(module_database_url: str) -> None:
    """0013's docstring: "It locks events against writes while it lists them: the sink's
    writes wait for its commit meanwhile, reads do not." Its ALTER TABLE events NO FORCE
    ROW LEVEL SECURITY takes ACCESS EXCLUSIVE (held to its commit, over a scan of the
    whole events table): queued behind one reader already there (an `audit verify`
    snapshot), every later read of events waits too."""
    url = module_database_url

    async def go() -> str | None:
        await downgrade(url, "base")  # (the module's database may hold rows at head)
        await upgrade(url, "0012", app_password=PASSWORD)
        assert await current(url) == "0012"
        owner = create_engine(url, poolclass=NullPool)
        try:
            async with owner.connect() as first:
                await first.execute(text("SELECT count(*) FROM events"))  # open, ACCESS SHARE
                migrating = asyncio.create_task(upgrade(url, app_password=PASSWORD))
                await asyncio.sleep(1.5)
                failed: str | None = None
                try:
                    async with owner.connect() as reader:
                        await reader.execute(text("SET lock_timeout = '2s'"))
                        await reader.execute(text("SELECT count(*) FROM events"))
                except Exception as exc:
                    failed = type(exc).__name__ + ": " + str(exc).splitlines()[0]
                await first.commit()
            await migrating
            return failed
        finally:
            await owner.dispose()

    assert asyncio.run(go()) is None
