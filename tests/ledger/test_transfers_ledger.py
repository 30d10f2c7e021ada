"""Transfers in the ledger: their outcomes (a transfer from a payment, reversed in part
then in full) are stored in the ``events`` table as entity type ``transfer``, with the
payment each moved (its ``amount_transferred``) as its related event, and applied to
the ``transfers`` table (migration 0019): one row per (tenant, transfer id) at its
latest version, each version audited; written again (a redelivery), nothing changes;
the payment's row moves as before, and every audit entry verifies."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from paystream.ledger import tenant_session, verify_audit, write_events
from paystream.ledger.models import Event, Payment, Transfer
from paystream.ledger.sink import outcome_to_ledger_events
from paystream.ledger.writer import ENTITY_TABLES
from paystream.tenancy.crypto import MasterKeyring
from tests.agents.conftest import running_harness
from tests.agents.harness import data, kind
from tests.ledger.transfers import a_transfer_made


@pytest.mark.asyncio
async def test_transfer_outcomes_are_stored_as_events(
    redis_url: str, app_engine: AsyncEngine, keyring: MasterKeyring
) -> None:
    async with running_harness(redis_url) as h:
        t = h.add_tenant()
        outs = await a_transfer_made(h, t, transfer_group="o1")
        outs.append(await h.send("transfer.reverse", t, {"transfer_id": "tr1", "amount": 1_000}))
        outs.append(await h.send("transfer.reverse", t, {"transfer_id": "tr1"}))
    assert [kind(o) for o in outs] == [
        "payment.succeeded", "transfer.created", "transfer.reversed", "transfer.reversed"
    ], [data(o) for o in outs]  # fmt: skip
    events = [e for o in outs for e in outcome_to_ledger_events(o)]
    result = await write_events(app_engine, events, keyring=keyring)
    assert result.events_written == len(events) == 7  # (3 transfers, 4 payment versions)
    assert result.entities_stale == 0
    assert result.entities_applied == 2  # (the transfer and the payment)
    assert "transfer" in {str(k) for k in ENTITY_TABLES}
    again = await write_events(app_engine, events, keyring=keyring)  # (a redelivery)
    assert (again.events_written, again.duplicates, again.entities_applied) == (0, 7, 0)
    async with tenant_session(app_engine, t) as s:
        stored = (
            await s.scalars(
                select(Event).where(Event.entity_type == "transfer").order_by(Event.time)
            )
        ).all()
        payment = (await s.scalars(select(Payment))).one()
        row = (await s.scalars(select(Transfer))).one()
    assert [(e.type, e.entity_id) for e in stored] == [
        ("com.paystream.transfer.created", "tr1"),
        ("com.paystream.transfer.reversed", "tr1"),
        ("com.paystream.transfer.reversed", "tr1"),
    ]
    assert [e.data["status"] for e in stored] == ["created", "partially_reversed", "reversed"]
    assert stored[0].data["payment_id"] == "p1" and stored[0].data["amount"] == 6_000
    assert (payment.payment_id, payment.amount_captured) == ("p1", 10_000)
    assert (row.transfer_id, row.status, row.amount, row.amount_reversed, row.version) == (
        "tr1", "reversed", 6_000, 6_000, 3
    )  # fmt: skip
    assert (row.connected_account_id, row.payment_id, row.transfer_group) == ("ca1", "p1", "o1")
    assert row.currency == "USD" and row.provider == "simulator"
    assert row.provider_transfer_id and row.provider_transfer_id.startswith("tr_")
    assert row.last_event_id == stored[-1].event_id
    assert (await verify_audit(app_engine, t, keyring)).problems == []
