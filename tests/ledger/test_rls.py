"""Row-level security: one tenant can never read, change or create another tenant's rows."""

from __future__ import annotations

from datetime import timedelta

import pytest
import pytest_asyncio
from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DBAPIError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncEngine

from paystream.ledger import (
    LedgerError,
    RlsNotEnforcedError,
    assert_rls_enforced,
    create_engine,
    tenant_session,
    write_events,
)
from paystream.ledger.models import TENANT_TABLES, Payment
from paystream.tenancy.crypto import MasterKeyring
from tests.ledger.factories import (
    EventFactory,
    LedgerDb,
    connected_account,
    tax_calculation,
    tax_rate,
    transfer,
)

# Every test here writes under the session keyring: the record of master keys seen (0012),
# written by the module's fixture, is kept (tests/ledger/conftest.py).
MASTER_KEYS_SEEN_KEPT = True

RLS_VIOLATION = "row-level security"


@pytest_asyncio.fixture(scope="module", autouse=True)
async def two_tenants(
    app_engine: AsyncEngine, owner_engine: AsyncEngine, keyring: MasterKeyring
) -> None:
    """Tenants a and b each with a customer, a payment method, payments, a refund, a
    dispute, a subscription, an invoice, a payout, a tax rate, a tax calculation, a
    connected account and a transfer."""
    make = EventFactory()
    events = []
    for t in ("a", "b"):
        events += [
            make.customer(t, "cus_1"),
            make(t, "payment_method", "pm_1", 1, {"brand": "visa", "last4": "4242"}),
            make.payment(t, f"pay_{t}1"),
            make.payment(t, f"pay_{t}2", amount=500),
            make(t, "refund", "re_1", 1, {"amount": 100, "currency": "USD", "status": "ok"}),
            make(t, "dispute", "dp_1", 1, {"amount": 100, "currency": "USD", "status": "open"}),
            make.subscription(t, "sub_1"),
            make.invoice(t, "in_1"),
            make.payout(t, "po_1"),
            tax_rate(make, t, "vat"),
            tax_calculation(make, t, "taxcalc_1", {"vat": 200}),
            connected_account(make, t, "ca_1"),
            transfer(make, t, "tr_1"),
        ]
    await write_events(app_engine, events, keyring=keyring)
    # The audit records only the owner writes (a migration, `keys rotate`): one each.
    async with owner_engine.begin() as conn:
        for t in ("a", "b"):
            await conn.execute(
                text(
                    "INSERT INTO audit_legacy (tenant_id, from_seq, seq, hash) "
                    "VALUES (:t, 1, 0, :h)"
                ),
                {"t": t, "h": bytes(32)},
            )
            await conn.execute(
                text(
                    "INSERT INTO audit_key_retirements (tenant_id, key_id, through_seq) "
                    "VALUES (:t, 'mk-old', 0)"
                ),
                {"t": t},
            )
            # (0013 lists events stored before their tables existed.)
            await conn.execute(
                text("INSERT INTO entity_backfill (tenant_id, event_id) VALUES (:t, 'e-old')"),
                {"t": t},
            )


async def test_each_tenant_sees_only_its_rows_in_every_table(app_engine: AsyncEngine) -> None:
    for tenant in ("a", "b"):
        async with tenant_session(app_engine, tenant) as s:
            for table in TENANT_TABLES:
                rows = await s.execute(text(f"SELECT DISTINCT tenant_id FROM {table}"))
                assert [r[0] for r in rows] == [tenant], table


async def test_crafted_ids_and_tenant_filters_read_nothing(app_engine: AsyncEngine) -> None:
    async with tenant_session(app_engine, "a") as s:
        assert (await s.scalars(select(Payment).where(Payment.payment_id == "pay_b1"))).all() == []
        other = select(func.count()).select_from(Payment).where(Payment.tenant_id == "b")
        assert await s.scalar(other) == 0
        # a predicate that is always true still only reaches this tenant's rows
        everything = text("SELECT DISTINCT tenant_id FROM payments WHERE tenant_id = 'b' OR true")
        assert (await s.scalars(everything)).all() == ["a"]


async def test_cannot_update_or_delete_another_tenants_rows(app_engine: AsyncEngine) -> None:
    async with tenant_session(app_engine, "a") as s:
        upd = await s.execute(
            update(Payment).where(Payment.payment_id == "pay_b1").values(amount=1)
        )
        assert upd.rowcount == 0
        upd = await s.execute(update(Payment).where(Payment.tenant_id == "b").values(amount=1))
        assert upd.rowcount == 0
    # Deletes are not granted at all (no code path deletes a money row).
    with pytest.raises(DBAPIError, match="permission denied"):
        async with tenant_session(app_engine, "a") as s:
            await s.execute(delete(Payment).where(Payment.payment_id.in_(["pay_b1", "pay_b2"])))
    async with tenant_session(app_engine, "b") as s:
        amounts = await s.scalars(select(Payment.amount).order_by(Payment.payment_id))
        assert amounts.all() == [1000, 500]


async def test_cannot_move_a_row_into_another_tenant(app_engine: AsyncEngine) -> None:
    # Refused twice over: entity rows keep their keys (0006; SQLSTATE PSR01 since 0007,
    # which SQLAlchemy reports as a plain DBAPIError), and the tenant policy.
    with pytest.raises(DBAPIError, match=f"{RLS_VIOLATION}|rows keep their keys"):
        async with tenant_session(app_engine, "a") as s:
            await s.execute(
                update(Payment).where(Payment.payment_id == "pay_a1").values(tenant_id="b")
            )


async def test_cannot_insert_or_upsert_into_another_tenant(app_engine: AsyncEngine) -> None:
    row = {
        "tenant_id": "b",
        "payment_id": "pay_b1",
        "amount": 1,
        "currency": "USD",
        "status": "hijacked",
        "version": 99,
        "last_event_id": "x",
        "created_at": func.now(),
        "updated_at": func.now(),
    }
    with pytest.raises(ProgrammingError, match=RLS_VIOLATION):
        async with tenant_session(app_engine, "a") as s:
            await s.execute(insert(Payment).values(**{**row, "payment_id": "pay_new"}))
    with pytest.raises(ProgrammingError, match=RLS_VIOLATION):
        async with tenant_session(app_engine, "a") as s:
            stmt = pg_insert(Payment).values(**row)
            await s.execute(
                stmt.on_conflict_do_update(
                    index_elements=["tenant_id", "payment_id"], set_={"status": "hijacked"}
                )
            )
    async with tenant_session(app_engine, "b") as s:
        assert await s.scalar(select(Payment.status).where(Payment.payment_id == "pay_b1")) == (
            "succeeded"
        )


async def test_same_id_in_two_tenants_are_different_rows(app_engine: AsyncEngine) -> None:
    async with tenant_session(app_engine, "a") as s:
        await s.execute(
            insert(Payment).values(
                tenant_id="a",
                payment_id="pay_b2",
                amount=7,
                currency="EUR",
                status="pending",
                version=1,
                last_event_id="e",
                created_at=func.now(),
                updated_at=func.now(),
            )
        )
    async with tenant_session(app_engine, "b") as s:
        assert await s.scalar(select(Payment.amount).where(Payment.payment_id == "pay_b2")) == 500


async def test_no_tenant_set_reads_nothing_and_writes_nothing(app_engine: AsyncEngine) -> None:
    async with app_engine.connect() as conn:
        for table in TENANT_TABLES:
            assert await conn.scalar(text(f"SELECT count(*) FROM {table}")) == 0, table
        with pytest.raises(DBAPIError, match=RLS_VIOLATION):
            await conn.execute(text("INSERT INTO tenants (tenant_id) VALUES ('c')"))


async def test_pooled_connection_does_not_leak_the_tenant(ledger_db: LedgerDb) -> None:
    engine = create_engine(ledger_db.app_url, pool_size=1, max_overflow=0)
    try:
        pids = set()
        for tenant in ("a", "b", "a", "b"):
            async with tenant_session(engine, tenant) as s:
                pids.add(await s.scalar(text("SELECT pg_backend_pid()")))
                ids = (await s.scalars(select(Payment.tenant_id).distinct())).all()
                assert ids == [tenant]
            async with engine.connect() as conn:
                pids.add(await conn.scalar(text("SELECT pg_backend_pid()")))
                setting = await conn.scalar(
                    text("SELECT current_setting('app.current_tenant_id', true)")
                )
                assert setting in (None, "")
                assert await conn.scalar(text("SELECT count(*) FROM payments")) == 0
        assert len(pids) == 1  # really the same pooled connection every time
    finally:
        await engine.dispose()


async def test_failed_session_rolls_back_and_leaves_no_tenant(ledger_db: LedgerDb) -> None:
    engine = create_engine(ledger_db.app_url, pool_size=1, max_overflow=0)
    try:
        async with tenant_session(engine, "a") as s:
            before = (await s.scalars(select(Payment.created_at))).all()
        with pytest.raises(RuntimeError):
            async with tenant_session(engine, "a") as s:
                # (Moving created_at back: what the entity rows' trigger lets through at
                # the same version.)
                earlier = Payment.created_at - timedelta(days=1)
                assert (await s.execute(update(Payment).values(created_at=earlier))).rowcount
                raise RuntimeError("boom")
        async with engine.connect() as conn:
            assert await conn.scalar(text("SELECT count(*) FROM payments")) == 0
        async with tenant_session(engine, "a") as s:
            assert (await s.scalars(select(Payment.created_at))).all() == before
    finally:
        await engine.dispose()


@pytest.mark.parametrize("bad", ["", "A", "a' OR '1'='1", "a;drop", "x" * 65])
async def test_tenant_session_rejects_malformed_ids(app_engine: AsyncEngine, bad: str) -> None:
    with pytest.raises(LedgerError):
        async with tenant_session(app_engine, bad):
            pass


async def test_rls_guard_accepts_app_role_and_refuses_owner(
    app_engine: AsyncEngine, owner_engine: AsyncEngine
) -> None:
    await assert_rls_enforced(app_engine)
    with pytest.raises(RlsNotEnforcedError):
        await assert_rls_enforced(owner_engine)
