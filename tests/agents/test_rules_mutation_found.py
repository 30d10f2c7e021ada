"""Rules no other test pinned down, found by mutation testing (review h58m): each test
fails under the mutation named above it (a changed comparison or a dropped check)."""

from __future__ import annotations

from typing import Any

import pytest

from paystream.client import build_command
from paystream.gateways import base as gw
from paystream.money import MAX_MINOR_AMOUNT, Money
from tests.agents.harness import Harness, data, kind
from tests.agents.test_payment_rules import (
    USD_1000,
    _effects,
    _gateway,
    _paid,
    _provider_down,
    _refused_without_the_provider,
)

pytestmark = pytest.mark.asyncio


# ---- F1: a dispute under review is refused by paystream itself --------------------
# Mutation (survives tests/agents, tests/gateways, tests/streams):
#   handlers.py _dispute_open_unless_let_through:
#   rec.status not in ("needs_response", "warning_needs_response")
#   -> ... ("needs_response", "warning_needs_response", "under_review")
@pytest.mark.parametrize(
    ("command", "body"),
    [
        ("dispute.accept", {}),
        ("dispute.submit_evidence", {"evidence": {"uncategorized_text": "y"}, "submit": True}),
    ],
)
async def test_a_dispute_under_review_is_refused_by_paystream_itself(
    harness: Harness, command: str, body: dict[str, Any]
) -> None:
    t = harness.add_tenant()
    paid = await harness.send(
        "payment.create",
        t,
        {"payment_id": "p1", **USD_1000, "payment_method_token": "pm_card_createDispute"},
    )
    dispute_id = str(data(paid)["object"]["dispute_id"])
    submitted = await harness.send(
        "dispute.submit_evidence",
        t,
        {"dispute_id": dispute_id, "evidence": {"uncategorized_text": "x"}, "submit": True},
    )
    assert data(submitted)["object"]["status"] == "under_review"
    out = await _refused_without_the_provider(
        harness, t, command, {"dispute_id": dispute_id, **body}, "invalid_state"
    )
    assert "is under_review" in data(out)["message"]


# ---- F2: command amounts above MAX_MINOR_AMOUNT ------------------------------------
# Mutation (survives): streams/commands.py
#   Amount = Annotated[StrictInt, Field(ge=1, le=MAX_MINOR_AMOUNT)]
#   -> ... le=MAX_MINOR_AMOUNT * 10   (only 10**15 was tested)
async def test_one_over_the_largest_amount_is_a_validation_error_everywhere(
    harness: Harness,
) -> None:
    t = harness.add_tenant()
    await _paid(harness, t, "paid")
    await _paid(harness, t, "held", capture="manual")
    before = await _effects(harness, t)
    _provider_down(harness, t)
    over = MAX_MINOR_AMOUNT + 1
    for command, body in (
        (
            "payment.create",
            {"amount": over, "currency": "USD", "payment_method_token": "pm_card_visa"},
        ),
        ("payment.capture", {"payment_id": "held", "amount": over}),
        ("refund.create", {"payment_id": "paid", "amount": over}),
    ):
        emits, out = await harness.send_event(build_command(command, t, body))
        assert harness.settings.retry_topic not in [e.topic for e in emits], command
        assert out is not None and (kind(out), data(out)["reason"]) == (
            "command.rejected",
            "validation_error",
        ), (command, data(out) if out is not None else None)
    assert await _effects(harness, t) == before


# ---- F3: customer.export never holds another tenant's records ----------------------
# Mutation (survives): handlers.py export_customer
#   if raw is None or not str(key).startswith(prefix):  ->  if raw is None:
# While the owner index is not built (the first SCANS_BEFORE_BUILD exports of a
# generation, and during every rebalance) the export scans whole tables, and this
# prefix check is the only thing keeping other tenants' records out; the export tests
# either build the index at once or use a single tenant.
async def test_an_export_by_scan_holds_no_other_tenants_records(harness: Harness) -> None:
    a, b = harness.add_tenant(), harness.add_tenant()
    for t in (a, b):
        await harness.send("customer.create", t, {"customer_id": "ann"})
    pm = await harness.send(
        "payment_method.attach",
        a,
        {"customer_id": "ann", "payment_method_id": "pm_a", "token": "pm_card_visa"},
    )
    assert kind(pm) == "payment_method.attached"
    paid = await harness.send(
        "payment.create",
        a,
        {"payment_id": "pay_a", **USD_1000, "customer_id": "ann", "payment_method_id": "pm_a"},
    )
    assert kind(paid) == "payment.succeeded"
    refund = await harness.send("refund.create", a, {"payment_id": "pay_a", "amount": 100})
    assert kind(refund) == "refund.succeeded"
    out = await harness.send("customer.export", b, {"customer_id": "ann"})
    assert kind(out) == "customer.exported", data(out)
    export = data(out)["export"]
    assert (export["payment_methods"], export["payments"], export["refunds"]) == ([], [], [])


# ---- F4: a refund the provider answers `failed` at once is not counted refunded ----
# Mutation (survives): handlers.py create_refund
#   if status is _REFUND_FAILED: return HandlerResult("refund.failed", rec)  -> dropped
# (the failed refund's amount is added to the payment's amount_refunded). The simulator
# never answers a create `failed` (its refund_fail card fails on read back), Stripe can.
async def test_a_refund_failed_at_creation_leaves_the_amount_refundable(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = harness.add_tenant()
    await _paid(harness, t, "p1")
    gateway = _gateway(harness, t)
    real = gateway.create_refund

    async def failed(req: gw.CreateRefund, idempotency_key: str) -> gw.RefundResult:
        return gw.RefundResult(
            provider_refund_id="re_failed",
            provider_payment_id="",
            status=gw.RefundStatus.FAILED,
            amount=Money(amount=req.amount or 0, currency="USD"),
            failure_code="expired_or_canceled_card",
        )

    monkeypatch.setattr(gateway, "create_refund", failed)
    out = await harness.send("refund.create", t, {"payment_id": "p1", "amount": 400})
    assert kind(out) == "refund.failed", data(out)
    assert "related" not in data(out) or not any(
        r["entity_type"] == "payment" for r in data(out)["related"]
    ), data(out)
    monkeypatch.setattr(gateway, "create_refund", real)
    _provider_down(harness, t)
    # Nothing was refunded: all 10.00 USD is still refundable by paystream's own rule
    # (under the mutation: "refund of 10.00 USD exceeds the refundable 6.00 USD").
    emits, full = await harness.send_event(
        build_command("refund.create", t, {"payment_id": "p1", "amount": 1000})
    )
    assert full is None or data(full).get("reason") != "invalid_state", data(full)
    assert harness.settings.retry_topic in [e.topic for e in emits]  # parked: provider down
