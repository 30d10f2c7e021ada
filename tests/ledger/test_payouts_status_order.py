"""The ledger's payouts move by status as payouts do (PAYOUT_MOVES), not by version only.

0006's trigger is forward-only by version: a failed payout (its amount back in the
balance, final) was made paid by any later version of an event, which the sink wrote
(review h74m, finding 6). paid -> failed is real (a bank returns a payout), failed ->
paid and canceled -> anything else never are: the writer refuses them as data (the sink
dead-letters the event)."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from paystream.ledger import tenant_session, write_events
from paystream.ledger.errors import InvalidEventError
from paystream.ledger.models import Payout
from paystream.tenancy.crypto import MasterKeyring
from tests.ledger.factories import EventFactory


async def _status(engine: AsyncEngine, tenant: str) -> list[tuple[int, str]]:
    async with tenant_session(engine, tenant) as s:
        return [(p.version, p.status) for p in (await s.scalars(select(Payout))).all()]


async def test_paid_then_failed_is_taken(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    t = f"pf-{uuid.uuid4().hex[:10]}"
    await write_events(
        app_engine,
        [
            make_event.payout(t, "po_1", version=1),
            make_event.payout(t, "po_1", version=2, status="paid"),
            make_event.payout(t, "po_1", version=3, status="failed", failure_code="no_account"),
        ],
        keyring=keyring,
    )
    assert await _status(app_engine, t) == [(3, "failed")]


async def test_a_failed_payout_is_never_made_paid(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    t = f"pf-{uuid.uuid4().hex[:10]}"
    await write_events(
        app_engine,
        [
            make_event.payout(t, "po_1", version=1),
            make_event.payout(t, "po_1", version=2, status="failed", failure_code="no_account"),
        ],
        keyring=keyring,
    )
    paid = make_event.payout(t, "po_1", version=3, status="paid")
    with pytest.raises(InvalidEventError, match="a payout that is failed cannot become paid"):
        await write_events(app_engine, [paid], keyring=keyring)
    assert await _status(app_engine, t) == [(2, "failed")]


@pytest.mark.parametrize(
    ("final", "then"), [("failed", "paid"), ("canceled", "in_transit"), ("canceled", "failed")]
)
async def test_a_final_payout_moved_on_in_the_same_batch_is_refused(
    app_engine: AsyncEngine,
    keyring: MasterKeyring,
    make_event: EventFactory,
    final: str,
    then: str,
) -> None:
    """Each version the row would move through is checked, not only the batch's last."""
    t = f"pf-{uuid.uuid4().hex[:10]}"
    await write_events(app_engine, [make_event.payout(t, "po_1", version=1)], keyring=keyring)
    batch = [
        make_event.payout(t, "po_1", version=2, status=final),
        make_event.payout(t, "po_1", version=3, status=then),
    ]
    with pytest.raises(InvalidEventError) as info:
        await write_events(app_engine, batch, keyring=keyring)
    assert info.value.event_id == batch[1].event_id
    assert await _status(app_engine, t) == [(1, "pending")]
