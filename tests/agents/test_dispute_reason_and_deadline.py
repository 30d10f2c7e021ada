"""A dispute keeps its provider's reason and the deadline for its evidence: in its
record, the outcome that announces it and every later one, and the ledger's
`disputes.reason` / `evidence_due_by` columns (NULL before). Past the deadline a dispute
is lost unanswered, so the tenant must see it. Stripe's dispute object maps the same
way (`reason`, `evidence_details.due_by`)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from paystream.gateways.base import DisputeStatus
from paystream.gateways.simulator.operations import EVIDENCE_WINDOW_SECONDS
from paystream.gateways.stripe import mapping
from paystream.ledger.sink import outcome_to_ledger_events
from tests.agents.harness import Harness, data, kind

pytestmark = pytest.mark.asyncio


async def test_a_dispute_s_reason_and_deadline_reach_its_outcomes_and_ledger_rows(
    harness: Harness,
) -> None:
    t = harness.add_tenant()
    before = int(time.time())
    pay = await harness.send(
        "payment.create",
        t,
        {"amount": 900, "currency": "USD", "payment_method_token": "pm_card_createDispute"},
    )
    assert kind(pay) == "payment.succeeded", data(pay)
    (dispute,) = data(pay)["related"]
    obj = dispute["object"]
    assert obj["reason"] == "fraudulent"
    due = datetime.fromisoformat(obj["evidence_due_by"])
    assert due.tzinfo is not None
    assert (
        before + EVIDENCE_WINDOW_SECONDS <= due.timestamp() <= time.time() + EVIDENCE_WINDOW_SECONDS
    )

    rows = {e.entity_type.value: e.columns for e in outcome_to_ledger_events(pay)}
    assert rows["dispute"]["reason"] == "fraudulent"
    assert rows["dispute"]["evidence_due_by"] == due

    # Answered, the dispute keeps both.
    answered = await harness.send(
        "dispute.submit_evidence",
        t,
        {"dispute_id": obj["id"], "evidence": {"customer_name": "Ada"}},
    )
    assert kind(answered) == "dispute.evidence_submitted", data(answered)
    kept = data(answered)["object"]
    assert (kept["reason"], kept["evidence_due_by"]) == ("fraudulent", obj["evidence_due_by"])


async def test_a_payment_without_a_dispute_writes_neither_field(harness: Harness) -> None:
    t = harness.add_tenant()
    pay = await harness.send(
        "payment.create",
        t,
        {"amount": 900, "currency": "USD", "payment_method_token": "pm_card_visa"},
    )
    assert kind(pay) == "payment.succeeded" and not data(pay).get("related")
    assert "reason" not in data(pay)["object"] and "evidence_due_by" not in data(pay)["object"]


async def test_stripe_s_dispute_object_maps_its_reason_and_deadline() -> None:
    due = 1_767_225_600  # 2026-01-01T00:00:00Z
    obj = {
        "id": "dp_1",
        "object": "dispute",
        "status": "needs_response",
        "amount": 900,
        "currency": "usd",
        "reason": "product_not_received",
        "evidence_details": {"due_by": due, "has_evidence": False, "past_due": False},
    }
    got = mapping.dispute(obj)
    assert got.status is DisputeStatus.NEEDS_RESPONSE
    assert got.reason == "product_not_received"
    assert got.evidence_due_by == datetime(2026, 1, 1, tzinfo=UTC)
    closed = mapping.dispute({**obj, "status": "lost", "evidence_details": {"due_by": None}})
    assert closed.evidence_due_by is None
