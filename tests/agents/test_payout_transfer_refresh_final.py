"""payout.refresh of a payout already canceled or failed here, and transfer.refresh of a
transfer reversed entirely here (final): answered `payout.updated` / `transfer.updated`
from the record, without a provider read, never a second `payout.canceled`,
`payout.failed` or `transfer.reversed`, nothing counted again (the day's volume, the
payment's `amount_transferred`, analytics). What a Stripe webhook's sealed refresh meets
when the event (the echo of paystream's own payout.cancel, or of a transfer.reverse of
all of it) reached the endpoint before that command's outcome was recorded: the endpoint
read the payout or transfer as before and queued the refresh behind the command (a
tenant's commands run in order). It was refused `invalid_state`: a `command.rejected`
under the webhook's command id, which the tenant never sent (review h81rb F1, as
tests/agents/test_invoice_refresh_final.py for invoices)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from paystream.insights.observe import observe
from tests.agents.final_reads import assert_answered_from_the_record, provider_reads
from tests.agents.harness import Harness, data, kind
from tests.agents.test_payouts import DAY, _balance, _gateway, _payout_effects, _settled
from tests.agents.test_transfers import _account, _paid, _tr, _transfers

pytestmark = pytest.mark.asyncio
_CLOSED = "000111111113"  # Stripe's test account number: account_closed at arrival


def _volume(h: Harness, t: str) -> dict[str, Any]:
    return copy.deepcopy(dict(h.processor.limits.table[f"{t}:limits"].get("volume", {})))


async def test_the_echo_of_a_payout_cancel_is_read_from_the_record_not_refused(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness
    t = h.add_tenant(limits={"daily_payout_volume": {"EUR": 100_000}})
    await _settled(h, t, 5000)
    made = await h.send("payout.create", t, {"payout_id": "po1", "amount": 4000, "currency": "EUR"})
    assert kind(made) == "payout.created", data(made)
    canceled = await h.send("payout.cancel", t, {"payout_id": "po1"})
    assert kind(canceled) == "payout.canceled", data(canceled)
    volume, effects = _volume(h, t), await _payout_effects(h, t)
    reads = provider_reads(h, t, monkeypatch, "retrieve_payout")
    # The webhook's refresh (payout.canceled), queued while the payout read pending.
    echo = await h.send("payout.refresh", t, {"payout_id": "po1"})
    assert_answered_from_the_record(echo, "payout.updated", "canceled")
    assert "error" not in data(echo)
    assert reads == []  # (final: nothing the provider says moves it)
    assert h.tables.payouts[f"{t}:po1"]["status"] == "canceled"
    assert _volume(h, t) == volume and volume  # (the payout counted once, when made)
    assert await _payout_effects(h, t) == effects
    assert await _balance(h, t) == {"EUR": (5000, 0)}  # (its amount back once)
    facts = observe(echo)
    assert facts is None or not facts.payout_moves, facts
    # Still final: no second cancel.
    again = await h.send("payout.cancel", t, {"payout_id": "po1"})
    assert kind(again) == "command.rejected", data(again)


async def test_a_failed_payout_read_again_is_answered_from_its_record(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness
    t = h.add_tenant(gateway_options={"payout_destination": _CLOSED})
    await _settled(h, t, 5000)
    await h.send("payout.create", t, {"payout_id": "po1", "amount": 4000, "currency": "EUR"})
    await _gateway(h, t).advance_clock(2 * DAY)
    failed = await h.send("payout.refresh", t, {"payout_id": "po1"})
    assert kind(failed) == "payout.failed", data(failed)
    reads = provider_reads(h, t, monkeypatch, "retrieve_payout")
    for _ in range(2):
        again = await h.send("payout.refresh", t, {"payout_id": "po1"})
        assert_answered_from_the_record(again, "payout.updated", "failed")
        assert data(again)["object"]["failure_code"] == "account_closed"
        facts = observe(again)
        assert facts is None or not (facts.payout_moves or facts.payout_failure), facts
    assert reads == []
    assert await _balance(h, t) == {"EUR": (5000, 0)}
    assert [e.kind for e in await _payout_effects(h, t)] == ["payout.created", "payout.failed"]


async def test_a_paid_payout_is_still_read(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Paid is not final (a bank may return it): its refresh asks the provider."""
    h = harness
    t = h.add_tenant()
    await _settled(h, t, 5000)
    await h.send("payout.create", t, {"payout_id": "po1", "amount": 100, "currency": "EUR"})
    await _gateway(h, t).advance_clock(2 * DAY)
    assert kind(await h.send("payout.refresh", t, {"payout_id": "po1"})) == "payout.paid"
    reads = provider_reads(h, t, monkeypatch, "retrieve_payout")
    again = await h.send("payout.refresh", t, {"payout_id": "po1"})
    assert kind(again) == "payout.paid", data(again)
    assert len(reads) == 1


async def test_the_echo_of_a_whole_transfer_reverse_is_read_from_the_record_not_refused(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness
    t = h.add_tenant(limits={"daily_transfer_volume": {"USD": 100_000}})
    acct = await _account(h, t)
    pay = await _paid(h, t)
    made = await h.send("transfer.create", t, _tr(acct["id"], 6_000, payment_id=pay["id"]))
    assert kind(made) == "transfer.created", data(made)
    tid = data(made)["object"]["id"]
    whole = await h.send("transfer.reverse", t, {"transfer_id": tid})
    assert kind(whole) == "transfer.reversed", data(whole)
    assert data(whole)["object"]["status"] == "reversed"
    volume, moved = _volume(h, t), await _transfers(h, t)
    reads = provider_reads(h, t, monkeypatch, "retrieve_transfer")
    # The webhook's refresh (transfer.reversed), queued while the transfer read created.
    echo = await h.send("transfer.refresh", t, {"transfer_id": tid})
    assert_answered_from_the_record(echo, "transfer.updated", "reversed")
    assert data(echo)["object"]["amount_reversed"] == 6_000
    assert "related" not in data(echo) and "amount_reversed_now" not in data(echo)
    assert reads == []
    assert h.tables.payments[f"{t}:{pay['id']}"]["amount_transferred"] == 0
    assert _volume(h, t) == volume and volume
    assert (
        await _transfers(h, t)
        == moved
        == [
            ("transfer.created", 6_000),
            ("transfer.reversed", 6_000),
        ]
    )
    facts = observe(echo)
    assert facts is None or not facts.transfer_reversed, facts
    # Still final: nothing left to reverse.
    again = await h.send("transfer.reverse", t, {"transfer_id": tid})
    assert kind(again) == "command.rejected", data(again)
