"""Tax in the ledger's rows (migration 0015): tax rates and calculations get rows with
audit entries, as payouts do; a payment's amount_tax / tax_calculation_id, an invoice's
subtotal / tax and a subscription's tax_rate_ids are columns of their rows; another tenant
sees none; rows only move forward; `audit verify` names a tax row rewritten; and the tax
report sums what a tenant's accountant needs, per currency and per rate."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from paystream.ledger import tenant_session, verify_audit, write_events
from paystream.ledger.errors import TenantNotInLedgerError
from paystream.ledger.models import (
    AuditLog,
    Invoice,
    Payment,
    Subscription,
    TaxCalculation,
    TaxRate,
)
from paystream.ledger.sink import _sqlstate
from paystream.ledger.tax_report import tax_report
from paystream.tenancy.crypto import MasterKeyring
from tests.ledger.factories import EventFactory, tax_calculation, tax_rate, wipe_audit_chain

pytestmark = pytest.mark.asyncio
DAY = (datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 1, 2, tzinfo=UTC))


def _tenant() -> str:
    return f"tx-{uuid.uuid4().hex[:10]}"


async def test_tax_outcomes_write_rows_with_audit_entries(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    t = _tenant()
    events = [
        tax_rate(make_event, t, "vat", percentage="20.0000"),
        tax_calculation(make_event, t, "taxcalc_1", {"vat": 200}),
        make_event.payment(
            t, "pay_1", amount=1200, currency="GBP", amount_captured=1200, amount_tax=200,
            tax_calculation_id="taxcalc_1",
        ),
        make_event.payment(t, "pay_plain"),
        make_event.subscription(t, "sub_1", currency="GBP", tax_rate_ids=["vat"]),
        make_event.invoice(t, "in_1", currency="GBP", amount=1200, subtotal=1000, tax=200),
        tax_rate(make_event, t, "vat", version=2, percentage="20.0000", status="archived"),
    ]  # fmt: skip
    result = await write_events(app_engine, events, keyring=keyring)
    assert (result.events_written, result.entities_applied, result.entities_stale) == (7, 6, 0)
    async with tenant_session(app_engine, t) as s:
        rate = (await s.scalars(select(TaxRate))).one()
        calc = (await s.scalars(select(TaxCalculation))).one()
        pays = {p.payment_id: p for p in await s.scalars(select(Payment))}
        sub = (await s.scalars(select(Subscription))).one()
        inv = (await s.scalars(select(Invoice))).one()
        actions = [
            tuple(r)
            for r in await s.execute(
                select(AuditLog.entity_type, AuditLog.action)
                .where(AuditLog.entity_type.like("tax%"))
                .order_by(AuditLog.seq)
            )
        ]
    # The percentage is the exact string (not "20", not a float).
    assert (rate.status, rate.percentage, rate.inclusive, rate.version) == (
        "archived", "20.0000", False, 2
    )  # fmt: skip
    assert (calc.amount_subtotal, calc.amount_tax, calc.amount_total) == (1000, 200, 1200)
    assert calc.tax_by_rate == {"vat": 200} and calc.line_items[0]["reference"] == "sku"
    assert (pays["pay_1"].amount_tax, pays["pay_1"].tax_calculation_id) == (200, "taxcalc_1")
    assert (pays["pay_plain"].amount_tax, pays["pay_plain"].tax_calculation_id) == (None, None)
    assert sub.tax_rate_ids == ["vat"]
    assert (inv.amount, inv.subtotal, inv.tax) == (1200, 1000, 200)
    assert sorted(actions) == [
        ("tax_calculation", "com.paystream.tax.calculated"),
        ("tax_rate", "com.paystream.tax_rate.archived"),
        ("tax_rate", "com.paystream.tax_rate.created"),
    ]
    assert (await verify_audit(app_engine, t, keyring)).problems == []
    # A replay writes nothing twice.
    again = await write_events(app_engine, events, keyring=keyring)
    assert (again.events_written, again.duplicates) == (0, 7)


async def test_a_float_percentage_is_refused(make_event: EventFactory) -> None:
    from paystream.ledger.errors import InvalidEventError

    with pytest.raises(InvalidEventError, match="percentage"):
        tax_rate(make_event, _tenant(), "vat", percentage=20.0)
    with pytest.raises(InvalidEventError, match="percentage"):
        tax_rate(make_event, _tenant(), "vat", percentage="1e1")


async def test_another_tenant_sees_none_and_cannot_write_them(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    t, other = _tenant(), _tenant()
    await write_events(
        app_engine,
        [tax_rate(make_event, t, "vat"), tax_calculation(make_event, t, "taxcalc_1", {"vat": 1})],
        keyring=keyring,
    )
    async with tenant_session(app_engine, other) as s:
        assert await s.scalar(text("SELECT count(*) FROM tax_rates")) == 0
        assert await s.scalar(text("SELECT count(*) FROM tax_calculations")) == 0
        updated = await s.execute(text("UPDATE tax_rates SET status = 'active'"))
        assert updated.rowcount == 0  # type: ignore[attr-defined]
    # (Nothing of `other` is seen: the ledger holds nothing of it, said so, not an
    # empty report; review h74r.)
    with pytest.raises(TenantNotInLedgerError, match=f"no events of tenant '{other}'"):
        await tax_report(app_engine, other, *DAY)
    with pytest.raises(DBAPIError, match="row-level security"):
        async with tenant_session(app_engine, other) as s:
            await s.execute(
                text(
                    "INSERT INTO tax_rates (tenant_id, tax_rate_id, status, percentage, "
                    "inclusive, version, last_event_id, created_at, updated_at) VALUES "
                    "(:t, 'x', 'active', '5', false, 1, 'e', now(), now())"
                ),
                {"t": t},
            )


@pytest.mark.parametrize(
    "tamper",
    [
        "UPDATE tax_rates SET percentage = '2'",
        "UPDATE tax_rates SET status = 'active', version = 1",
        "UPDATE tax_calculations SET amount_tax = 1",
        "UPDATE tax_calculations SET tax_by_rate = '{\"vat\": 1}'",
        "UPDATE payments SET amount_tax = 1",
        "UPDATE invoices SET tax = 0",
        "DELETE FROM tax_rates",
        "DELETE FROM tax_calculations",
    ],
)
async def test_tax_rows_only_move_forward_and_are_never_deleted(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory, tamper: str
) -> None:
    t = _tenant()
    await write_events(
        app_engine,
        [
            tax_rate(make_event, t, "vat"),
            tax_rate(make_event, t, "vat", version=2, status="archived"),
            tax_calculation(make_event, t, "taxcalc_1", {"vat": 200}),
            make_event.payment(t, "pay_1", amount_tax=200, tax_calculation_id="taxcalc_1"),
            make_event.invoice(t, "in_1", subtotal=1000, tax=200, amount=1200),
        ],
        keyring=keyring,
    )
    with pytest.raises(DBAPIError, match=r"rows|permission denied") as refused:
        async with tenant_session(app_engine, t) as s:
            await s.execute(text(tamper))
    if not tamper.startswith("DELETE"):
        assert _sqlstate(refused.value) == "PSR01"
    assert (await verify_audit(app_engine, t, keyring)).problems == []


@pytest.mark.parametrize(
    ("table", "change", "named"),
    [
        ("tax_rates", "percentage = '2'", "1 tax_rate row(s) (vat)"),
        ("tax_calculations", "amount_tax = 1", "1 tax_calculation row(s) (taxcalc_1)"),
        ("payments", "amount_tax = 1", "1 payment row(s) (pay_1)"),
        ("invoices", "tax = 0", "1 invoice row(s) (in_1)"),
    ],
)
async def test_verify_reports_a_tax_row_rewritten(
    app_engine: AsyncEngine,
    owner_engine: AsyncEngine,
    keyring: MasterKeyring,
    make_event: EventFactory,
    table: str,
    change: str,
    named: str,
) -> None:
    """Past the trigger (the owner disabling it): the row no longer matches its entry."""
    t = _tenant()
    await write_events(
        app_engine,
        [
            tax_rate(make_event, t, "vat"),
            tax_calculation(make_event, t, "taxcalc_1", {"vat": 200}),
            make_event.payment(t, "pay_1", amount_tax=200, tax_calculation_id="taxcalc_1"),
            make_event.invoice(t, "in_1", subtotal=1000, tax=200, amount=1200),
        ],
        keyring=keyring,
    )
    assert (await verify_audit(app_engine, t, keyring)).problems == []
    async with owner_engine.begin() as conn:
        await conn.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER {table}_forward_only"))
        await conn.execute(text(f"UPDATE {table} SET {change} WHERE tenant_id = :t"), {"t": t})
        await conn.execute(text(f"ALTER TABLE {table} ENABLE TRIGGER {table}_forward_only"))
    problems = (await verify_audit(app_engine, t, keyring)).problems
    assert any(p.startswith(f"{named} not as their last audit") for p in problems), problems


async def test_a_tenant_whose_only_events_are_tax_has_a_chain_to_lose(
    app_engine: AsyncEngine,
    owner_engine: AsyncEngine,
    keyring: MasterKeyring,
    make_event: EventFactory,
) -> None:
    """h74j skipped types without a table in the wiped-chain check; tax has tables now,
    and a tenant whose only entries were its tax rates' has a chain to lose."""
    t = _tenant()
    await write_events(app_engine, [tax_rate(make_event, t, "vat")], keyring=keyring)
    assert (await verify_audit(app_engine, t, keyring)).checked == 1
    async with owner_engine.begin() as conn:
        await wipe_audit_chain(conn, t)
    problems = (await verify_audit(app_engine, t, keyring)).problems
    assert "events are recorded for this tenant but its audit chain is empty" in problems


async def test_the_tax_report_sums_per_currency_and_rate(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    t, other = _tenant(), _tenant()
    later = datetime(2025, 3, 1, tzinfo=UTC)
    events = [
        tax_rate(make_event, t, "vat"),
        tax_rate(make_event, t, "city", display_name="City", percentage="5", country="GB"),
        tax_calculation(make_event, t, "taxcalc_1", {"vat": 200, "city": 50}),
        # Half refunded: half its tax was collected (rounded half up once, split over the rates).
        make_event.payment(
            t, "pay_1", amount=1250, currency="GBP", amount_captured=1250,
            amount_refunded=625, amount_tax=250, tax_calculation_id="taxcalc_1",
        ),
        # Its calculation unknown to the ledger: its tax under no rate.
        make_event.payment(
            t, "pay_2", amount=1100, currency="EUR", amount_captured=1100, amount_tax=100,
            tax_calculation_id="taxcalc_gone",
        ),
        make_event.payment(t, "pay_untaxed", currency="GBP"),
        # Not captured: nothing collected.
        make_event.payment(
            t, "pay_failed", amount=1200, currency="GBP", status="failed", amount_captured=0,
            amount_tax=200, tax_calculation_id="taxcalc_1",
        ),
        dataclasses.replace(
            make_event.payment(
                t, "pay_later", amount=1200, currency="GBP", amount_captured=1200,
                amount_tax=200, tax_calculation_id="taxcalc_1",
            ),
            time=later,
        ),
        make_event.subscription(t, "sub_1", currency="GBP", tax_rate_ids=["vat", "city"]),
        make_event.invoice(t, "in_1", currency="GBP", amount=1250, subtotal=1000, tax=250),
        make_event.invoice(
            t, "in_2", currency="GBP", amount=1250, subtotal=1000, tax=250, status="open"
        ),
        make_event.payment(
            other, "pay_o", amount=1200, currency="GBP", amount_captured=1200, amount_tax=200
        ),
    ]  # fmt: skip
    await write_events(app_engine, events, keyring=keyring)
    report = await tax_report(app_engine, t, *DAY)
    assert report["currencies"] == {
        "EUR": {
            "payments": 100, "invoices": 0, "total": 100,
            "by_rate": [
                {"tax_rate_id": None, "display_name": None, "percentage": None,
                 "inclusive": None, "country": None, "payments": 100, "invoices": 0,
                 "total": 100},
            ],
        },
        "GBP": {
            "payments": 125, "invoices": 250, "total": 375,
            "by_rate": [
                {"tax_rate_id": "city", "display_name": "City", "percentage": "5",
                 "inclusive": False, "country": "GB", "payments": 25, "invoices": 50,
                 "total": 75},
                {"tax_rate_id": "vat", "display_name": "VAT", "percentage": "20",
                 "inclusive": False, "country": "GB", "payments": 100, "invoices": 200,
                 "total": 300},
            ],
        },
    }  # fmt: skip
    # The later payment falls in its own period.
    march = await tax_report(app_engine, t, later, datetime(2025, 4, 1, tzinfo=UTC))
    assert march["currencies"]["GBP"]["total"] == 200


async def test_a_partial_captures_tax_is_reported_once_and_a_kwd_invoice_by_rate(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    """Review h74h: the worker records a partially captured payment's ``amount_tax`` as
    its share of the capture (600 of 1200 with 200 of tax: 100), so the report counts
    100, not 100's share again (50), and per rate its calculation's split; refunds of
    it are reversed over the captured amount. A KWD invoice's tax, rounded to tens by
    its currency's increment, is split over its rates in that currency."""
    t = _tenant()
    events = [
        tax_rate(make_event, t, "vat"),
        tax_rate(make_event, t, "city", display_name="City", percentage="5", country="GB"),
        tax_rate(make_event, t, "kw", display_name="KW", percentage="7.5", country="KW"),
        tax_calculation(make_event, t, "taxcalc_1", {"vat": 160, "city": 40}),
        make_event.payment(
            t, "pay_half", amount=1200, currency="GBP", amount_captured=600,
            amount_tax=100, tax_calculation_id="taxcalc_1",
        ),
        # Captured in part, then half of that refunded: 100 x 300 / 600 = 50.
        make_event.payment(
            t, "pay_refunded", amount=1200, currency="EUR", amount_captured=600,
            amount_refunded=300, amount_tax=100, tax_calculation_id="taxcalc_gone",
        ),
        make_event.subscription(t, "sub_kw", currency="KWD", tax_rate_ids=["kw"]),
        make_event.invoice(
            t, "in_kw", subscription_id="sub_kw", currency="KWD", amount=2140,
            subtotal=1990, tax=150,
        ),
    ]  # fmt: skip
    await write_events(app_engine, events, keyring=keyring)
    report = (await tax_report(app_engine, t, *DAY))["currencies"]
    assert report["GBP"]["payments"] == 100, report
    assert {r["tax_rate_id"]: r["payments"] for r in report["GBP"]["by_rate"]} == {
        "vat": 80,
        "city": 20,
    }
    assert report["EUR"]["payments"] == 50, report
    assert [(r["tax_rate_id"], r["invoices"]) for r in report["KWD"]["by_rate"]] == [("kw", 150)]
