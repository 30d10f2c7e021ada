"""A transfer.reverse whose answer was lost (parked), the reversal then learnt by a
transfer.refresh (a webhook's), and the reverse re-driven: one reversal, counted once
(amount_transferred, analytics), and every outcome the worker emits is one the ledger
stores (review h81ra F1: the re-driven reverse emitted reversed -> reversed, which
TRANSFER_MOVES refuses: the ledger dead-lettered it)."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from paystream.agents.pipeline import Inbound
from paystream.client import build_command
from paystream.insights.observe import observe
from paystream.ledger import tenant_session, write_events
from paystream.ledger.models import Transfer
from paystream.ledger.sink import outcome_to_ledger_events
from paystream.settings import CloudEventsMode
from paystream.streams.codec import encode_event
from paystream.tenancy.crypto import MasterKeyring
from tests.agents.conftest import running_harness
from tests.agents.harness import data, kind, new_tenant_id, outcome_of, simulator_of
from tests.ledger.transfers import a_transfer_made


def _reverse(t: str, offset: int, amount: int | None, command_id: str = "rv-1") -> Inbound:
    body = {"transfer_id": "tr1"} | ({} if amount is None else {"amount": amount})
    event = build_command("transfer.reverse", t, body, command_id=command_id)
    rec = encode_event(event, t.encode(), CloudEventsMode.BINARY)
    now = int(time.time() * 1000)
    return Inbound(rec.key, rec.value, dict(rec.headers), now, "paystream.commands", 0, offset)


@pytest.mark.asyncio
@pytest.mark.parametrize("amount", [None, 2_000])
async def test_a_reverse_redriven_after_a_refresh_learnt_it(
    redis_url: str, app_engine: AsyncEngine, keyring: MasterKeyring, amount: int | None
) -> None:
    async with running_harness(redis_url) as h:
        t = new_tenant_id()
        h.add_tenant(t, gateway_options={"lose_response_first": {f"ps:{t}:rv-1": 3}})
        outs = await a_transfer_made(h, t)
        # The reverse reaches the simulator, its answer is lost: parked.
        parked = await h.processor.process(_reverse(t, 10_001, amount))
        assert outcome_of(h.settings, parked) is None
        assert h.idempotency[f"{t}:rv-1"]["state"] == "parked"
        # Stripe's transfer.reversed webhook: its refresh learns the reversal.
        outs.append(await h.send("transfer.refresh", t, {"transfer_id": "tr1"}))
        assert kind(outs[-1]) == "transfer.reversed", data(outs[-1])
        # The parked reverse re-driven (`dlq replay`).
        redriven = outcome_of(h.settings, await h.processor.process(_reverse(t, 10_002, amount)))
        assert redriven is not None
        outs.append(redriven)
        effects = [
            e.kind for e in await simulator_of(h, t).effects() if e.kind.startswith("transfer.")
        ]
    back = 6_000 if amount is None else amount
    assert effects == ["transfer.created", "transfer.reversed"]  # (one reversal)
    assert h.tables.payments[f"{t}:p1"]["amount_transferred"] == 6_000 - back
    learnt = [observe(o) for o in outs[2:]]
    assert sum(f.transfer_reversed for f in learnt if f is not None) == back
    events = [e for o in outs for e in outcome_to_ledger_events(o)]
    result = await write_events(app_engine, events, keyring=keyring)
    # Every outcome stored: none refused as a move a transfer cannot make.
    assert result.events_written == len(events), result
    async with tenant_session(app_engine, t) as s:
        row = (await s.scalars(select(Transfer))).one()
    assert row.amount_reversed == back


@pytest.mark.asyncio
async def test_a_reverse_redriven_after_another_reversed_the_rest(
    redis_url: str, app_engine: AsyncEngine, keyring: MasterKeyring
) -> None:
    """Without any refresh (the path the author suspected): a part reversed, its answer
    lost (parked); the rest reversed by a second transfer.reverse; the first re-driven."""
    async with running_harness(redis_url) as h:
        t = new_tenant_id()
        h.add_tenant(t, gateway_options={"lose_response_first": {f"ps:{t}:rv-1": 3}})
        outs = await a_transfer_made(h, t)
        parked = await h.processor.process(_reverse(t, 20_001, 2_000))
        assert outcome_of(h.settings, parked) is None
        rest = outcome_of(h.settings, await h.processor.process(_reverse(t, 20_002, None, "rv-2")))
        assert rest is not None and kind(rest) == "transfer.reversed", data(rest)
        outs.append(rest)
        redriven = outcome_of(h.settings, await h.processor.process(_reverse(t, 20_003, 2_000)))
        assert redriven is not None and kind(redriven) == "transfer.reversed", data(redriven)
        outs.append(redriven)
    assert data(outs[-2])["amount_reversed_now"] == 6_000  # (the lost part and the rest)
    assert data(outs[-1])["amount_reversed_now"] == 0
    assert h.tables.payments[f"{t}:p1"]["amount_transferred"] == 0
    events = [e for o in outs for e in outcome_to_ledger_events(o)]
    result = await write_events(app_engine, events, keyring=keyring)
    assert result.events_written == len(events), result
