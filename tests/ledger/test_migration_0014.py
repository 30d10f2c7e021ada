"""Migration 0014 on a ledger holding data: payout events stored by the version before it
(events rows only, the tenant's audit head locked as its sink did) are listed for
`paystream ledger backfill`, which builds their rows with audit entries, once; a tenant
whose only events were payouts is not taken for a wiped chain meanwhile; an events row
the application role inserts later is never applied but by `--unlisted`; the downgrade
refuses while `payouts` holds rows, and without rows it unlists what it listed (up again
lists them once more)."""

from __future__ import annotations

import asyncio
import base64

import pytest
from click.testing import CliRunner
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import NullPool

from paystream.ledger import create_engine, tenant_session, verify_audit, write_events
from paystream.ledger.audit import lock_tenant
from paystream.ledger.cli import ledger_group
from paystream.ledger.migrate import app_database_url, current, downgrade, head, upgrade
from paystream.ledger.writer import backfill_entities
from paystream.tenancy.crypto import MasterKey, MasterKeyring
from tests.ledger.factories import EventFactory, insert_event_rows, wipe_audit_chain
from tests.ledger.test_refund_transfer_options_ledger import as_before_0018

PASSWORD = "m14-pw"
WAITING = (
    "stored before migration 0014 gave them a table have no row yet: run `paystream "
    "ledger backfill --tenant` for this tenant (they are not covered until then)"
)


async def _as_the_older_sink(owner: AsyncEngine, tenant: str, make: EventFactory) -> list[str]:
    """What the version before 0014 stored of a payout's outcomes: events rows alone (its
    sink had no table to write), after locking the tenant's audit head, as it did."""
    events = [
        make.payout(tenant, "po_1", version=1),
        make.payout(tenant, "po_1", version=2, status="in_transit"),
        make.payout(tenant, "po_2", version=1, method="instant", status="in_transit"),
    ]
    async with tenant_session(owner, tenant) as s:
        await s.execute(
            text("INSERT INTO tenants (tenant_id) VALUES (:t) ON CONFLICT DO NOTHING"),
            {"t": tenant},
        )
        await lock_tenant(s, tenant)
        await insert_event_rows(s, events)
    return [e.event_id for e in events]


async def _scalar(engine: AsyncEngine, tenant: str, sql: str) -> object:
    async with tenant_session(engine, tenant) as s:
        return (await s.execute(text(sql))).scalar()


def _app(url: str) -> AsyncEngine:
    return create_engine(app_database_url(url, PASSWORD), poolclass=NullPool)


def test_0014_lists_older_payout_events_and_the_backfill_builds_their_rows(
    module_database_url: str,
) -> None:
    url = module_database_url
    key = MasterKey.generate()
    keyring = MasterKeyring(key)
    make = EventFactory()
    t, only = "m14", "m14-only"  # (the second tenant's only events are payouts)

    async def before() -> None:
        await downgrade(url, "base")  # (the module's database may hold rows at head)
        await upgrade(url, "0013", app_password=PASSWORD)
        owner = create_engine(url, poolclass=NullPool)
        app = _app(url)
        try:
            # A refund through the writer of then (its tables only): a chain begun.
            # (A refund: today's writer writes a payment's 0015 columns too; a refund's
            # table is as it was then, but for 0018's columns, left out here.)
            refund = {"amount": 100, "currency": "USD", "status": "succeeded"}
            with pytest.MonkeyPatch.context() as m:
                as_before_0018(m)
                await write_events(app, [make(t, "refund", "re_1", 1, refund)], keyring=keyring)
            await _as_the_older_sink(owner, t, make)
            await _as_the_older_sink(owner, only, make)
        finally:
            await app.dispose()
            await owner.dispose()
        await upgrade(url, app_password=PASSWORD)
        assert await current(url) == head() == "0019"

    asyncio.run(before())

    async def listed_and_verified() -> dict[str, tuple[object, list[str]]]:
        app = _app(url)
        try:
            return {
                tenant: (
                    await _scalar(app, tenant, "SELECT count(*) FROM entity_backfill"),
                    (await verify_audit(app, tenant, keyring)).problems,
                )
                for tenant in (t, only)
            }
        finally:
            await app.dispose()

    found = asyncio.run(listed_and_verified())
    for tenant in (t, only):
        listed, problems = found[tenant]
        assert listed == 3
        # Named as waiting for the backfill, and only that: no "audit chain is empty"
        # for the tenant holding payout events alone (they never had entries).
        assert len(problems) == 1, (tenant, problems)
        assert problems[0].startswith("3 payout event(s) (evt_"), problems
        assert problems[0].endswith(WAITING), problems

    env = {
        "DATABASE_URL": url,
        "PAYSTREAM_DB_APP_PASSWORD": PASSWORD,
        "PAYSTREAM_MASTER_KEY": base64.b64encode(key.key).decode(),
    }
    ran = CliRunner().invoke(ledger_group, ["backfill"], env=env)
    assert ran.exit_code == 0, ran.output
    assert ran.output == "".join(
        f"{tenant}: 3 event(s) read, 2 row(s) moved forward, 0 already there\n"
        for tenant in (t, only)
    )

    async def after() -> dict[str, tuple[object, ...]]:
        app = _app(url)
        try:
            out: dict[str, tuple[object, ...]] = {}
            for tenant in (t, only):
                async with tenant_session(app, tenant) as s:
                    rows = [
                        tuple(r)
                        for r in await s.execute(
                            text(
                                "SELECT payout_id, version, status, method, amount, "
                                "metadata FROM payouts ORDER BY payout_id"
                            )
                        )
                    ]
                entries = await _scalar(
                    app,
                    tenant,
                    "SELECT string_agg(actor || ' ' || action, ',' ORDER BY seq) FROM "
                    "audit_log WHERE entity_type = 'payout'",
                )
                out[tenant] = (rows, entries, (await verify_audit(app, tenant, keyring)).problems)
            return out
        finally:
            await app.dispose()

    done = asyncio.run(after())
    for tenant in (t, only):
        rows, entries, problems = done[tenant]
        assert rows == [
            ("po_1", 2, "in_transit", "standard", 3000, {"batch": "june"}),
            ("po_2", 1, "in_transit", "instant", 3000, {"batch": "june"}),
        ]
        # Every version audited, po_1's creation too.
        assert entries == (
            "operator:backfill com.paystream.payout.created,"
            "operator:backfill com.paystream.payout.updated,"
            "operator:backfill com.paystream.payout.created"
        )
        assert problems == []

    # Again: nothing moves; an events row the app role inserts now is never applied.
    async def again() -> tuple[object, ...]:
        app = _app(url)
        try:
            entries = await _scalar(app, t, "SELECT count(*) FROM audit_log")
            res = await backfill_entities(app, t, keyring=keyring)
            async with tenant_session(app, t) as s:
                await s.execute(
                    text(
                        "INSERT INTO events (tenant_id, event_id, type, entity_type, "
                        "entity_id, entity_version, time, data) VALUES (:t, 'late', 'x', "
                        "'payout', 'po_9', 1, now(), '{\"amount\": 1, "
                        '"currency": "EUR", "status": "paid"}\')'
                    ),
                    {"t": t},
                )
            await backfill_entities(app, t, keyring=keyring)
            late = await _scalar(app, t, "SELECT count(*) FROM payouts WHERE payout_id = 'po_9'")
            return (
                (res.entities_applied, res.entities_stale),
                (await _scalar(app, t, "SELECT count(*) FROM audit_log")) == entries,
                late,
            )
        finally:
            await app.dispose()

    assert asyncio.run(again()) == ((0, 2), True, 0)

    # What a previous release's worker stored after the migration (a rolling upgrade):
    # `--unlisted` applies it for the tenant named, the operator vouching.
    ran = CliRunner().invoke(ledger_group, ["backfill", "--unlisted", "--tenant", t], env=env)
    assert ran.exit_code == 0, ran.output
    assert ran.output == f"{t}: 4 event(s) read, 1 row(s) moved forward, 2 already there\n"

    async def vouched_then_down() -> tuple[object, list[str], str | None, object]:
        app = _app(url)
        try:
            late = await _scalar(app, t, "SELECT amount FROM payouts WHERE payout_id = 'po_9'")
            problems = (await verify_audit(app, t, keyring)).problems
        finally:
            await app.dispose()
        refusal = None
        try:
            await downgrade(url, "0013")
        except RuntimeError as exc:
            refusal = str(exc)
        return late, problems, refusal, await current(url)

    late, problems, refusal, at = asyncio.run(vouched_then_down())
    assert (late, problems) == (1, [])
    assert refusal is not None and "payouts hold audited rows" in refusal
    assert at == "0019"  # (the whole downgrade rolled back)


def test_0014_down_without_rows_unlists_and_up_again_lists_once_more(
    module_database_url: str,
) -> None:
    """No payout row yet (the backfill never ran, the sink wrote none): down to 0013 is
    allowed and takes back what 0014 listed (0013's release knows no payouts table);
    up again lists the same events (no duplicate key), and the backfill builds them."""
    url = module_database_url
    keyring = MasterKeyring(MasterKey.generate())
    make = EventFactory()
    t = "d14"

    async def go() -> tuple[object, object, object, object, list[str]]:
        await downgrade(url, "base")
        await upgrade(url, "0013", app_password=PASSWORD)
        owner = create_engine(url, poolclass=NullPool)
        try:
            await _as_the_older_sink(owner, t, make)
        finally:
            await owner.dispose()
        await upgrade(url, app_password=PASSWORD)
        app = _app(url)
        try:
            listed = await _scalar(app, t, "SELECT count(*) FROM entity_backfill")
        finally:
            await app.dispose()
        await downgrade(url, "0013")
        at = await current(url)
        app = _app(url)
        try:
            unlisted = await _scalar(app, t, "SELECT count(*) FROM entity_backfill")
        finally:
            await app.dispose()
        await upgrade(url, app_password=PASSWORD)
        app = _app(url)
        try:
            relisted = await _scalar(app, t, "SELECT count(*) FROM entity_backfill")
            await backfill_entities(app, t, keyring=keyring)
            return listed, at, unlisted, relisted, (await verify_audit(app, t, keyring)).problems
        finally:
            await app.dispose()

    assert asyncio.run(go()) == (3, "0013", 0, 3, [])


def test_a_backfilled_chain_deleted_whole_is_still_found(module_database_url: str) -> None:
    """The wiped-chain check leaves listed events out only while they wait for the
    backfill (they had no entries before it); once backfilled, a chain deleted whole is
    named as such (test_backfilled_chain_wiped: with its rows deleted too)."""
    url = module_database_url
    keyring = MasterKeyring(MasterKey.generate())
    make = EventFactory()
    t = "w14"

    async def go() -> list[str]:
        await downgrade(url, "base")
        await upgrade(url, "0013", app_password=PASSWORD)
        owner = create_engine(url, poolclass=NullPool)
        try:
            await _as_the_older_sink(owner, t, make)
            await upgrade(url, app_password=PASSWORD)
            app = _app(url)
            try:
                await backfill_entities(app, t, keyring=keyring)
                assert (await verify_audit(app, t, keyring)).problems == []
                async with owner.begin() as conn:
                    await wipe_audit_chain(conn, t)
                return (await verify_audit(app, t, keyring)).problems
            finally:
                await app.dispose()
        finally:
            await owner.dispose()

    problems = asyncio.run(go())
    assert problems == ["events are recorded for this tenant but its audit chain is empty"], (
        problems
    )
