"""transfer.refresh in the ledger: its transfer.updated (a transfer read back unchanged,
`created` again: TRANSFER_MOVES takes it, as PAYOUT_MOVES takes a payout.updated) and
its transfer.reversed (a reversal made outside paystream, its payment related) are
stored and applied to the ``transfers`` table like a transfer.reverse's; nothing is
refused as a move a transfer cannot make, and every audit entry verifies."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from paystream.ledger import tenant_session, verify_audit, write_events
from paystream.ledger.models import Event, Transfer
from paystream.ledger.sink import outcome_to_ledger_events
from paystream.tenancy.crypto import MasterKeyring
from tests.agents.conftest import running_harness
from tests.agents.harness import data, kind, simulator_of
from tests.ledger.transfers import a_transfer_made


@pytest.mark.asyncio
async def test_refreshed_transfers_are_stored_and_applied(
    redis_url: str, app_engine: AsyncEngine, keyring: MasterKeyring
) -> None:
    async with running_harness(redis_url) as h:
        t = h.add_tenant()
        outs = await a_transfer_made(h, t)
        outs.append(await h.send("transfer.refresh", t, {"transfer_id": "tr1"}))
        provider_id = data(outs[1])["object"]["provider_transfer_id"]
        await simulator_of(h, t).reverse_transfer_outside(provider_id, 2_000)
        outs.append(await h.send("transfer.refresh", t, {"transfer_id": "tr1"}))
        outs.append(await h.send("transfer.refresh", t, {"transfer_id": "tr1"}))
    assert [kind(o) for o in outs] == [
        "payment.succeeded", "transfer.created", "transfer.updated", "transfer.reversed",
        "transfer.updated",
    ], [data(o) for o in outs]  # fmt: skip
    events = [e for o in outs for e in outcome_to_ledger_events(o)]
    result = await write_events(app_engine, events, keyring=keyring)
    assert result.events_written == len(events) == 7  # (4 transfers, 3 payment versions)
    assert result.entities_stale == 0 and result.entities_applied == 2
    async with tenant_session(app_engine, t) as s:
        stored = (
            await s.scalars(
                select(Event).where(Event.entity_type == "transfer").order_by(Event.time)
            )
        ).all()
        row = (await s.scalars(select(Transfer))).one()
    assert [e.type.removeprefix("com.paystream.") for e in stored] == [
        "transfer.created", "transfer.updated", "transfer.reversed", "transfer.updated"
    ]  # fmt: skip
    assert [e.data["status"] for e in stored] == [
        "created", "created", "partially_reversed", "partially_reversed"
    ]  # fmt: skip
    assert (row.status, row.amount_reversed, row.version) == ("partially_reversed", 2_000, 4)
    assert (await verify_audit(app_engine, t, keyring)).problems == []
