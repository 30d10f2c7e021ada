"""Migration 0019 (transfers' table): up from 0018 and down again while it holds no row,
the downgrade refused (and rolled back whole) once it holds audited rows
(tests/ledger/migration_roundtrip.py); the transfer events the release before stored
(in ``events`` alone) listed for ``paystream ledger backfill``, named by ``audit
verify`` until it runs, then built into rows, each version audited; a write of a
transfer's row is upserted by (tenant, transfer id) and kept apart per tenant (RLS)."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import NullPool

from paystream.ledger import create_engine, tenant_session, verify_audit, write_events, writer
from paystream.ledger.events import EntityType
from paystream.ledger.migrate import app_database_url, current, downgrade, head, upgrade
from paystream.ledger.writer import backfill_entities
from paystream.tenancy.crypto import MasterKey, MasterKeyring
from tests.ledger.factories import EventFactory, transfer
from tests.ledger.migration_roundtrip import round_trip_while_unset

PASSWORD = "m19-pw"
COLUMNS = ("transfer_id", "status", "amount", "amount_reversed", "connected_account_id")


def _app(url: str) -> AsyncEngine:
    return create_engine(app_database_url(url, PASSWORD), poolclass=NullPool)


def test_0019_up_and_down_while_empty_then_refused_once_it_holds_rows(
    module_database_url: str,
) -> None:
    payment = {"amount": 1_000, "currency": "USD", "status": "succeeded",
               "amount_captured": 1_000}  # fmt: skip
    made = transfer(EventFactory(), "m19", "tr1").data
    # (a payment alone: no transfer row, the downgrade may go; a transfer's: refused)
    run = round_trip_while_unset(
        module_database_url,
        password=PASSWORD,
        previous="0018",
        expected_head="0019",
        table="transfers",
        columns=COLUMNS,
        unset=("m19", "payment", "p0", payment),
        held=("m19", "transfer", "tr1", made),
    )
    assert run.before == [] and run.made == sorted(COLUMNS)
    assert run.gone == ([], "0018") and run.problems == []
    assert run.refusal is not None and run.refusal.startswith(
        "migration 0019 down: transfers hold audited rows"
    )
    assert run.at == "0019"  # (the whole downgrade rolled back)


async def _scalar(app: AsyncEngine, tenant: str, sql: str) -> object:
    async with tenant_session(app, tenant) as s:
        return await s.scalar(text(sql))


def test_0019_lists_older_transfer_events_and_the_backfill_builds_their_rows(
    module_database_url: str,
) -> None:
    url = module_database_url
    keyring = MasterKeyring(MasterKey.generate())
    make = EventFactory()
    t = "b19"
    older = [
        transfer(make, t, "tr1"),
        transfer(make, t, "tr1", 2, status="partially_reversed", amount_reversed=1000),
        transfer(make, t, "tr2", amount=500, payment_id=None),
    ]

    async def go() -> tuple[object, ...]:
        await downgrade(url, "base")
        await upgrade(url, "0018", app_password=PASSWORD)
        app = _app(url)
        try:
            with pytest.MonkeyPatch.context() as m:
                # The sink of then: transfers in the events alone (no table of theirs).
                m.delitem(writer.ENTITY_TABLES, EntityType.TRANSFER)
                await write_events(app, [make.payment(t, "p1"), *older], keyring=keyring)
        finally:
            await app.dispose()
        await upgrade(url, app_password=PASSWORD)
        assert await current(url) == head() == "0019"
        app = _app(url)
        try:
            listed = await _scalar(app, t, "SELECT count(*) FROM entity_backfill")
            waiting = (await verify_audit(app, t, keyring)).problems
            res = await backfill_entities(app, t, keyring=keyring)
            async with tenant_session(app, t) as s:
                rows = [
                    tuple(r)
                    for r in await s.execute(
                        text(
                            "SELECT transfer_id, version, status, amount, amount_reversed, "
                            "payment_id, metadata FROM transfers ORDER BY transfer_id"
                        )
                    )
                ]
            entries = await _scalar(
                app, t,
                "SELECT string_agg(actor || ' ' || action, ',' ORDER BY seq) FROM audit_log "
                "WHERE entity_type = 'transfer'",
            )  # fmt: skip
            after = (await verify_audit(app, t, keyring)).problems
            again = await backfill_entities(app, t, keyring=keyring)
            # A later version through the sink: the row moves forward (upsert by id).
            reversed_ = transfer(make, t, "tr1", 3, status="reversed", amount_reversed=3000)
            await write_events(app, [reversed_], keyring=keyring)
            moved = await _scalar(
                app, t, "SELECT status || ' ' || version FROM transfers WHERE transfer_id = 'tr1'"
            )
            other = await _scalar(app, "x19", "SELECT count(*) FROM transfers")
            final = (await verify_audit(app, t, keyring)).problems
        finally:
            await app.dispose()
        return listed, waiting, res.entities_applied, rows, entries, after, \
            again.entities_applied, moved, other, final  # fmt: skip

    listed, waiting, applied, rows, entries, after, again, moved, other, final = asyncio.run(go())
    assert listed == 3
    assert len(waiting) == 1 and waiting[0].startswith("3 transfer event(s) (evt_"), waiting
    assert "stored before migration 0019 gave them a table" in waiting[0]
    assert applied == 2
    assert rows == [
        ("tr1", 2, "partially_reversed", 3000, 1000, "p1", {"order": "1"}),
        ("tr2", 1, "created", 500, 0, None, {"order": "1"}),
    ]
    assert entries == (
        "operator:backfill com.paystream.transfer.created,"
        "operator:backfill com.paystream.transfer.reversed,"
        "operator:backfill com.paystream.transfer.created"
    )
    assert after == [] and again == 0
    assert moved == "reversed 3" and other == 0 and final == []


@pytest.mark.asyncio
async def test_a_transfer_row_refuses_what_no_transfer_is(
    app_engine: AsyncEngine, keyring: MasterKeyring
) -> None:
    """A reversed transfer is final (TRANSFER_MOVES): a later version saying otherwise is
    refused as data (the ledger's own defence, as for payouts)."""
    make = EventFactory()
    done = transfer(make, "n19", "tr2", status="reversed", amount_reversed=3000)
    await write_events(app_engine, [done], keyring=keyring)
    back = transfer(make, "n19", "tr2", 2, status="created", amount_reversed=0)
    with pytest.raises(Exception, match="a transfer that is reversed cannot become created"):
        await write_events(app_engine, [back], keyring=keyring)
