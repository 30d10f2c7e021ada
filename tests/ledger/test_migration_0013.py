"""Migration 0013 on a ledger holding data: subscription and invoice events stored by the
version before it (events rows only) are listed for `paystream ledger backfill`, which
builds their rows with audit entries, once; an events row the application role inserts
later is never applied by it; down to 0012 and back up again."""

from __future__ import annotations

import asyncio
import base64

import pytest
from click.testing import CliRunner
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import NullPool

from paystream.ledger import create_engine, tenant_session, verify_audit, write_events
from paystream.ledger.cli import ledger_group
from paystream.ledger.migrate import app_database_url, current, downgrade, head, upgrade
from paystream.ledger.writer import backfill_entities
from paystream.tenancy.crypto import MasterKey, MasterKeyring
from tests.ledger.factories import EventFactory, insert_event_rows
from tests.ledger.test_refund_transfer_options_ledger import as_before_0018

PASSWORD = "m13-pw"


async def _as_the_older_sink(owner: AsyncEngine, tenant: str, make: EventFactory) -> list[str]:
    """What the version before 0013 stored of a subscription's outcomes: events rows
    alone (its sink had no table to write), in the tenant's session as it did."""
    events = [
        make.subscription(tenant, "sub_1", version=1),
        make.invoice(tenant, "in_1"),
        make.subscription(tenant, "sub_1", version=2, status="past_due"),
        make.invoice(tenant, "in_2", status="open"),
    ]
    async with tenant_session(owner, tenant) as s:
        await insert_event_rows(s, events)
    return [e.event_id for e in events]


async def _scalar(engine: AsyncEngine, tenant: str, sql: str) -> object:
    async with tenant_session(engine, tenant) as s:
        return (await s.execute(text(sql))).scalar()


def test_0013_lists_older_events_and_the_backfill_builds_their_rows(
    module_database_url: str,
) -> None:
    url = module_database_url
    key = MasterKey.generate()
    keyring = MasterKeyring(key)
    make = EventFactory()
    t = "m13"

    async def before() -> list[str]:
        await upgrade(url, "0012", app_password=PASSWORD)
        owner = create_engine(url, poolclass=NullPool)
        app = create_engine(app_database_url(url, PASSWORD), poolclass=NullPool)
        try:
            # A refund through the writer of then (its tables only) and a chain begun.
            async with tenant_session(app, t) as s:
                await s.execute(text("SELECT 1"))
            # (A refund: today's writer writes a payment's 0015 columns too; a refund's
            # table is as it was then, but for 0018's columns, left out here.)
            refund = {"amount": 100, "currency": "USD", "status": "succeeded"}
            with pytest.MonkeyPatch.context() as m:
                as_before_0018(m)
                await write_events(app, [make(t, "refund", "re_1", 1, refund)], keyring=keyring)
            ids = await _as_the_older_sink(owner, t, make)
        finally:
            await app.dispose()
            await owner.dispose()
        await upgrade(url, app_password=PASSWORD)
        assert await current(url) == head()
        return ids

    ids = asyncio.run(before())

    async def listed_and_verified() -> tuple[object, list[str]]:
        app = create_engine(app_database_url(url, PASSWORD), poolclass=NullPool)
        try:
            listed = await _scalar(app, t, "SELECT count(*) FROM entity_backfill")
            return listed, (await verify_audit(app, t, keyring)).problems
        finally:
            await app.dispose()

    listed, problems = asyncio.run(listed_and_verified())
    assert listed == len(ids)
    assert len(problems) == 2, problems
    for problem, kind in zip(problems, ("invoice", "subscription"), strict=True):
        assert problem.startswith(f"2 {kind} event(s) (evt_"), problem
        assert problem.endswith(
            "stored before migration 0013 gave them a table have no row yet: run `paystream "
            "ledger backfill --tenant` for this tenant (they are not covered until then)"
        ), problem

    env = {
        "DATABASE_URL": url,
        "PAYSTREAM_DB_APP_PASSWORD": PASSWORD,
        "PAYSTREAM_MASTER_KEY": base64.b64encode(key.key).decode(),
    }
    ran = CliRunner().invoke(ledger_group, ["backfill"], env=env)
    assert ran.exit_code == 0, ran.output
    assert ran.output == f"{t}: 4 event(s) read, 3 row(s) moved forward, 0 already there\n"

    async def after() -> tuple[list[tuple[object, ...]], object, list[str]]:
        app = create_engine(app_database_url(url, PASSWORD), poolclass=NullPool)
        try:
            async with tenant_session(app, t) as s:
                rows = [
                    tuple(r)
                    for r in await s.execute(
                        text(
                            "SELECT 'subscription', subscription_id, version, status "
                            "FROM subscriptions UNION ALL SELECT 'invoice', invoice_id, "
                            "version, status FROM invoices ORDER BY 1, 2"
                        )
                    )
                ]
            actors = await _scalar(
                app,
                t,
                "SELECT string_agg(DISTINCT actor, ',') FROM audit_log "
                "WHERE entity_type IN ('subscription', 'invoice')",
            )
            return rows, actors, (await verify_audit(app, t, keyring)).problems
        finally:
            await app.dispose()

    rows, actors, problems = asyncio.run(after())
    assert rows == [
        ("invoice", "in_1", 1, "paid"),
        ("invoice", "in_2", 1, "open"),
        ("subscription", "sub_1", 2, "past_due"),
    ]
    assert actors == "operator:backfill"
    assert problems == []

    # Again: nothing moves, no audit entry added.
    async def again() -> tuple[object, object, object]:
        app = create_engine(app_database_url(url, PASSWORD), poolclass=NullPool)
        try:
            entries = await _scalar(app, t, "SELECT count(*) FROM audit_log")
            res = await backfill_entities(app, t, keyring=keyring)
            # An events row the app role inserts now is never listed nor applied.
            async with tenant_session(app, t) as s:
                await s.execute(
                    text(
                        "INSERT INTO events (tenant_id, event_id, type, entity_type, "
                        "entity_id, entity_version, time, data) VALUES (:t, 'late', 'x', "
                        "'subscription', 'sub_9', 1, now(), '{\"amount\": 1, "
                        '"currency": "EUR", "status": "active"}\')'
                    ),
                    {"t": t},
                )
            await backfill_entities(app, t, keyring=keyring)
            late = await _scalar(
                app, t, "SELECT count(*) FROM subscriptions WHERE subscription_id = 'sub_9'"
            )
            return (
                (res.entities_applied, res.entities_stale),
                (await _scalar(app, t, "SELECT count(*) FROM audit_log")) == entries,
                late,
            )
        finally:
            await app.dispose()

    assert asyncio.run(again()) == ((0, 3), True, 0)

    # What a previous release's worker stored after the migration (a rolling upgrade) is
    # not listed: `--unlisted` applies it for the tenants named, the operator vouching.
    refused = CliRunner().invoke(ledger_group, ["backfill", "--unlisted"], env=env)
    assert refused.exit_code == 2 and "--tenant" in refused.output
    ran = CliRunner().invoke(ledger_group, ["backfill", "--unlisted", "--tenant", t], env=env)
    assert ran.exit_code == 0, ran.output
    assert ran.output == f"{t}: 5 event(s) read, 1 row(s) moved forward, 3 already there\n"

    async def vouched() -> tuple[object, list[str]]:
        app = create_engine(app_database_url(url, PASSWORD), poolclass=NullPool)
        try:
            late = await _scalar(
                app, t, "SELECT amount FROM subscriptions WHERE subscription_id = 'sub_9'"
            )
            return late, (await verify_audit(app, t, keyring)).problems
        finally:
            await app.dispose()

    assert asyncio.run(vouched()) == (1, [])

    async def down_refused() -> tuple[str | None, object]:
        try:
            await downgrade(url, "0012")
        except RuntimeError as exc:
            return str(exc), await current(url)
        return None, await current(url)

    refusal, at = asyncio.run(down_refused())
    assert refusal is not None and "hold audited rows" in refusal
    assert at == head()
