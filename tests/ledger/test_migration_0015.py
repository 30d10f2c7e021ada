"""Migration 0015 on a ledger holding data: the rows the version before it wrote (a taxed
payment and a taxed invoice, their tax in their events only, audited without it) take
their new columns from the event their last_event_id names, and still verify; the tax
rate and calculation events it stored (events rows only) are listed for `paystream
ledger backfill`, which builds their rows with audit entries; the tax report then sums
them; the downgrade refuses while any of it holds data."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Column, MetaData, Table, text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import NullPool

from paystream.ledger import create_engine, tenant_session, verify_audit, write_events, writer
from paystream.ledger import events as ledger_events
from paystream.ledger.audit import lock_tenant
from paystream.ledger.cli import ledger_group
from paystream.ledger.events import EntityType
from paystream.ledger.migrate import app_database_url, current, downgrade, head, upgrade
from paystream.ledger.models import Invoice, Payment, Subscription
from paystream.tenancy.crypto import MasterKey, MasterKeyring
from tests.ledger.factories import EventFactory, insert_event_rows, tax_calculation, tax_rate
from tests.ledger.test_refund_transfer_options_ledger import as_before_0018

PASSWORD = "m15-pw"
NEW = {
    EntityType.PAYMENT: ("amount_tax", "tax_calculation_id"),
    EntityType.INVOICE: ("subtotal", "tax"),
    EntityType.SUBSCRIPTION: ("tax_rate_ids",),
}
# Columns a later revision added (0017: a destination charge's), unknown to 0014's writer.
LATER = {EntityType.PAYMENT: ("connected_account_id", "application_fee_amount")}


def _app(url: str) -> AsyncEngine:
    return create_engine(app_database_url(url, PASSWORD), poolclass=NullPool)


def _as_of_0014(monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer of the version before 0015: payments' and invoices' rows without the
    new columns (its events carried the tax in their data all the same), no tax tables
    (nor 0016's connected accounts, nor 0017's payment columns, nor 0019's transfers)."""
    for entity_type in (
        EntityType.TAX_RATE,
        EntityType.TAX_CALCULATION,
        EntityType.CONNECTED_ACCOUNT,
        EntityType.TRANSFER,
    ):
        monkeypatch.delitem(writer.ENTITY_TABLES, entity_type)
    for entity_type, model in (
        (EntityType.PAYMENT, Payment),
        (EntityType.INVOICE, Invoice),
        (EntityType.SUBSCRIPTION, Subscription),
    ):
        fields = {
            k: v
            for k, v in ledger_events._FIELDS[entity_type].items()
            if k not in NEW[entity_type] + LATER.get(entity_type, ())
        }
        monkeypatch.setitem(ledger_events._FIELDS, entity_type, fields)
        table = model.__table__
        old = Table(
            table.name,  # type: ignore[attr-defined]
            MetaData(),
            *(
                Column(c.name, c.type, primary_key=c.primary_key)
                for c in table.columns  # type: ignore[attr-defined]
                if c.name not in NEW[entity_type] + LATER.get(entity_type, ())
            ),
        )
        monkeypatch.setitem(
            writer.ENTITY_TABLES,
            entity_type,
            (
                type(f"Old{model.__name__}", (), {"__table__": old}),
                writer.ENTITY_TABLES[entity_type][1],
            ),
        )


async def _events_only(owner: AsyncEngine, tenant: str, events: list[Any]) -> None:
    """What the version before 0015 stored of tax rates and calculations: events rows."""
    async with tenant_session(owner, tenant) as s:
        await lock_tenant(s, tenant)
        await insert_event_rows(s, events)


async def _tax_columns(s: Any) -> tuple[list[tuple[Any, ...]], tuple[Any, ...], Any]:
    """The tax columns 0015 added, as the tenant's session ``s`` reads them: each
    payment's (with its id and version), the one invoice's, the one subscription's."""
    pays = [
        tuple(r)
        for r in await s.execute(
            text(
                "SELECT payment_id, amount_tax, tax_calculation_id, version "
                "FROM payments ORDER BY 1"
            )
        )
    ]
    inv = tuple((await s.execute(text("SELECT subtotal, tax FROM invoices"))).one())
    sub = (await s.execute(text("SELECT tax_rate_ids FROM subscriptions"))).scalar()
    return pays, inv, sub


def test_0015_fills_the_columns_lists_tax_events_and_the_backfill_builds_them(
    module_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = module_database_url
    key = MasterKey.generate()
    keyring = MasterKeyring(key)
    make = EventFactory()
    t = "m15"

    async def before() -> None:
        await downgrade(url, "base")
        await upgrade(url, "0014", app_password=PASSWORD)
        app = _app(url)
        owner = create_engine(url, poolclass=NullPool)
        try:
            with monkeypatch.context() as m:
                _as_of_0014(m)
                as_before_0018(m)  # (verify_audit reads refunds too)
                pay = make.payment(
                    t, "pay_1", amount=1200, currency="GBP", amount_captured=1200,
                    amount_tax=200, tax_calculation_id="taxcalc_1",
                )  # fmt: skip
                plain = make.payment(t, "pay_2", currency="GBP")
                inv = make.invoice(t, "in_1", currency="GBP", amount=1200, subtotal=1000, tax=200)
                sub = make.subscription(t, "sub_1", currency="GBP", tax_rate_ids=["vat"])
                await write_events(app, [pay, plain, inv, sub], keyring=keyring)
                assert (await verify_audit(app, t, keyring)).problems == []
            await _events_only(
                owner,
                t,
                [tax_rate(make, t, "vat"), tax_calculation(make, t, "taxcalc_1", {"vat": 200})],
            )
        finally:
            await app.dispose()
            await owner.dispose()
        await upgrade(url, app_password=PASSWORD)
        assert await current(url) == head() == "0019"

    asyncio.run(before())

    async def filled() -> tuple[object, ...]:
        app = _app(url)
        try:
            async with tenant_session(app, t) as s:
                pays, inv, sub = await _tax_columns(s)
                listed = (await s.execute(text("SELECT count(*) FROM entity_backfill"))).scalar()
            return pays, inv, sub, listed, (await verify_audit(app, t, keyring)).problems
        finally:
            await app.dispose()

    pays, inv, sub, listed, problems = asyncio.run(filled())
    assert pays == [("pay_1", 200, "taxcalc_1", 1), ("pay_2", None, None, 1)]
    assert (inv, sub, listed) == ((1000, 200), ["vat"], 2)
    # Only the tax events waiting for the backfill (the filled rows verify).
    assert sorted(p.split(" (")[0] for p in problems) == [
        "1 tax_calculation event(s)",
        "1 tax_rate event(s)",
    ], problems
    assert all("stored before migration 0015 gave them a table" in p for p in problems)

    env = {
        "DATABASE_URL": url,
        "PAYSTREAM_DB_APP_PASSWORD": PASSWORD,
        "PAYSTREAM_MASTER_KEY": base64.b64encode(key.key).decode(),
    }
    ran = CliRunner().invoke(ledger_group, ["backfill", "--tenant", t], env=env)
    assert ran.exit_code == 0, ran.output
    assert ran.output == f"{t}: 2 event(s) read, 2 row(s) moved forward, 0 already there\n"
    report = CliRunner().invoke(
        ledger_group,
        ["tax-report", "--tenant", t, "--from", "2025-01-01", "--to", "2025-02-01"],
        env=env,
    )
    assert report.exit_code == 0, report.output
    gbp = json.loads(report.output)["currencies"]["GBP"]
    assert (gbp["payments"], gbp["invoices"], gbp["total"]) == (200, 200, 400)
    assert [(r["tax_rate_id"], r["percentage"], r["total"]) for r in gbp["by_rate"]] == [
        ("vat", "20", 400)
    ]

    async def after_then_down() -> tuple[list[str], str | None, str | None]:
        app = _app(url)
        try:
            problems = (await verify_audit(app, t, keyring)).problems
        finally:
            await app.dispose()
        refusal = None
        try:
            await downgrade(url, "0014")
        except RuntimeError as exc:
            refusal = str(exc)
        return problems, refusal, await current(url)

    problems, refusal, at = asyncio.run(after_then_down())
    assert problems == []
    assert refusal is not None and refusal.startswith("migration 0015 down: tax_rates, ")
    assert at == "0019"  # (the whole downgrade rolled back: at head)


def test_0015_down_without_tax_data_and_up_again(module_database_url: str) -> None:
    """No tax row or column value yet: down to 0014 is allowed and unlists the tax events
    it listed; up again lists them once more."""
    url = module_database_url
    make = EventFactory()
    t = "d15"

    async def go() -> tuple[object, object, object, object]:
        await downgrade(url, "base")
        await upgrade(url, "0014", app_password=PASSWORD)
        owner = create_engine(url, poolclass=NullPool)
        try:
            async with tenant_session(owner, t) as s:
                await s.execute(text("INSERT INTO tenants (tenant_id) VALUES (:t)"), {"t": t})
            await _events_only(owner, t, [tax_rate(make, t, "vat")])
        finally:
            await owner.dispose()
        counts = []
        for step in ("up", "down", "up"):
            if step == "up":
                await upgrade(url, app_password=PASSWORD)
            else:
                await downgrade(url, "0014")
            app = _app(url)
            try:
                counts.append(await _count(app, t))
            finally:
                await app.dispose()
        return counts[0], counts[1], counts[2], await current(url)

    assert asyncio.run(go()) == (1, 0, 1, "0019")


async def _count(app: AsyncEngine, tenant: str) -> object:
    async with tenant_session(app, tenant) as s:
        return (await s.execute(text("SELECT count(*) FROM entity_backfill"))).scalar()
