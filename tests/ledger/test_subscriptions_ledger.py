"""Subscriptions and invoices in the ledger (migration 0013): their outcomes write entity
rows with audit entries, as payments' do; another tenant sees none; rows only move
forward and are never deleted; `audit verify` covers them; the privacy export lists
them, and an erasure leaves them as it leaves payments (they hold no personal data)."""

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
from paystream.ledger.models import AuditLog, Invoice, Subscription
from paystream.ledger.privacy import erase_customer
from paystream.ledger.sink import FailureKind, _sqlstate, classify_failure, outcome_to_ledger_events
from paystream.streams.outcomes import build_outcome, command_ref
from paystream.tenancy.crypto import MasterKeyring
from tests.ledger.factories import EventFactory


def _tenant() -> str:
    return f"sub-{uuid.uuid4().hex[:10]}"


async def _rows(engine: AsyncEngine, tenant: str) -> tuple[list[Subscription], list[Invoice]]:
    async with tenant_session(engine, tenant) as s:
        subs = list((await s.scalars(select(Subscription))).all())
        invoices = list((await s.scalars(select(Invoice).order_by(Invoice.invoice_id))).all())
        return subs, invoices


async def _audit_count(engine: AsyncEngine, tenant: str) -> int:
    async with tenant_session(engine, tenant) as s:
        return int(await s.scalar(select(func.count()).select_from(AuditLog)) or 0)


def _outcome(
    tenant: str,
    outcome_type: str,
    version: int,
    sub: dict[str, Any],
    invoices: list[dict[str, Any]],
    command_type: str = "subscription.refresh",
) -> CloudEvent:
    cmd = command_ref(
        tenant_id=tenant,
        command_id=f"cmd-{outcome_type}-{version}",
        command_type=command_type,
        idempotency_key=f"cmd-{version}",
        time=datetime(2025, 1, 1, tzinfo=UTC),
        traceparent=None,
        tracestate=None,
        source=None,
        id_salt=None,
    )
    data = {
        "tenant_id": tenant, "command_id": cmd.command_id, "entity_type": "subscription",
        "entity_id": sub["id"], "version": version, "object": sub,
        "related": [
            {"entity_type": "invoice", "entity_id": i["id"], "version": i["version"],
             "object": i}
            for i in invoices
        ],
    }  # fmt: skip
    return build_outcome(cmd, outcome_type, data)


async def test_outcomes_write_rows_once_and_move_them_forward(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    """An outcome (through the sink's translation) writes the subscription and its
    invoice; a replay writes nothing twice (no row, no audit entry); a renewal moves the
    subscription on and adds the next invoice; the chain verifies."""
    t = _tenant()
    sub = dict(make_event.subscription(t, "sub_1").data)
    first = dict(make_event.invoice(t, "in_1").data)
    created = outcome_to_ledger_events(_outcome(t, "subscription.created", 1, sub, [first]))
    result = await write_events(app_engine, created, keyring=keyring)
    assert (result.events_written, result.entities_applied) == (2, 2)
    subs, invoices = await _rows(app_engine, t)
    assert [(s.subscription_id, s.version, s.status, s.amount, s.currency) for s in subs] == [
        ("sub_1", 1, "active", 1500, "EUR")
    ]
    s1 = subs[0]
    assert (s1.customer_id, s1.payment_method_id, s1.interval, s1.interval_count) == (
        "cus_1", "pm_1", "month", 1,
    )  # fmt: skip
    assert s1.cancel_at_period_end is False and s1.trial_end is None
    assert s1.current_period_end == datetime(2025, 2, 1, tzinfo=UTC)
    assert (s1.provider, s1.provider_subscription_id, s1.latest_invoice_id) == (
        "simulator", "sim_sub_1", "in_sub_1_1",
    )  # fmt: skip
    assert [
        (i.invoice_id, i.subscription_id, i.status, i.amount, i.created_by) for i in invoices
    ] == [("in_1", "sub_1", "paid", 1500, "cmd_sub")]
    assert invoices[0].provider_payment_id == "sim_pi_1"
    entries = await _audit_count(app_engine, t)
    assert entries == 2

    again = await write_events(app_engine, created, keyring=keyring)
    assert (again.events_written, again.duplicates, again.entities_applied) == (0, 2, 0)
    assert await _audit_count(app_engine, t) == entries

    renewed = {**sub, "version": 2, "status": "past_due", "cancel_at_period_end": True,
               "current_period_start": "2025-02-01T00:00:00+00:00",
               "current_period_end": "2025-03-01T00:00:00+00:00"}  # fmt: skip
    second = {**first, "id": "in_2", "status": "open", "failure_code": "card_declined",
              "created_by": "cmd-refresh"}  # fmt: skip
    await write_events(
        app_engine,
        outcome_to_ledger_events(_outcome(t, "subscription.updated", 2, renewed, [second])),
        keyring=keyring,
    )
    subs, invoices = await _rows(app_engine, t)
    assert (subs[0].version, subs[0].status, subs[0].cancel_at_period_end) == (2, "past_due", True)
    assert [(i.invoice_id, i.status, i.failure_code) for i in invoices] == [
        ("in_1", "paid", None),
        ("in_2", "open", "card_declined"),
    ]
    assert await _audit_count(app_engine, t) == entries + 2
    res = await verify_audit(app_engine, t, keyring)
    assert res.problems == [] and res.checked == entries + 2


async def test_an_update_moves_the_row_to_its_new_price_and_method(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    """subscription.update's outcome (subscription.updated, as a refresh's) moves the
    row: its amount and payment method as they are now, with an audit entry."""
    t = _tenant()
    sub = dict(make_event.subscription(t, "sub_1").data)
    first = dict(make_event.invoice(t, "in_1").data)
    made = outcome_to_ledger_events(_outcome(t, "subscription.created", 1, sub, [first]))
    await write_events(app_engine, made, keyring=keyring)
    changed = {**sub, "version": 2, "amount": 2500, "payment_method_id": "pm_2",
               "cancel_at_period_end": True}  # fmt: skip
    update = _outcome(t, "subscription.updated", 2, changed, [], "subscription.update")
    result = await write_events(app_engine, outcome_to_ledger_events(update), keyring=keyring)
    assert (result.events_written, result.entities_applied) == (1, 1)
    subs, invoices = await _rows(app_engine, t)
    [row] = subs
    assert (row.version, row.status, row.amount, row.currency) == (2, "active", 2500, "EUR")
    assert (row.payment_method_id, row.cancel_at_period_end) == ("pm_2", True)
    assert [(i.invoice_id, i.amount) for i in invoices] == [("in_1", 1500)]  # (as billed)
    res = await verify_audit(app_engine, t, keyring)
    assert res.problems == [] and res.checked == 3


async def test_a_trial_ended_by_an_update_writes_its_first_invoice(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    """subscription.update `trial_end: "now"`: its outcome moves the trialing row to
    active, its trial_end to when it ended, and writes the first invoice it charged (in
    `related`, as a create's) with its audit entry: the ledger misses no such charge."""
    t = _tenant()
    sub = {**make_event.subscription(t, "sub_1").data, "status": "trialing",
           "trial_end": "2025-01-15T00:00:00+00:00", "latest_invoice_id": None}  # fmt: skip
    made = outcome_to_ledger_events(_outcome(t, "subscription.created", 1, sub, []))
    await write_events(app_engine, made, keyring=keyring)
    ended = {**sub, "version": 2, "status": "active", "trial_end": "2025-01-03T00:00:00+00:00",
             "current_period_start": "2025-01-03T00:00:00+00:00",
             "current_period_end": "2025-02-03T00:00:00+00:00",
             "latest_invoice_id": "in_1"}  # fmt: skip
    first = {**make_event.invoice(t, "in_1").data, "created_by": "cmd-subscription.updated-2",
             "period_start": "2025-01-03T00:00:00+00:00",
             "period_end": "2025-02-03T00:00:00+00:00"}  # fmt: skip
    update = _outcome(t, "subscription.updated", 2, ended, [first], "subscription.update")
    result = await write_events(app_engine, outcome_to_ledger_events(update), keyring=keyring)
    assert (result.events_written, result.entities_applied) == (2, 2)
    subs, invoices = await _rows(app_engine, t)
    [row] = subs
    assert (row.version, row.status) == (2, "active")
    assert row.trial_end == datetime(2025, 1, 3, tzinfo=UTC)
    assert [(i.invoice_id, i.status, i.amount) for i in invoices] == [("in_1", "paid", 1500)]
    res = await verify_audit(app_engine, t, keyring)
    assert res.problems == [] and res.checked == 3


async def test_another_tenant_sees_none_and_cannot_write_them(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    t, other = _tenant(), _tenant()
    await write_events(
        app_engine,
        [make_event.subscription(t, "sub_1"), make_event.invoice(t, "in_1")],
        keyring=keyring,
    )
    assert await _rows(app_engine, other) == ([], [])
    async with tenant_session(app_engine, other) as s:
        updated = await s.execute(text("UPDATE subscriptions SET status = 'canceled'"))
        assert updated.rowcount == 0  # type: ignore[attr-defined]
    for table, id_column in (("subscriptions", "subscription_id"), ("invoices", "invoice_id")):
        with pytest.raises(DBAPIError, match="row-level security"):
            async with tenant_session(app_engine, other) as s:
                await s.execute(
                    text(
                        f"INSERT INTO {table} (tenant_id, {id_column}, amount, currency, "
                        "status, version, last_event_id, created_at, updated_at) VALUES "
                        "(:t, 'x', 1, 'EUR', 'paid', 1, 'e', now(), now())"
                    ),
                    {"t": t},
                )
    subs, invoices = await _rows(app_engine, t)
    assert [s.status for s in subs] == ["active"] and len(invoices) == 1


@pytest.mark.parametrize(
    ("table", "tamper"),
    [
        ("subscriptions", "amount = 1, version = 1"),  # rewound
        ("subscriptions", "amount = 1"),  # rewritten at its version
        ("subscriptions", "subscription_id = 'sub_2'"),  # another key
        ("subscriptions", "status = 'active', version = version + 1"),  # by no event
        ("invoices", "status = 'paid', amount = 1"),  # rewritten at its version
        ("invoices", "status = 'open', version = 0"),  # rewound
    ],
)
async def test_rows_only_move_forward_and_are_never_deleted(
    app_engine: AsyncEngine,
    keyring: MasterKeyring,
    make_event: EventFactory,
    table: str,
    tamper: str,
) -> None:
    t = _tenant()
    await write_events(
        app_engine,
        [
            make_event.subscription(t, "sub_1", version=1),
            make_event.subscription(t, "sub_1", version=2, status="canceled"),
            make_event.invoice(t, "in_1", status="void"),
        ],
        keyring=keyring,
    )
    with pytest.raises(DBAPIError, match=f"{table} rows") as refused:
        async with tenant_session(app_engine, t) as s:
            await s.execute(text(f"UPDATE {table} SET {tamper}"))
    assert _sqlstate(refused.value) == "PSR01"
    assert classify_failure(refused.value) == FailureKind.DATA
    with pytest.raises(DBAPIError, match="permission denied"):
        async with tenant_session(app_engine, t) as s:
            await s.execute(text(f"DELETE FROM {table}"))
    subs, invoices = await _rows(app_engine, t)
    assert [(s.version, s.status, s.amount) for s in subs] == [(2, "canceled", 1500)]
    assert [(i.status, i.amount) for i in invoices] == [("void", 1500)]
    assert (await verify_audit(app_engine, t, keyring)).problems == []


async def test_verify_reports_a_subscription_rewritten_without_an_audit_entry(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    """The app role's one way past the trigger (an events row of its own, the version
    ahead) changes the amount billed: `audit verify` names the row."""
    t = _tenant()
    await write_events(
        app_engine,
        [make_event.subscription(t, "sub_1"), make_event.invoice(t, "in_1")],
        keyring=keyring,
    )
    assert (await verify_audit(app_engine, t, keyring)).problems == []
    async with tenant_session(app_engine, t) as s:
        await s.execute(
            text(
                "INSERT INTO events (tenant_id, event_id, type, entity_type, entity_id, "
                "entity_version, time, data) VALUES (:t, 'forged', 'x', 'subscription', "
                "'sub_1', 2, now(), '{}')"
            ),
            {"t": t},
        )
        await s.execute(
            text(
                "UPDATE subscriptions SET amount = 1, version = 2, last_event_id = 'forged' "
                "WHERE subscription_id = 'sub_1'"
            )
        )
    problems = (await verify_audit(app_engine, t, keyring)).problems
    assert any(
        p.startswith("1 subscription row(s) (sub_1) not as their last audit") for p in problems
    ), problems


async def test_verify_reports_an_invoice_event_never_applied(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    t = _tenant()
    await write_events(app_engine, [make_event.subscription(t, "sub_1")], keyring=keyring)
    async with tenant_session(app_engine, t) as s:
        await s.execute(
            text(
                "INSERT INTO events (tenant_id, event_id, type, entity_type, entity_id, "
                "entity_version, time, data) VALUES (:t, 'planted', 'x', 'invoice', "
                "'in_9', 1, now(), '{}')"
            ),
            {"t": t},
        )
    problems = (await verify_audit(app_engine, t, keyring)).problems
    assert any(
        "1 stored invoice event(s) (planted) ahead of their entity row" in p for p in problems
    )


async def test_export_lists_them_and_an_erasure_leaves_them(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    """An erased customer's subscriptions and invoices stay as they are, as payments do
    (amounts and ids for the accounts; no column holds personal data), still exported."""
    t = _tenant()
    await write_events(
        app_engine,
        [
            make_event.customer(t, "cus_1", email="ann@example.com"),
            make_event.subscription(t, "sub_1"),
            make_event.invoice(t, "in_1"),
            # Another customer's: not theirs.
            make_event.subscription(t, "sub_2", customer_id="cus_2"),
            make_event.invoice(t, "in_2", subscription_id="sub_2", customer_id="cus_2"),
        ],
        keyring=keyring,
    )
    exported = await export_customer(app_engine, keyring, t, "cus_1")
    assert [s["subscription_id"] for s in exported["subscriptions"]] == ["sub_1"]
    assert [i["invoice_id"] for i in exported["invoices"]] == ["in_1"]
    assert exported["subscriptions"][0]["amount"] == 1500
    assert {(e["entity_type"], e["entity_id"]) for e in exported["events"]} == {
        ("customer", "cus_1"),
        ("subscription", "sub_1"),
        ("invoice", "in_1"),
    }
    before = await _rows(app_engine, t)
    assert await erase_customer(app_engine, t, "cus_1", keyring=keyring)
    after = await _rows(app_engine, t)
    assert [(s.subscription_id, s.version, s.amount, s.status) for s in after[0]] == [
        (s.subscription_id, s.version, s.amount, s.status) for s in before[0]
    ]
    assert [(i.invoice_id, i.version) for i in after[1]] == [
        (i.invoice_id, i.version) for i in before[1]
    ]
    erased = await export_customer(app_engine, keyring, t, "cus_1")
    assert erased["customer"]["erased"] is True and erased["customer"]["email"] is None
    assert [s["subscription_id"] for s in erased["subscriptions"]] == ["sub_1"]
    assert [i["invoice_id"] for i in erased["invoices"]] == ["in_1"]
    # A renewal after the erasure still applies (payments' rule: accounting goes on).
    await write_events(
        app_engine,
        [make_event.subscription(t, "sub_1", version=2, status="canceled")],
        keyring=keyring,
    )
    assert [s.status for s in (await _rows(app_engine, t))[0] if s.subscription_id == "sub_1"] == [
        "canceled"
    ]
    assert (await verify_audit(app_engine, t, keyring)).problems == []
