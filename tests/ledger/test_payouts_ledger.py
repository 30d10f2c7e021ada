"""Payouts in the ledger (migration 0014): their outcomes write `payouts` rows with audit
entries, as payments' and subscriptions' do; a replay writes nothing twice; another
tenant sees none; rows only move forward and are never deleted; `audit verify` covers
them and names a row rewritten without an entry; a payout is the tenant's, so no
customer's export lists it and no erasure changes it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from cloudevents.core.v1.event import CloudEvent
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from paystream.ledger import export_customer, tenant_session, verify_audit, write_events
from paystream.ledger.models import AuditLog, Event, Payout
from paystream.ledger.privacy import erase_customer
from paystream.ledger.sink import FailureKind, _sqlstate, classify_failure, outcome_to_ledger_events
from paystream.streams.outcomes import build_outcome, command_ref
from paystream.tenancy.crypto import MasterKeyring
from tests.ledger.factories import EventFactory, wipe_audit_chain


def _tenant() -> str:
    return f"po-{uuid.uuid4().hex[:10]}"


def _payout(tenant: str, version: int, status: str, **changes: Any) -> dict[str, Any]:
    """A payout as the worker publishes it (PayoutRecord.snapshot)."""
    return {
        "tenant_id": tenant, "id": "po1", "version": version, "provider": "simulator",
        "created_by": "cmd-1", "status": status, "amount": 3000, "currency": "EUR",
        "method": "standard", "provider_payout_id": "po_x",
        "arrival_date": "2025-01-03T00:00:00Z", "failure_code": None,
        "failure_message": None, "description": "June", "statement_descriptor": "ACME",
        "metadata": {"batch": "june"},
        **changes,
    }  # fmt: skip


def _outcome(tenant: str, outcome_type: str, po: dict[str, Any], **extra: Any) -> CloudEvent:
    version = po["version"]
    cmd = command_ref(
        tenant_id=tenant,
        command_id=f"cmd-{version}",
        command_type="payout.create" if version == 1 else "payout.refresh",
        idempotency_key=f"cmd-{version}",
        time=datetime(2025, 1, 1, version, tzinfo=UTC),
        traceparent=None,
        tracestate=None,
        source=None,
        id_salt=None,
    )
    data = {
        "tenant_id": tenant, "command_id": cmd.command_id, "entity_type": "payout",
        "entity_id": po["id"], "version": version, "object": po, **extra,
    }  # fmt: skip
    return build_outcome(cmd, outcome_type, data)


async def _rows(engine: AsyncEngine, tenant: str) -> list[Payout]:
    async with tenant_session(engine, tenant) as s:
        return list((await s.scalars(select(Payout).order_by(Payout.payout_id))).all())


async def _audit(engine: AsyncEngine, tenant: str) -> list[tuple[str, str, str]]:
    async with tenant_session(engine, tenant) as s:
        rows = await s.execute(
            select(AuditLog.entity_type, AuditLog.entity_id, AuditLog.action).order_by(AuditLog.seq)
        )
        return [tuple(r) for r in rows]  # type: ignore[misc]


async def test_outcomes_write_rows_once_and_move_them_forward(
    app_engine: AsyncEngine, keyring: MasterKeyring
) -> None:
    """payout.created writes the row (every column the payout record carries); a replay
    writes no row, no event and no audit entry; payout.paid and a later payout.failed
    (a bank returning it) move it on, each with its audit entry; the chain verifies."""
    t = _tenant()
    created = outcome_to_ledger_events(_outcome(t, "payout.created", _payout(t, 1, "pending")))
    result = await write_events(app_engine, created, keyring=keyring)
    assert (result.events_written, result.entities_applied, result.entities_stale) == (1, 1, 0)
    [row] = await _rows(app_engine, t)
    assert (row.payout_id, row.version, row.status, row.amount, row.currency, row.method) == (
        "po1", 1, "pending", 3000, "EUR", "standard",
    )  # fmt: skip
    assert row.arrival_date == datetime(2025, 1, 3, tzinfo=UTC)
    assert (row.provider, row.provider_payout_id, row.created_by) == ("simulator", "po_x", "cmd-1")
    assert (row.description, row.statement_descriptor, row.metadata_) == (
        "June", "ACME", {"batch": "june"},
    )  # fmt: skip
    assert (row.failure_code, row.failure_message) == (None, None)
    assert await _audit(app_engine, t) == [("payout", "po1", "com.paystream.payout.created")]

    again = await write_events(app_engine, created, keyring=keyring)
    assert (again.events_written, again.duplicates, again.entities_applied) == (0, 1, 0)
    assert len(await _audit(app_engine, t)) == 1

    paid = _payout(t, 2, "paid")
    await write_events(
        app_engine,
        outcome_to_ledger_events(_outcome(t, "payout.paid", paid, previous_status="pending")),
        keyring=keyring,
    )
    failed = _payout(
        t, 3, "failed", failure_code="account_closed",
        failure_message="The bank account has been closed.",
    )  # fmt: skip
    error = {"code": "account_closed", "decline_code": "account_closed", "message": "closed"}
    made = outcome_to_ledger_events(
        _outcome(t, "payout.failed", failed, previous_status="paid", error=error)
    )
    # A replay of both at once (a redelivered batch) adds nothing either.
    replayed = await write_events(app_engine, [*made, *made], keyring=keyring)
    assert (replayed.events_written, replayed.entities_applied) == (1, 1)
    assert (await write_events(app_engine, made, keyring=keyring)).events_written == 0
    [row] = await _rows(app_engine, t)
    assert (row.version, row.status, row.failure_code, row.failure_message) == (
        3, "failed", "account_closed", "The bank account has been closed.",
    )  # fmt: skip
    assert row.created_at == datetime(2025, 1, 1, 1, tzinfo=UTC)  # (its first event's)
    assert await _audit(app_engine, t) == [
        ("payout", "po1", "com.paystream.payout.created"),
        ("payout", "po1", "com.paystream.payout.paid"),
        ("payout", "po1", "com.paystream.payout.failed"),
    ]
    async with tenant_session(app_engine, t) as s:
        stored = (await s.scalars(select(Event.entity_version).order_by(Event.time))).all()
    assert list(stored) == [1, 2, 3]
    res = await verify_audit(app_engine, t, keyring)
    assert res.problems == [] and res.checked == 3


async def test_a_payout_without_metadata_stores_an_empty_object(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    t = _tenant()
    await write_events(
        app_engine,
        [make_event.payout(t, "po_1", metadata=None, description=None, arrival_date=None)],
        keyring=keyring,
    )
    [row] = await _rows(app_engine, t)
    assert (row.metadata_, row.description, row.arrival_date) == ({}, None, None)
    assert (await verify_audit(app_engine, t, keyring)).problems == []


async def test_another_tenant_sees_none_and_cannot_write_them(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    t, other = _tenant(), _tenant()
    await write_events(app_engine, [make_event.payout(t, "po_1")], keyring=keyring)
    await write_events(app_engine, [make_event.payout(other, "po_2")], keyring=keyring)
    assert [p.payout_id for p in await _rows(app_engine, other)] == ["po_2"]
    async with tenant_session(app_engine, other) as s:
        updated = await s.execute(
            text("UPDATE payouts SET status = 'canceled' WHERE payout_id = 'po_1'")
        )
        assert updated.rowcount == 0  # type: ignore[attr-defined]
        assert await s.scalar(text("SELECT count(*) FROM payouts WHERE payout_id = 'po_1'")) == 0
    with pytest.raises(DBAPIError, match="row-level security"):
        async with tenant_session(app_engine, other) as s:
            await s.execute(
                text(
                    "INSERT INTO payouts (tenant_id, payout_id, amount, currency, status, "
                    "version, last_event_id, created_at, updated_at) VALUES "
                    "(:t, 'x', 1, 'EUR', 'paid', 1, 'e', now(), now())"
                ),
                {"t": t},
            )
    assert [(p.payout_id, p.status) for p in await _rows(app_engine, t)] == [("po_1", "pending")]


@pytest.mark.parametrize(
    "tamper",
    [
        "amount = 1, version = 1",  # rewound
        "amount = 1",  # rewritten at its version
        "status = 'paid'",  # a failed payout made paid at its version
        "payout_id = 'po_2'",  # another key
        "status = 'paid', version = version + 1",  # by no event
    ],
)
async def test_rows_only_move_forward_and_are_never_deleted(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory, tamper: str
) -> None:
    t = _tenant()
    await write_events(
        app_engine,
        [
            make_event.payout(t, "po_1", version=1),
            make_event.payout(t, "po_1", version=2, status="failed", failure_code="no_account"),
        ],
        keyring=keyring,
    )
    with pytest.raises(DBAPIError, match="payouts rows") as refused:
        async with tenant_session(app_engine, t) as s:
            await s.execute(text(f"UPDATE payouts SET {tamper}"))
    assert _sqlstate(refused.value) == "PSR01"
    assert classify_failure(refused.value) == FailureKind.DATA
    with pytest.raises(DBAPIError, match="permission denied"):
        async with tenant_session(app_engine, t) as s:
            await s.execute(text("DELETE FROM payouts"))
    assert [(p.version, p.status, p.amount) for p in await _rows(app_engine, t)] == [
        (2, "failed", 3000)
    ]
    assert (await verify_audit(app_engine, t, keyring)).problems == []


async def test_verify_reports_a_payout_rewritten_without_an_audit_entry(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    """The app role's one way past the trigger (an events row of its own, the version
    ahead) sends the payout elsewhere for more: `audit verify` names the row."""
    t = _tenant()
    await write_events(app_engine, [make_event.payout(t, "po_1")], keyring=keyring)
    assert (await verify_audit(app_engine, t, keyring)).problems == []
    async with tenant_session(app_engine, t) as s:
        await s.execute(
            text(
                "INSERT INTO events (tenant_id, event_id, type, entity_type, entity_id, "
                "entity_version, time, data) VALUES (:t, 'forged', 'x', 'payout', "
                "'po_1', 2, now(), '{}')"
            ),
            {"t": t},
        )
        await s.execute(
            text(
                "UPDATE payouts SET amount = 999999, provider_payout_id = 'po_evil', "
                "version = 2, last_event_id = 'forged' WHERE payout_id = 'po_1'"
            )
        )
    problems = (await verify_audit(app_engine, t, keyring)).problems
    assert any(p.startswith("1 payout row(s) (po_1) not as their last audit") for p in problems), (
        problems
    )


async def test_verify_reports_a_payout_row_the_owner_rewrote(
    app_engine: AsyncEngine,
    owner_engine: AsyncEngine,
    keyring: MasterKeyring,
    make_event: EventFactory,
) -> None:
    """Past the trigger (the owner disabling it): the row no longer matches its entry."""
    t = _tenant()
    await write_events(app_engine, [make_event.payout(t, "po_1")], keyring=keyring)
    async with owner_engine.begin() as conn:
        await conn.execute(text("ALTER TABLE payouts DISABLE TRIGGER payouts_forward_only"))
        await conn.execute(
            text('UPDATE payouts SET metadata = \'{"batch": "july"}\' WHERE tenant_id = :t'),
            {"t": t},
        )
        await conn.execute(text("ALTER TABLE payouts ENABLE TRIGGER payouts_forward_only"))
    problems = (await verify_audit(app_engine, t, keyring)).problems
    assert any(p.startswith("1 payout row(s) (po_1) not as their last audit") for p in problems)


async def test_verify_reports_a_payout_event_never_applied(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    t = _tenant()
    await write_events(app_engine, [make_event.payout(t, "po_1")], keyring=keyring)
    async with tenant_session(app_engine, t) as s:
        await s.execute(
            text(
                "INSERT INTO events (tenant_id, event_id, type, entity_type, entity_id, "
                "entity_version, time, data) VALUES (:t, 'planted', 'x', 'payout', "
                "'po_9', 1, now(), '{}')"
            ),
            {"t": t},
        )
    problems = (await verify_audit(app_engine, t, keyring)).problems
    assert any(
        "1 stored payout event(s) (planted) ahead of their entity row" in p for p in problems
    ), problems


async def test_a_tenant_whose_only_events_are_payouts_verifies(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    """Its chain holds the payouts' entries (h74a: it had none, and verify had to skip them)."""
    t = _tenant()
    await write_events(app_engine, [make_event.payout(t, "po_1")], keyring=keyring)
    res = await verify_audit(app_engine, t, keyring)
    assert (res.problems, res.checked) == ([], 1)


async def test_no_customer_export_lists_them_and_an_erasure_leaves_them(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    """A payout is the tenant's money to the tenant's bank: it names no customer."""
    t = _tenant()
    await write_events(
        app_engine,
        [make_event.customer(t, "cus_1"), make_event.payment(t, "pay_1"),
         make_event.payout(t, "po_1")],
        keyring=keyring,
    )  # fmt: skip
    exported = await export_customer(app_engine, keyring, t, "cus_1")
    assert "payouts" not in exported
    assert all(e["entity_type"] != "payout" for e in exported["events"])
    before = [
        (p.payout_id, p.version, p.description, p.metadata_) for p in await _rows(app_engine, t)
    ]
    assert await erase_customer(app_engine, t, "cus_1", keyring=keyring)
    after = [
        (p.payout_id, p.version, p.description, p.metadata_) for p in await _rows(app_engine, t)
    ]
    assert after == before
    assert (await verify_audit(app_engine, t, keyring)).problems == []


async def test_the_wiped_check_still_sees_a_payout_only_chain_deleted(
    app_engine: AsyncEngine,
    owner_engine: AsyncEngine,
    keyring: MasterKeyring,
    make_event: EventFactory,
) -> None:
    """h74a counted only types with a table toward 'events but no chain'; payouts have one
    now, and a tenant whose only entries were its payouts' has a chain to lose."""
    t = _tenant()
    await write_events(app_engine, [make_event.payout(t, "po_1")], keyring=keyring)
    async with owner_engine.begin() as conn:
        await wipe_audit_chain(conn, t)
    problems = (await verify_audit(app_engine, t, keyring)).problems
    assert "events are recorded for this tenant but its audit chain is empty" in problems
    async with tenant_session(app_engine, t) as s:
        assert await s.scalar(select(func.count()).select_from(AuditLog)) == 0
