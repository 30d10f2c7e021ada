"""A Stripe dispute opens days after the charge: `payment.refresh` of the succeeded
payment (brought by the dispute's webhook, or sent by the tenant) records it, once, and
reads its later statuses forward, never back, but for a new response window (a later
evidence deadline: an inquiry escalated to a chargeback, a decision appealed), which the
tenant can answer again. A new dispute on the charge after a decided one is recorded
as a second dispute; one while the recorded dispute is open is logged, and the recorded
one is still read back from its own entry, its decision then recording the new one
(Stripe through a fake HTTP transport)."""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import pytest

from paystream import metrics
from paystream.client import build_command
from paystream.ids import derived_id
from tests.agents.harness import Harness, data, kind
from tests.agents.test_provider_changed import _harness
from tests.gateways.stripe.test_stripe_transport import PI, FakeStripe

pytestmark = pytest.mark.asyncio

_PAY = {"payment_id": "p1", "amount": 2000, "currency": "USD", "payment_method_token": "pm_x"}


class _Account:
    """What Stripe holds: the PaymentIntent, and the dispute of its charge (if any).
    Evidence submitted makes the dispute ``answered`` (an inquiry's:
    warning_under_review); a refund of its charge is refused while it is disputed (or
    was: ``charge_disputed``), and counted as asked."""

    def __init__(self, answered: str = "under_review") -> None:
        self.dispute: dict[str, Any] | None = None
        self.answered = answered
        self.older: list[dict[str, Any]] = []  # (the charge's disputes before this one)
        self.refunds = 0  # (refunds asked of Stripe)

    def another(self, status: str = "needs_response") -> None:
        """The issuer files a new dispute (du_2) on the charge: Stripe lists it first."""
        assert self.dispute is not None
        self.older = [self.dispute, *self.older]
        self.dispute = {**self.dispute, "id": "du_2", "status": status,
                        "evidence_details": {"due_by": NEW_DUE_BY}}  # fmt: skip

    def open(self, status: str = "needs_response") -> None:
        self.dispute = {
            "id": "du_1", "object": "dispute", "amount": 2000, "currency": "usd",
            "charge": "ch_1", "payment_intent": "pi_123", "reason": "fraudulent",
            "status": status, "evidence_details": {"due_by": 1_900_000_000},
        }  # fmt: skip

    def answer(self, req: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        path = urlsplit(req["url"]).path
        if self.dispute is not None and path == f"/v1/disputes/{self.dispute['id']}":
            # (evidence submitted)
            self.dispute["status"] = self.answered
            return 200, self.dispute
        if path == "/v1/refunds":
            self.refunds += 1
            # (Stripe's answer for a disputed charge's refund)
            refused = {"type": "invalid_request_error", "code": "charge_disputed"}
            return 400, {"error": {**refused, "message": "Charge ch_1 has been disputed"}}
        if path == "/v1/disputes":  # (newest first)
            listed = ([] if self.dispute is None else [self.dispute]) + self.older
            return 200, {"object": "list", "data": listed, "has_more": False}
        charge = {**PI["latest_charge"], "disputed": self.dispute is not None}  # type: ignore[dict-item]
        return 200, {**PI, "latest_charge": charge}


@contextlib.asynccontextmanager
async def _paid(account: _Account) -> AsyncIterator[tuple[Harness, str]]:
    """A Stripe tenant (Stripe being ``account``) whose payment p1 succeeded, undisputed."""
    h = _harness(None, FakeStripe(account.answer))
    try:
        t = h.add_tenant(gateway="stripe")
        paid = await h.send("payment.create", t, _PAY)
        assert kind(paid) == "payment.succeeded" and not data(paid).get("related"), data(paid)
        yield h, t
    finally:
        await h.pool.aclose()


async def test_a_dispute_opened_after_the_charge_is_recorded_once_by_a_refresh() -> None:
    account = _Account()
    async with _paid(account) as (h, t):
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


async def test_a_redelivered_refresh_records_the_dispute_once() -> None:
    account = _Account()
    async with _paid(account) as (h, t):
        account.open()
        command = build_command("payment.refresh", t, {"payment_id": "p1"})
        await h.assert_redelivered_alike(command)
        assert len([k for k in h.tables.disputes if k.startswith(f"{t}:")]) == 1


async def test_a_recorded_dispute_moves_forward_never_back() -> None:
    account = _Account()
    async with _paid(account) as (h, t):
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
    async with _paid(account) as (h, t):
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


async def test_a_lost_dispute_reopened_by_an_appeal_is_open_again_until_decided() -> None:
    """A lost dispute the card network's appeal reopens (appeal_needs_response, a new
    deadline) is open again: the merchant can answer it, and a refund is no longer
    refused as charged back by paystream (Stripe refuses it while the dispute is open);
    decided lost again, it is refused as charged back again (review h72c: a decided
    dispute was never read back)."""
    account = _Account()
    async with _paid(account) as (h, t):
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


async def test_a_read_with_an_earlier_deadline_never_reopens_a_dispute() -> None:
    """Only a later deadline is a new window: a read naming needs_response with the
    deadline held, or an earlier one, leaves the merchant's answer recorded."""
    account = _Account()
    async with _paid(account) as (h, t):
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


@contextlib.asynccontextmanager
async def _decided(account: _Account, decided_as: str) -> AsyncIterator[tuple[Harness, str, str]]:
    """p1 paid, disputed (du_1), and that dispute decided at Stripe as ``decided_as``
    and read back so; with its dispute id."""
    async with _paid(account) as (h, t):
        account.open(
            "warning_needs_response" if decided_as == "warning_closed" else "needs_response"
        )
        found = await h.send("payment.refresh", t, {"payment_id": "p1"})
        first = data(found)["related"][0]["entity_id"]
        assert account.dispute is not None
        account.dispute["status"] = decided_as
        await h.send("payment.refresh", t, {"payment_id": "p1"})
        yield h, t, first


@pytest.mark.parametrize(
    ("decided_as", "held"),
    [("warning_closed", "inquiry_closed"), ("won", "won"), ("lost", "lost")],
)
async def test_a_new_dispute_after_a_decided_one_is_recorded_and_can_be_answered(
    decided_as: str, held: str
) -> None:
    """An inquiry closes (or a dispute is decided); the cardholder's bank then files a
    chargeback that Stripe lists as a new dispute (du_2) on the same charge. The merchant
    gets it as it got the first: in `related` of the refresh's `payment.succeeded`, a
    dispute of its own (another `dp_` id, which the payment's `dispute_id` names from
    then on), open and answerable before its deadline; the first stays recorded as
    decided. Stripe's later events about du_2 record nothing twice (review h72e: du_2
    was never recorded nor logged: funds withdrawn, nothing to answer with, lost by
    default)."""
    account = _Account()
    async with _decided(account, decided_as) as (h, t, first):
        assert _dispute(h, t, first)["status"] == held
        account.another()
        read = await h.send("payment.refresh", t, {"payment_id": "p1"})
        assert kind(read) == "payment.succeeded", data(read)
        [second] = data(read)["related"]
        obj = second["object"]
        assert second["entity_id"] != first
        assert (obj["provider_dispute_id"], obj["status"], obj["payment_id"]) == (
            "du_2",
            "needs_response",
            "p1",
        )
        assert datetime.fromisoformat(obj["evidence_due_by"]).timestamp() == NEW_DUE_BY
        assert data(read)["object"]["dispute_id"] == second["entity_id"]
        assert h.tables.payments[f"{t}:p1"]["dispute_id"] == second["entity_id"]
        assert (_dispute(h, t, first)["status"], _dispute(h, t, first)["provider_dispute_id"]) == (
            held,
            "du_1",
        )
        # Stripe's next events about du_2 (funds_withdrawn, ...): no third dispute.
        again = await h.send("payment.refresh", t, {"payment_id": "p1"})
        assert not data(again).get("related"), data(again)
        assert sorted(k for k in h.tables.disputes if k.startswith(f"{t}:")) == sorted(
            [f"{t}:{first}", f"{t}:{second['entity_id']}"]
        )
        evidence = {"uncategorized_text": "proof of delivery"}
        answer = await h.send(
            "dispute.submit_evidence", t, {"dispute_id": second["entity_id"], "evidence": evidence}
        )
        assert kind(answer) == "dispute.evidence_submitted", data(answer)
        # and it moves on as the first did
        account.dispute["status"] = "won"  # type: ignore[index]
        await h.send("payment.refresh", t, {"payment_id": "p1"})
        assert _dispute(h, t, second["entity_id"])["status"] == "won"
        assert _dispute(h, t, first)["status"] == held


async def test_a_new_dispute_recorded_before_a_crash_is_recorded_once() -> None:
    """The refresh that recorded du_2 crashed with only the dispute's write kept (its
    idempotency record and its payment's write lost). Delivered again, it is answered as
    it was, and the payment is repaired to name du_2's record: the merchant sees one
    second dispute, not two."""
    account = _Account()
    async with _decided(account, "warning_closed") as (h, t, first):
        account.another()
        payments_before = copy.deepcopy(dict(h.tables.payments))
        idempotency_before = set(h.idempotency)
        command = build_command("payment.refresh", t, {"payment_id": "p1"}, command_id="c-du2")
        _, out = await h.send_event(command)
        assert out is not None
        [second] = data(out)["related"]
        for key in set(h.idempotency) - idempotency_before:
            del h.idempotency[key]
        h.tables.payments.clear()
        h.tables.payments.update(payments_before)  # (the payment's write lost)
        _, again = await h.send_event(command)
        assert again is not None
        assert (kind(again), data(again)) == (kind(out), data(out))
        assert h.tables.payments[f"{t}:p1"]["dispute_id"] == second["entity_id"]
        assert len([k for k in h.tables.disputes if k.startswith(f"{t}:")]) == 2
        assert _dispute(h, t, first)["status"] == "inquiry_closed"
        later = await h.send("payment.refresh", t, {"payment_id": "p1"})
        assert not data(later).get("related"), data(later)
        assert len([k for k in h.tables.disputes if k.startswith(f"{t}:")]) == 2


async def test_a_new_dispute_while_the_recorded_one_is_open_is_logged_not_recorded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Stripe lists another dispute (du_2) while du_1, recorded here, is still open: the
    merchant answers du_1 through paystream; du_2 is not recorded, and the operator reads
    a WARNING naming the tenant, the payment and both Stripe dispute ids (ids only),
    saying to answer du_2 in Stripe's dashboard; once a minute per payment. Each refresh
    that reads it is counted (PaystreamDisputeUnrecorded: the log alone raised no alert,
    h72l)."""
    account = _Account()
    async with _paid(account) as (h, t):
        account.open()
        found = await h.send("payment.refresh", t, {"payment_id": "p1"})
        first = data(found)["related"][0]["entity_id"]
        account.another()
        unrecorded = _unrecorded(t, "recorded_open")
        with caplog.at_level(logging.WARNING):
            for _ in range(3):  # (and Stripe's next events about it)
                read = await h.send("payment.refresh", t, {"payment_id": "p1"})
                assert kind(read) == "payment.succeeded", data(read)
                assert not data(read).get("related"), data(read)
        lines = [r.getMessage() for r in caplog.records if "du_2" in r.getMessage()]
        assert len(lines) == 1, lines
        [line] = lines
        for named in (t, "p1", "du_1", "du_2", "stripe dashboard"):
            assert named in line, (named, line)
        assert "2000" not in line and "fraudulent" not in line  # (ids, nothing more)
        assert h.tables.payments[f"{t}:p1"]["dispute_id"] == first
        assert [k for k in h.tables.disputes if k.startswith(f"{t}:")] == [f"{t}:{first}"]
        assert _dispute(h, t, first)["status"] == "needs_response"
        assert _unrecorded(t, "recorded_open") == unrecorded + 3


def _unrecorded(tenant: str, why: str) -> float:
    return metrics.DISPUTES_UNRECORDED.labels("stripe", tenant, why)._value.get()


async def test_the_recorded_dispute_is_still_read_once_a_newer_one_is_filed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """du_1 is recorded and open; the issuer files du_2 while it is (Stripe lists du_2
    first): du_2 is logged to be answered in Stripe's dashboard, not recorded. du_1 is
    still read from its own entry: answered in Stripe's dashboard it comes back
    under_review, and once decided (lost) the merchant gets, in the same refresh's
    `related`, du_1 lost and du_2 recorded as the payment's dispute, open and
    answerable; a refund is then not refused by paystream as charged back but asked of
    Stripe, whose refusal is answered `invalid_state` (review h72g F1: du_1 stayed
    needs_response for good, its `lost` never read, and du_2 never recorded)."""
    account = _Account()
    async with _paid(account) as (h, t):
        account.open()
        found = await h.send("payment.refresh", t, {"payment_id": "p1"})
        first = data(found)["related"][0]["entity_id"]
        account.another()  # du_2 filed while du_1 is open
        with caplog.at_level(logging.WARNING):
            logged = await h.send("payment.refresh", t, {"payment_id": "p1"})
        assert not data(logged).get("related"), data(logged)
        assert any("du_2" in r.getMessage() for r in caplog.records)

        account.older[0]["status"] = "under_review"  # du_1 answered in Stripe's dashboard
        read = await h.send("payment.refresh", t, {"payment_id": "p1"})
        [moved] = data(read)["related"]
        assert (moved["entity_id"], moved["object"]["status"]) == (first, "under_review")
        assert h.tables.payments[f"{t}:p1"]["dispute_id"] == first

        account.older[0]["status"] = "lost"  # du_1 decided at Stripe
        decided = await h.send("payment.refresh", t, {"payment_id": "p1"})
        assert kind(decided) == "payment.succeeded", data(decided)
        related = {r["object"]["provider_dispute_id"]: r for r in data(decided)["related"]}
        assert sorted(related) == ["du_1", "du_2"], data(decided)
        assert related["du_1"]["entity_id"] == first
        assert related["du_1"]["object"]["status"] == "lost"
        second = related["du_2"]["entity_id"]
        assert second != first and related["du_2"]["object"]["status"] == "needs_response"
        assert data(decided)["object"]["dispute_id"] == second
        assert h.tables.payments[f"{t}:p1"]["dispute_id"] == second
        assert _dispute(h, t, first)["status"] == "lost"
        # Stripe's next events: nothing recorded twice.
        again = await h.send("payment.refresh", t, {"payment_id": "p1"})
        assert not data(again).get("related"), data(again)
        assert len([k for k in h.tables.disputes if k.startswith(f"{t}:")]) == 2
        evidence = {"uncategorized_text": "proof of delivery"}
        answer = await h.send(
            "dispute.submit_evidence", t, {"dispute_id": second, "evidence": evidence}
        )
        assert kind(answer) == "dispute.evidence_submitted", data(answer)


async def test_a_new_dispute_whose_both_ids_are_taken_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A refresh under a command id reused past the window twice before (an order-id
    style producer: on another payment, then on this one), both dispute ids it may
    record du_2 under taken: du_2 is not recorded, and the operator reads a WARNING
    naming the tenant, the payment, both Stripe dispute ids and the command (ids only),
    saying to answer du_2 in Stripe's dashboard (review h72g F2: neither recorded nor
    logged), and it is counted (PaystreamDisputeUnrecorded, h72l)."""
    account = _Account()
    async with _decided(account, "won") as (h, t, first):
        account.another()
        command = build_command("payment.refresh", t, {"payment_id": "p1"}, command_id="o-7")
        # (o-7's first use raised p0's dispute; its second, past the window, p1's under
        # the id derived with p1: both decided long ago)
        for taken, payment in ((derived_id("dp", t, "o-7"), "p0"),
                               (derived_id("dp", t, "o-7", "p1"), "p1")):  # fmt: skip
            held: dict[str, Any] = {**_dispute(h, t, first), "id": taken, "applied": {}}
            held["payment_id"] = payment
            h.tables.disputes[f"{t}:{taken}"] = held
        unrecorded = _unrecorded(t, "ids_taken")
        with caplog.at_level(logging.WARNING):
            _, out = await h.send_event(command)
        assert out is not None and kind(out) == "payment.succeeded", out
        assert not data(out).get("related"), data(out)
        lines = [r.getMessage() for r in caplog.records if "du_2" in r.getMessage()]
        assert len(lines) == 1, lines
        [line] = lines
        for named in (t, "p1", "du_1", "du_2", first, "o-7", "stripe dashboard"):
            assert named in line, (named, line)
        assert "2000" not in line and "fraudulent" not in line  # (ids, nothing more)
        assert h.tables.payments[f"{t}:p1"]["dispute_id"] == first
        assert _unrecorded(t, "ids_taken") == unrecorded + 1


async def test_a_refund_after_a_lost_dispute_and_a_decided_second_one_is_stripes_to_refuse() -> (
    None
):
    """du_1 lost (the cardholder has the money back); the issuer files du_2, which the
    merchant wins. The payment's dispute is du_2 now, so paystream no longer refuses a
    refund as charged back: `refund.create` is asked of Stripe, and Stripe's refusal
    (`charge_disputed`) is answered `command.rejected` with reason `invalid_state` and
    Stripe's message, nothing refunded nor booked (what docs/stripe.md says; review
    h72g F3)."""
    account = _Account()
    async with _decided(account, "lost") as (h, t, first):
        refused_here = await h.send("refund.create", t, {"payment_id": "p1"})
        assert "charged back" in data(refused_here)["message"], data(refused_here)
        assert account.refunds == 0  # (paystream's own rule: Stripe not asked)
        account.another()
        await h.send("payment.refresh", t, {"payment_id": "p1"})
        account.dispute["status"] = "won"  # type: ignore[index]
        await h.send("payment.refresh", t, {"payment_id": "p1"})
        assert _dispute(h, t, first)["status"] == "lost"
        second = h.tables.payments[f"{t}:p1"]["dispute_id"]
        assert second != first and _dispute(h, t, second)["status"] == "won"

        refused = await h.send("refund.create", t, {"payment_id": "p1"})
        assert kind(refused) == "command.rejected", data(refused)
        assert (data(refused)["reason"], data(refused)["message"]) == (
            "invalid_state",
            "Charge ch_1 has been disputed",
        )
        assert account.refunds == 1  # (asked of Stripe)
        assert h.tables.payments[f"{t}:p1"]["amount_refunded"] == 0
        assert not [k for k in h.tables.refunds if k.startswith(f"{t}:")]
