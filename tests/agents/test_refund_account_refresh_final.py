"""refund.refresh of a refund already failed here, and connected_account.refresh of an
account already rejected here (final): answered from the record without a provider read,
`refund.failed` with previous_status failed (as an unchanged read's) and
`connected_account.updated` with previous_status rejected; the refund's amount is taken
off its payment once, and analytics count it failed once. What a Stripe webhook's sealed
refresh meets when Stripe sends several events for one move (refund.failed,
refund.updated and charge.refund.updated for one failure; account.updated more than once)
and all reach the endpoint while paystream still holds the refund pending (the account not
rejected): the endpoint queued a refresh for each, and the first read the move. The others
were refused `invalid_state`: a `command.rejected` under a webhook's command id, which the
tenant never sent (as tests/agents/test_payout_transfer_refresh_final.py for payouts)."""

from __future__ import annotations

from typing import Any

import pytest

from paystream.insights.observe import observe
from tests.agents.final_reads import assert_answered_from_the_record, provider_reads
from tests.agents.harness import Harness, data, kind, simulator_of
from tests.agents.test_connected_accounts import LINK, _account, _refresh

pytestmark = pytest.mark.asyncio


async def _failed_refund(h: Harness, t: str) -> Any:
    """A refund of 1500 on a 2000 payment, read back failed (its card closed)."""
    paid = await h.send(
        "payment.create",
        t,
        {"payment_id": "pay_f", "amount": 2000, "currency": "USD",
         "payment_method_token": "pm_card_refundFail"},
    )  # fmt: skip
    assert kind(paid) == "payment.succeeded", data(paid)
    made = await h.send(
        "refund.create", t, {"payment_id": "pay_f", "refund_id": "re_f", "amount": 1500}
    )
    assert kind(made) == "refund.succeeded", data(made)
    failed = await h.send("refund.refresh", t, {"refund_id": "re_f"})
    assert kind(failed) == "refund.failed", data(failed)
    assert data(failed)["previous_status"] == "succeeded"
    return failed


async def test_a_failed_refund_read_again_is_answered_from_its_record(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness
    t = h.add_tenant()
    await _failed_refund(h, t)
    # Refundable again: a new refund counts 2000 refunded, which must stay counted.
    again = await h.send("refund.create", t, {"payment_id": "pay_f", "refund_id": "re_g"})
    assert kind(again) == "refund.succeeded", data(again)
    assert h.tables.payments[f"{t}:pay_f"]["amount_refunded"] == 2000
    effects = [(e.kind, e.amount) for e in await simulator_of(h, t).effects()]
    reads = provider_reads(h, t, monkeypatch, "retrieve_refund")
    # The webhooks' refreshes (refund.updated, charge.refund.updated), queued while pending.
    for _ in range(2):
        echo = await h.send("refund.refresh", t, {"refund_id": "re_f"})
        assert_answered_from_the_record(echo, "refund.failed", "failed")
        assert data(echo)["object"]["failure_code"] == "expired_or_canceled_card"
        assert "related" not in data(echo) and "error" not in data(echo)
        facts = observe(echo)
        assert facts is None or (facts.refunded, facts.refunds_failed) == (0, 0), facts
    assert reads == []  # (final: nothing the provider says moves it)
    assert h.tables.payments[f"{t}:pay_f"]["amount_refunded"] == 2000  # (taken off once)
    assert h.tables.refunds[f"{t}:re_f"]["status"] == "failed"
    assert [(e.kind, e.amount) for e in await simulator_of(h, t).effects()] == effects


async def test_a_pending_refund_is_still_read(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Succeeded and pending are not final (a succeeded refund can still fail at Stripe):
    their refresh asks the provider."""
    h = harness
    t = h.add_tenant()
    paid = await h.send(
        "payment.create",
        t,
        {"payment_id": "pay_p", "amount": 2000, "currency": "USD",
         "payment_method_token": "pm_card_pendingRefund"},
    )  # fmt: skip
    assert kind(paid) == "payment.succeeded", data(paid)
    made = await h.send("refund.create", t, {"payment_id": "pay_p", "refund_id": "re_p"})
    assert kind(made) == "refund.pending", data(made)
    reads = provider_reads(h, t, monkeypatch, "retrieve_refund")
    settled = await h.send("refund.refresh", t, {"refund_id": "re_p"})
    assert kind(settled) == "refund.succeeded", data(settled)
    again = await h.send("refund.refresh", t, {"refund_id": "re_p"})
    assert kind(again) == "refund.succeeded", data(again)
    assert len(reads) == 2


async def test_a_rejected_account_read_again_is_answered_from_its_record(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness
    t = h.add_tenant()
    acct = await _account(h, t, email="x+rejected@example.com")
    await h.send(
        "connected_account.onboarding_link", t, {"connected_account_id": acct["id"], **LINK}
    )
    rejected = await _refresh(h, t, acct["id"])
    assert kind(rejected) == "connected_account.updated", data(rejected)
    assert (data(rejected)["previous_status"], data(rejected)["object"]["status"]) == (
        "pending",
        "rejected",
    )
    held = dict(h.tables.connected_accounts[f"{t}:{acct['id']}"])
    reads = provider_reads(h, t, monkeypatch, "retrieve_connected_account")
    # The webhooks' refreshes (account.updated more than once), queued while pending.
    for _ in range(2):
        echo = await _refresh(h, t, acct["id"])
        assert_answered_from_the_record(echo, "connected_account.updated", "rejected")
        obj = data(echo)["object"]
        assert obj["disabled_reason"] == held["disabled_reason"] and obj["disabled_reason"]
        assert (obj["charges_enabled"], obj["payouts_enabled"]) == (False, False)
    assert reads == []
    now = h.tables.connected_accounts[f"{t}:{acct['id']}"]
    fields = ("status", "charges_enabled", "payouts_enabled", "details_submitted",
              "currently_due", "disabled_reason")  # fmt: skip
    assert [now[f] for f in fields] == [held[f] for f in fields]
    # Still final: it cannot be onboarded again.
    out = await h.send(
        "connected_account.onboarding_link", t, {"connected_account_id": acct["id"], **LINK}
    )
    assert kind(out) == "command.rejected", data(out)
