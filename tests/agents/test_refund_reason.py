"""A refund keeps why it was made (refund.create's `reason`): in its table record, its
outcome's object, and so the ledger's `refunds.reason` column, which stayed NULL while the
reason was only sent to the provider (review h60b). A refund made without one writes no
`reason` field at all, as before (a worker of the previous release reads the record)."""

from __future__ import annotations

import orjson
import pytest

from paystream.ledger.sink import outcome_to_ledger_events
from paystream.tables.records import RefundRecord
from tests.agents.harness import Harness, data, kind

pytestmark = pytest.mark.asyncio


async def _captured(h: Harness, tenant: str) -> str:
    paid = await h.send(
        "payment.create",
        tenant,
        {"amount": 3000, "currency": "EUR", "payment_method_token": "pm_card_visa"},
    )
    assert kind(paid) == "payment.succeeded", data(paid)
    return str(data(paid)["entity_id"])


async def test_a_refund_reason_is_kept_in_the_table_the_outcome_and_the_ledger_row(
    harness: Harness,
) -> None:
    t = harness.add_tenant()
    pid = await _captured(harness, t)
    refund = await harness.send(
        "refund.create", t, {"payment_id": pid, "amount": 1000, "reason": "fraudulent"}
    )
    assert kind(refund) == "refund.succeeded", data(refund)
    assert data(refund)["object"]["reason"] == "fraudulent"
    rid = data(refund)["entity_id"]
    stored = harness.tables.refunds[f"{t}:{rid}"]
    assert RefundRecord.model_validate(stored).reason == "fraudulent"

    rows = outcome_to_ledger_events(refund)
    assert next((e.entity_type.value, e.columns.get("reason")) for e in rows) == (
        "refund",
        "fraudulent",
    )

    # Read back from the provider, it keeps its reason.
    again = await harness.send("refund.refresh", t, {"refund_id": rid})
    assert data(again)["object"]["reason"] == "fraudulent", data(again)


async def test_a_refund_without_a_reason_writes_no_reason_field(harness: Harness) -> None:
    t = harness.add_tenant()
    pid = await _captured(harness, t)
    refund = await harness.send("refund.create", t, {"payment_id": pid})
    assert kind(refund) == "refund.succeeded", data(refund)
    assert "reason" not in data(refund)["object"]
    # The table's record is the same dump (a Faust table writes it to the changelog).
    stored = harness.tables.refunds[f"{t}:{data(refund)['entity_id']}"]
    assert "reason" not in orjson.loads(orjson.dumps(stored))
