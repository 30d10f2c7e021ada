"""A Stripe dispute opens days after the charge: `payment.refresh` of the succeeded
payment (brought by the dispute's webhook, or sent by the tenant) records it, once, and
reads its later statuses forward, never back, but for a new response window (a later
evidence deadline: an inquiry escalated to a chargeback, a decision appealed), which the
tenant can answer again (Stripe through a fake HTTP transport)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import pytest

from paystream.client import build_command
from tests.agents.harness import Harness, data, kind
from tests.agents.test_provider_changed import _harness
from tests.gateways.stripe.test_stripe_transport import PI, FakeStripe

pytestmark = pytest.mark.asyncio

_PAY = {"payment_id": "p1", "amount": 2000, "currency": "USD", "payment_method_token": "pm_x"}


class _Account:
    """What Stripe holds: the PaymentIntent, and the dispute of its charge (if any).
    Evidence submitted makes the dispute ``answered`` (an inquiry's:
    warning_under_review); a refund of its charge is refused while it is disputed."""

    def __init__(self, answered: str = "under_review") -> None:
        self.dispute: dict[str, Any] | None = None
        self.answered = answered

    def open(self, status: str = "needs_response") -> None:
        self.dispute = {
            "id": "du_1", "object": "dispute", "amount": 2000, "currency": "usd",
            "charge": "ch_1", "payment_intent": "pi_123", "reason": "fraudulent",
            "status": status, "evidence_details": {"due_by": 1_900_000_000},
        }  # fmt: skip

    def answer(self, req: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        path = urlsplit(req["url"]).path
        if path == "/v1/disputes/du_1" and self.dispute is not None:  # evidence submitted
            self.dispute["status"] = self.answered
            return 200, self.dispute
        if path == "/v1/refunds":
            # (Stripe's answer for a disputed charge's refund)
            refused = {"type": "invalid_request_error", "code": "charge_disputed"}
            return 400, {"error": {**refused, "message": "Charge ch_1 has been disputed"}}
        if path == "/v1/disputes":
            listed = [] if self.dispute is None else [self.dispute]
            return 200, {"object": "list", "data": listed, "has_more": False}
        charge = {**PI["latest_charge"], "disputed": self.dispute is not None}  # type: ignore[dict-item]
        return 200, {**PI, "latest_charge": charge}


async def _paid(account: _Account) -> tuple[Harness, str]:
    h = _harness(None, FakeStripe(account.answer))
    t = h.add_tenant(gateway="stripe")
    paid = await h.send("payment.create", t, _PAY)
    assert kind(paid) == "payment.succeeded" and not data(paid).get("related"), data(paid)
    return h, t


async def test_a_dispute_opened_after_the_charge_is_recorded_once_by_a_refresh() -> None:
    account = _Account()
    h, t = await _paid(account)
    try:
        # Not disputed yet: the read is answered (no longer refused invalid_state).
        calm = await h.send("payment.refresh", t, {"payment_id": "p1"})
        assert kind(calm) == "payment.succeeded", data(calm)
        assert data(calm)["previous_status"] == "succeeded" and not data(calm).get("related")

        account.open()
        found = await h.send("payment.refresh", t, {"payment_id": "p1"})
        assert kind(found) == "payment.succeeded", data(found)
        [dispute] = data(found)["related"]
        obj = dispute["object"]
        assert (obj["provider_dispute_id"], obj["status"], obj["payment_id"]) == (
            "du_1",
            "needs_response",
            "p1",
        )
        assert h.tables.payments[f"{t}:p1"]["dispute_id"] == dispute["entity_id"]
        # Stripe's next event about it (funds_withdrawn), and the first one sent again
        # under another command: no second dispute.
        for _ in range(2):
            again = await h.send("payment.refresh", t, {"payment_id": "p1"})
            assert kind(again) == "payment.succeeded" and not data(again).get("related")
        assert [k for k in h.tables.disputes if k.startswith(f"{t}:")] == [
            f"{t}:{dispute['entity_id']}"
        ]
        # The tenant can answer it now.
        answered = await h.send(
            "dispute.submit_evidence",
            t,
            {"dispute_id": dispute["entity_id"], "evidence": {"uncategorized_text": "sent"}},
        )
        assert kind(answered) == "dispute.evidence_submitted", data(answered)
    finally:
        await h.pool.aclose()


async def test_a_redelivered_refresh_records_the_dispute_once() -> None:
    account = _Account()
    h, t = await _paid(account)
    try:
        account.open()
        command = build_command("payment.refresh", t, {"payment_id": "p1"})
        await h.assert_redelivered_alike(command)
        assert len([k for k in h.tables.disputes if k.startswith(f"{t}:")]) == 1
    finally:
        await h.pool.aclose()


async def test_a_recorded_dispute_moves_forward_never_back() -> None:
    account = _Account()
    h, t = await _paid(account)
    try:
        account.open()
        found = await h.send("payment.refresh", t, {"payment_id": "p1"})
        key = f"{t}:{data(found)['related'][0]['entity_id']}"
        assert account.dispute is not None
        steps = [
            ("under_review", "under_review"),
            ("needs_response", "under_review"),  # (an older answer: never back)
            ("won", "won"),
            ("lost", "won"),  # (decided: a read may not go back on it)
        ]
        for at_stripe, held in steps:
            account.dispute["status"] = at_stripe
            read = await h.send("payment.refresh", t, {"payment_id": "p1"})
            assert kind(read) == "payment.succeeded", (at_stripe, data(read))
            assert h.tables.disputes[key]["status"] == held, at_stripe
    finally:
        await h.pool.aclose()


NEW_DUE_BY = 1_950_000_000  # (later than _Account.open's: a new response window)


def _dispute(h: Harness, t: str, dispute_id: str) -> dict[str, Any]:
    return dict(h.tables.disputes[f"{t}:{dispute_id}"])


async def test_an_answered_inquiry_escalated_to_a_chargeback_can_be_answered_again() -> None:
    """An inquiry (Amex's, Discover's) the merchant answered is under review; the issuer,
    not satisfied, escalates it to a chargeback: needs_response at Stripe, the funds
    withdrawn and a new deadline. The merchant sees it open again, with that deadline,
    and can answer it (review h72c: it stayed under_review, every answer refused
    invalid_state, and the chargeback was lost unanswered)."""
    account = _Account(answered="warning_under_review")
    h, t = await _paid(account)
    try:
        account.open("warning_needs_response")
        found = await h.send("payment.refresh", t, {"payment_id": "p1"})
        dispute_id = data(found)["related"][0]["entity_id"]
        evidence = {"uncategorized_text": "delivered"}
        answered = await h.send(
            "dispute.submit_evidence", t, {"dispute_id": dispute_id, "evidence": evidence}
        )
        assert data(answered)["object"]["status"] == "under_review", data(answered)
        assert account.dispute is not None
        account.dispute["status"] = "needs_response"  # escalated: a chargeback
        account.dispute["evidence_details"] = {"due_by": NEW_DUE_BY}

        read = await h.send("payment.refresh", t, {"payment_id": "p1"})
        assert kind(read) == "payment.succeeded", data(read)
        [reopened] = data(read)["related"]
        assert reopened["object"]["status"] == "needs_response", reopened
        held = _dispute(h, t, dispute_id)
        assert (held["status"], held["evidence_submitted"]) == ("needs_response", False)
        assert datetime.fromisoformat(held["evidence_due_by"]).timestamp() == NEW_DUE_BY
        # Read again (Stripe's funds_withdrawn event): no news.
        again = await h.send("payment.refresh", t, {"payment_id": "p1"})
        assert not data(again).get("related"), data(again)

        evidence = {"uncategorized_text": "proof of delivery"}
        answer = await h.send(
            "dispute.submit_evidence", t, {"dispute_id": dispute_id, "evidence": evidence}
        )
        assert kind(answer) == "dispute.evidence_submitted", data(answer)
    finally:
        await h.pool.aclose()


async def test_a_lost_dispute_reopened_by_an_appeal_is_open_again_until_decided() -> None:
    """A lost dispute the card network's appeal reopens (appeal_needs_response, a new
    deadline) is open again: the merchant can answer it, and a refund is no longer
    refused as charged back by paystream (Stripe refuses it while the dispute is open);
    decided lost again, it is refused as charged back again (review h72c: a decided
    dispute was never read back)."""
    account = _Account()
    h, t = await _paid(account)
    try:
        account.open()
        found = await h.send("payment.refresh", t, {"payment_id": "p1"})
        dispute_id = data(found)["related"][0]["entity_id"]
        assert account.dispute is not None
        account.dispute["status"] = "lost"
        await h.send("payment.refresh", t, {"payment_id": "p1"})
        assert _dispute(h, t, dispute_id)["status"] == "lost"
        refund = await h.send("refund.create", t, {"payment_id": "p1"})
        assert "charged back" in data(refund)["message"], data(refund)

        account.dispute["status"] = "appeal_needs_response"
        account.dispute["evidence_details"] = {"due_by": NEW_DUE_BY}
        await h.send("payment.refresh", t, {"payment_id": "p1"})
        assert _dispute(h, t, dispute_id)["status"] == "needs_response"
        refund = await h.send("refund.create", t, {"payment_id": "p1"})
        assert kind(refund) == "command.rejected", data(refund)
        assert data(refund)["reason"] == "invalid_state", data(refund)
        assert "charged back" not in data(refund)["message"], data(refund)  # (Stripe's)

        evidence = {"uncategorized_text": "proof of delivery"}
        answer = await h.send(
            "dispute.submit_evidence", t, {"dispute_id": dispute_id, "evidence": evidence}
        )
        assert kind(answer) == "dispute.evidence_submitted", data(answer)
        account.dispute["status"] = "lost"  # (the appeal decided: Stripe keeps its deadline)
        await h.send("payment.refresh", t, {"payment_id": "p1"})
        assert _dispute(h, t, dispute_id)["status"] == "lost"
        refund = await h.send("refund.create", t, {"payment_id": "p1"})
        assert "charged back" in data(refund)["message"], data(refund)
    finally:
        await h.pool.aclose()


async def test_a_read_with_an_earlier_deadline_never_reopens_a_dispute() -> None:
    """Only a later deadline is a new window: a read naming needs_response with the
    deadline held, or an earlier one, leaves the merchant's answer recorded."""
    account = _Account()
    h, t = await _paid(account)
    try:
        account.open()
        found = await h.send("payment.refresh", t, {"payment_id": "p1"})
        dispute_id = data(found)["related"][0]["entity_id"]
        evidence = {"uncategorized_text": "delivered"}
        await h.send("dispute.submit_evidence", t, {"dispute_id": dispute_id, "evidence": evidence})
        assert account.dispute is not None
        for due_by in (1_900_000_000, 1_800_000_000):
            account.dispute["status"] = "needs_response"
            account.dispute["evidence_details"] = {"due_by": due_by}
            read = await h.send("payment.refresh", t, {"payment_id": "p1"})
            assert not data(read).get("related"), (due_by, data(read))
            held = _dispute(h, t, dispute_id)
            assert (held["status"], held["evidence_submitted"]) == ("under_review", True)
    finally:
        await h.pool.aclose()
