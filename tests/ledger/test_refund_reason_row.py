"""The ledger's `refunds.reason` holds a refund outcome's reason (the pipeline emits it
since review h60b: tests/agents/test_refund_reason.py), and stays NULL without one."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from paystream.ledger import write_events
from paystream.ledger.models import Refund
from paystream.ledger.session import tenant_session
from paystream.ledger.sink import LedgerSink, outcome_to_ledger_events
from paystream.tenancy.crypto import MasterKeyring
from tests.ledger.factories import EventFactory
from tests.ledger.test_sink_review_findings import refund_outcome

pytestmark = pytest.mark.asyncio


async def test_a_refund_s_reason_reaches_its_ledger_row(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    t = f"t{uuid.uuid4().hex[:10]}"
    await write_events(
        app_engine,
        [make_event.payment(t, p, 1, amount=2500, amount_captured=2500, currency="EUR")
         for p in ("pay_1", "pay_2")],
        keyring=keyring,
    )  # fmt: skip
    with_reason = refund_outcome(t, "re_1", "pay_1", 1000, "c-1")
    with_reason.get_data()["object"]["reason"] = "requested_by_customer"
    without = refund_outcome(t, "re_2", "pay_2", 1000, "c-2")
    sink = LedgerSink(app_engine, keyring)
    for outcome in (with_reason, without):
        assert (await sink.write_batch(outcome_to_ledger_events(outcome))).dead_letters == []
    async with tenant_session(app_engine, t) as s:
        rows = dict((await s.execute(select(Refund.refund_id, Refund.reason))).tuples().all())
    assert rows == {"re_1": "requested_by_customer", "re_2": None}
