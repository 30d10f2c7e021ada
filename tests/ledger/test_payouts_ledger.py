"""Payout outcomes in the ledger, before their entity table: stored in `events` (the
tenant's history), never an error for the sink, no entity row nor audit entry of their
own, counted neither applied nor stale; a replay stores nothing twice; verify passes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from paystream.ledger import tenant_session, verify_audit, write_events
from paystream.ledger.models import AuditLog, Event
from paystream.ledger.sink import outcome_to_ledger_events
from paystream.streams.outcomes import build_outcome, command_ref
from paystream.tenancy.crypto import MasterKeyring


def _outcome(tenant: str, outcome_type: str, version: int, status: str):  # type: ignore[no-untyped-def]
    cmd = command_ref(
        tenant_id=tenant,
        command_id=f"cmd-{version}",
        command_type="payout.refresh",
        idempotency_key=f"cmd-{version}",
        time=datetime(2025, 1, 1, tzinfo=UTC),
        traceparent=None,
        tracestate=None,
        source=None,
        id_salt=None,
    )
    po = {
        "tenant_id": tenant, "id": "po1", "version": version, "provider": "simulator",
        "created_by": "cmd-1", "status": status, "amount": 3000, "currency": "EUR",
        "method": "standard", "provider_payout_id": "po_x",
        "arrival_date": "2025-01-03T00:00:00Z", "failure_code": None,
        "failure_message": None, "description": "June", "statement_descriptor": "ACME",
        "metadata": {},
    }  # fmt: skip
    data = {
        "tenant_id": tenant, "command_id": cmd.command_id, "entity_type": "payout",
        "entity_id": "po1", "version": version, "object": po,
    }  # fmt: skip
    return build_outcome(cmd, outcome_type, data)


async def test_payout_events_are_stored_without_rows(
    app_engine: AsyncEngine, keyring: MasterKeyring
) -> None:
    t = f"po-{uuid.uuid4().hex[:10]}"
    made = outcome_to_ledger_events(_outcome(t, "payout.created", 1, "pending"))
    result = await write_events(app_engine, made, keyring=keyring)
    assert (result.events_written, result.entities_applied, result.entities_stale) == (1, 0, 0)
    again = await write_events(app_engine, made, keyring=keyring)
    assert (again.events_written, again.duplicates) == (0, 1)
    paid = outcome_to_ledger_events(_outcome(t, "payout.paid", 2, "paid"))
    assert (await write_events(app_engine, paid, keyring=keyring)).events_written == 1
    async with tenant_session(app_engine, t) as s:
        kinds = (await s.scalars(select(Event.entity_type).order_by(Event.entity_version))).all()
        audits = await s.scalar(select(func.count()).select_from(AuditLog))
    assert list(kinds) == ["payout", "payout"] and audits == 0
    res = await verify_audit(app_engine, t, keyring)
    assert res.problems == []
