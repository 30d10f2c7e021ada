"""Payouts beyond the handlers: retention, the worker's tables and views, and the ledger's
translation of their outcomes (stored in `events`, and in `payouts` since migration 0014)."""

from __future__ import annotations

from datetime import UTC, datetime

from paystream.ledger.events import EntityType
from paystream.ledger.sink import ENTITYLESS_OUTCOMES, outcome_to_ledger_events
from paystream.streams.admin import TABLE_NAMES
from paystream.streams.outcomes import build_outcome, command_ref
from paystream.tables.retention import settled


def test_retention_settles_paid_failed_and_canceled_payouts() -> None:
    for status in ("paid", "failed", "canceled"):
        assert settled({"entity_type": "payout", "status": status})
    for live in ("pending", "in_transit"):
        assert not settled({"entity_type": "payout", "status": live})


def test_payouts_have_a_table_and_a_view() -> None:
    from paystream.tables import commands_view
    from paystream.web import views

    assert "payouts" in TABLE_NAMES
    assert "payouts" in views._ENTITY_TABLES
    assert commands_view._KINDS["payout"] == "payouts"


def _cmd(command_type: str):  # type: ignore[no-untyped-def]
    return command_ref(
        tenant_id="acme",
        command_id="c1",
        command_type=command_type,
        idempotency_key="c1",
        time=datetime(2025, 1, 1, tzinfo=UTC),
        traceparent=None,
        tracestate=None,
        source=None,
        id_salt=None,
    )


def test_the_ledger_stores_payout_outcomes() -> None:
    """A payout outcome is one ledger event (stored in `events`), never an invalid event
    for the sink to park; a balance read is an outcome about no entity."""
    po = {
        "tenant_id": "acme", "id": "po1", "version": 2, "provider": "simulator",
        "created_by": "c1", "status": "failed", "amount": 3000, "currency": "EUR",
        "method": "standard", "provider_payout_id": "po_x",
        "arrival_date": "2025-01-03T00:00:00Z", "failure_code": "account_closed",
        "failure_message": "The bank account has been closed.", "description": None,
        "statement_descriptor": "ACME", "metadata": {"k": "v"},
    }  # fmt: skip
    data = {
        "tenant_id": "acme", "command_id": "c1", "entity_type": "payout",
        "entity_id": "po1", "version": 2, "object": po, "previous_status": "in_transit",
    }  # fmt: skip
    [event] = outcome_to_ledger_events(build_outcome(_cmd("payout.refresh"), "payout.failed", data))
    assert (event.entity_type, event.entity_id, event.version) == (EntityType.PAYOUT, "po1", 2)
    assert event.columns["amount"] == 3000 and event.columns["failure_code"] == "account_closed"
    balance = {"tenant_id": "acme", "command_id": "c1", "balances": []}
    read = build_outcome(_cmd("balance.retrieve"), "balance.retrieved", balance)
    assert outcome_to_ledger_events(read) == []
    assert "com.paystream.balance.retrieved" in ENTITYLESS_OUTCOMES


def test_payouts_have_an_entity_table_in_the_ledger() -> None:
    """Migration 0014: rows and audit entries, and their earlier events backfilled."""
    from paystream.ledger.models import Payout
    from paystream.ledger.writer import BACKFILLED_TYPES, ENTITY_TABLES

    assert ENTITY_TABLES[EntityType.PAYOUT] == (Payout, "payout_id")
    assert BACKFILLED_TYPES["payout"] == "0014"
