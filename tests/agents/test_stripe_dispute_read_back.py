"""A Stripe dispute opens days after the charge: `payment.refresh` of the succeeded
payment (brought by the dispute's webhook, or sent by the tenant) records it, once, and
reads its later statuses forward, never back (Stripe through a fake HTTP transport)."""

from __future__ import annotations

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
    """What Stripe holds: the PaymentIntent, and the dispute of its charge (if any)."""

    def __init__(self) -> None:
        self.dispute: dict[str, Any] | None = None

    def open(self, status: str = "needs_response") -> None:
        self.dispute = {
            "id": "du_1", "object": "dispute", "amount": 2000, "currency": "usd",
            "charge": "ch_1", "payment_intent": "pi_123", "reason": "fraudulent",
            "status": status, "evidence_details": {"due_by": 1_900_000_000},
        }  # fmt: skip

    def answer(self, req: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        path = urlsplit(req["url"]).path
        if path == "/v1/disputes/du_1" and self.dispute is not None:  # evidence submitted
            self.dispute["status"] = "under_review"
            return 200, self.dispute
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
