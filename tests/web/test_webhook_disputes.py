"""A Stripe dispute's event (``charge.dispute.*``) at the webhook view: its PaymentIntent
read from Stripe names the payment, and the event is refreshed unless the payment's
dispute is recorded here as the event has it. In process, as test_webhook_lookups.py
(the view alone: its registry, owner lookup and produce faked; Stripe's PaymentIntent
read faked through GatewayPool). tests/e2e/test_stripe_webhooks.py has them end to end.

That read is made in the web server (review h72c): bounded in number, time and pace, and
never made for a suspended tenant; past a bound the event is answered 503 and Stripe
sends it again."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import TypeAdapter

import paystream.web.webhooks as wh
from paystream import metrics
from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.log_limits import ThrottledLog
from paystream.tenancy.crypto import CryptoError
from paystream.tenancy.limits import TenantLimits
from paystream.tenancy.models import Tenant, TenantStatus
from tests.web.test_webhook_lookups import TENANT, _post, seen  # noqa: F401 (fixture)

pytestmark = pytest.mark.asyncio

DUE_BY = 1_900_000_000  # the dispute's evidence deadline as recorded here
NEW_DUE_BY = 1_950_000_000  # a new response window's


def dispute_event(
    event_id: str,
    status: str,
    kind: str = "charge.dispute.updated",
    *,
    due_by: int | None = DUE_BY,
    payment_intent: str = "pi_1",
) -> bytes:
    """A Stripe event about dispute du_1 of TENANT's payment pay_1 (PaymentIntent pi_1)."""
    obj: dict[str, Any] = {
        "id": "du_1", "object": "dispute", "payment_intent": payment_intent, "charge": "ch_1",
        "status": status, "amount": 2000, "currency": "usd",
        "evidence_details": {"due_by": due_by},
    }  # fmt: skip
    event = {"id": event_id, "type": kind, "created": int(time.time()), "data": {"object": obj}}
    return json.dumps(event).encode()


class _Stripe:
    """The tenant's Stripe account as the view reads it (read_payment_intent), and the
    clients the view opened to read it."""

    def __init__(self) -> None:
        self.reads = 0
        self.in_flight = 0
        self.opened = self.closed = 0
        self.payment_intent: dict[str, Any] = {
            "id": "pi_1", "object": "payment_intent", "status": "succeeded",
            "metadata": {"paystream_payment": f"{TENANT}:pay_1"},
        }  # fmt: skip
        self.failure: GatewayError | None = None
        self.release = asyncio.Event()  # cleared: reads wait until it is set
        self.release.set()
        self.over: asyncio.Event | None = None  # set once more than `most` are in flight
        self.most = 0

    async def read_payment_intent(self, provider_payment_id: str) -> dict[str, Any]:
        self.reads += 1
        self.in_flight += 1
        if self.over is not None and self.in_flight > self.most:
            self.over.set()
        try:
            await self.release.wait()
            if self.failure is not None:
                raise self.failure
            return {**self.payment_intent, "id": provider_payment_id}
        finally:
            self.in_flight -= 1


@pytest.fixture
def stripe_account(
    seen: SimpleNamespace,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[_Stripe]:
    account = _Stripe()

    class Pool:
        def __init__(self, deps: Any, open_secret: Any = None) -> None:
            account.opened += 1

        def get(self, tenant: Tenant) -> _Stripe:
            return account

        async def aclose(self) -> None:
            account.closed += 1

    monkeypatch.setattr(wh, "GatewayPool", Pool)
    monkeypatch.setattr(wh, "GatewayDeps", lambda settings: None)
    monkeypatch.setattr(wh, "_opener", lambda: None)
    monkeypatch.setattr(wh, "_throttled", ThrottledLog(wh.log))  # (a fresh throttle)
    monkeypatch.setattr(wh, "_dispute_read_pace", wh._Budget(), raising=False)
    yield account
    account.release.set()
    assert account.closed == account.opened, "a client opened for a read was left open"


def _tenant(monkeypatch: pytest.MonkeyPatch, **fields: Any) -> None:
    tenant = Tenant(tenant_id=TENANT, gateway="stripe", secrets={"webhook_secret": "x"}, **fields)
    monkeypatch.setattr(wh.registry, "tenants", {TENANT: tenant})


def _iso(epoch: int) -> Any:
    """A deadline as the tables hold it (a record's JSON)."""
    return TypeAdapter(datetime).dump_python(datetime.fromtimestamp(epoch, UTC), mode="json")


def _held(
    monkeypatch: pytest.MonkeyPatch, dispute_status: str | None, due_by: int | None = DUE_BY
) -> None:
    """Payment pay_1 succeeded here, its dispute du_1 recorded at ``dispute_status`` with
    ``due_by`` (None: no dispute recorded yet)."""

    async def entity_row(tenant: str, notice: Any) -> dict[str, Any]:
        dispute = None if dispute_status is None else "dp_1"
        return {"provider_payment_id": "pi_1", "status": "succeeded", "dispute_id": dispute}

    async def row(tenant: str, table: Any, kind: str, entity_id: str) -> dict[str, Any]:
        assert (kind, entity_id) == ("disputes", "dp_1")
        due = None if due_by is None else _iso(due_by)
        return {"id": "dp_1", "provider_dispute_id": "du_1", "status": dispute_status,
                "evidence_due_by": due}  # fmt: skip

    monkeypatch.setattr(wh, "_entity_row", entity_row)
    monkeypatch.setattr(wh, "_row", row)


def _count(result: str) -> float:
    return metrics.WEBHOOKS.labels("stripe", TENANT, result)._value.get()


def _unread(why: str) -> float:
    """Dispute events answered 503 unread, for ``why`` (PaystreamDisputeEventsUnread)."""
    return metrics.WEBHOOK_DISPUTE_READS_FAILED.labels("stripe", TENANT, why)._value.get()


def _read() -> float:
    return metrics.WEBHOOK_DISPUTE_READS_SUCCEEDED.labels("stripe", TENANT)._value.get()


# ---- what is news: the recorded dispute, its status and deadline -------------------


@pytest.mark.parametrize(
    ("held", "held_due_by", "at_stripe", "due_by", "action"),
    [
        # Stripe's events about what paystream holds: funds_withdrawn right after
        # created; updated after paystream's own evidence; closed after its own accept.
        ("needs_response", DUE_BY, "needs_response", DUE_BY, "ignored"),
        ("under_review", DUE_BY, "under_review", DUE_BY, "ignored"),
        ("lost", DUE_BY, "lost", DUE_BY, "ignored"),
        ("needs_response", None, "needs_response", None, "ignored"),
        # An answered inquiry the issuer escalated to a chargeback (review h72c).
        ("under_review", DUE_BY, "needs_response", NEW_DUE_BY, "refresh"),
        # An unanswered one escalated: the same status in paystream's words, a new deadline.
        ("needs_response", DUE_BY, "needs_response", NEW_DUE_BY, "refresh"),
        # A decision the card network's appeal reopened.
        ("lost", DUE_BY, "appeal_needs_response", NEW_DUE_BY, "refresh"),
        # Another status at the same deadline (a late event: its read records nothing).
        ("won", DUE_BY, "under_review", DUE_BY, "refresh"),
        ("needs_response", DUE_BY, "needs_response", None, "refresh"),
    ],
)
async def test_a_dispute_event_is_dropped_only_as_the_dispute_is_recorded(
    seen: SimpleNamespace,  # noqa: F811
    stripe_account: _Stripe,
    monkeypatch: pytest.MonkeyPatch,
    held: str,
    held_due_by: int | None,
    at_stripe: str,
    due_by: int | None,
    action: str,
) -> None:
    """The merchant sees a dispute reopened at Stripe (needs_response again, a new
    deadline) open again: its event is refreshed, not dropped as "under_review already"
    or "lost already" (review h72c). Only an event with the status and deadline recorded
    is dropped."""
    _held(monkeypatch, held, held_due_by)
    status, body = await _post(dispute_event(f"evt_{held}_{at_stripe}", at_stripe, due_by=due_by))
    assert (status, body.get("action")) == (200, action), body
    assert len(seen.sent) == (action == "refresh")


async def test_a_dispute_event_names_the_payment_its_payment_intent_does(
    seen: SimpleNamespace,  # noqa: F811
    stripe_account: _Stripe,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The Dispute carries no metadata of paystream's: its PaymentIntent, read with the
    tenant's key, names the payment; one the key does not find (another account's), one
    paystream did not make and another tenant's are acknowledged and ignored. Each read
    the provider answered counts as read (not found too: the provider answered)."""
    _held(monkeypatch, None)
    read = _read()
    status, body = await _post(dispute_event("evt_new", "needs_response", "charge.dispute.created"))
    assert (status, body["action"]) == (200, "refresh"), body
    assert seen.sent[0][0] == "whk_evt_new"
    assert stripe_account.reads == 1

    stripe_account.payment_intent["metadata"] = {"paystream_payment": "globex:pay_1"}
    status, body = await _post(dispute_event("evt_other_tenant", "needs_response"))
    assert body == {"received": True, "action": "ignored", "why": "another tenant's payment"}
    stripe_account.payment_intent["metadata"] = {}
    status, body = await _post(dispute_event("evt_not_ours", "needs_response"))
    assert body["action"] == "ignored", body
    stripe_account.failure = GatewayError(
        ErrorCode.NOT_FOUND, "no such payment_intent", provider="stripe"
    )
    status, body = await _post(dispute_event("evt_other_account", "needs_response"))
    assert body["action"] == "ignored", body
    assert len(seen.sent) == 1
    assert _read() == read + 4


async def test_a_dispute_whose_payment_cannot_be_read_is_sent_again(
    seen: SimpleNamespace,  # noqa: F811
    stripe_account: _Stripe,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Stripe down (or the key refused): 503, so Stripe sends the event again, counted
    unavailable, and unread for the provider's error apart from the tenant's other 503s
    (h72l: its payment events taken meanwhile kept every alert quiet), and logged once
    per tenant and minute."""
    _held(monkeypatch, None)
    stripe_account.failure = GatewayError(
        ErrorCode.PROVIDER_UNAVAILABLE, "down", provider="stripe", retryable=True
    )
    unavailable, unread, read = _count("unavailable"), _unread("provider_error"), _read()
    with caplog.at_level(logging.WARNING, logger=wh.__name__):
        for i in range(3):
            status, body = await _post(dispute_event(f"evt_down_{i}", "needs_response"))
            assert status == 503, body
    assert _count("unavailable") == unavailable + 3
    assert (_unread("provider_error"), _read()) == (unread + 3, read)
    lines = [r.getMessage() for r in caplog.records if "cannot be read" in r.getMessage()]
    assert len(lines) == 1 and "provider_unavailable" in lines[0], lines
    assert seen.sent == []


# ---- the read's bounds --------------------------------------------------------------


async def test_a_suspended_tenants_dispute_events_cost_no_stripe_read(
    seen: SimpleNamespace,  # noqa: F811
    stripe_account: _Stripe,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A suspended tenant's events are answered 503 until its activation (its refresh
    would be refused), and its key is not used meanwhile: no Stripe read for any of
    Stripe's retries (review h72c: each read Stripe first)."""
    _tenant(monkeypatch, status=TenantStatus.SUSPENDED)
    _held(monkeypatch, None)
    unread = _unread("suspended")
    for i in range(5):
        status, body = await _post(
            dispute_event(f"evt_susp_{i}", "needs_response", "charge.dispute.created")
        )
        assert (status, body["message"]) == (503, "the tenant is suspended; send it again")
    assert stripe_account.reads == 0, f"{stripe_account.reads} Stripe reads while suspended"
    assert _unread("suspended") == unread + 5


async def test_the_reads_are_paced_at_the_tenants_own_rate_apart_from_its_refreshes(
    seen: SimpleNamespace,  # noqa: F811
    stripe_account: _Stripe,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each read is one with the tenant's key: its burst spent, they come back at the
    tenant's own commands_per_second (2), not the webhooks' 50 a second nor the lookups'
    four times that (review h72c); and they leave its refreshes' budget alone."""
    monkeypatch.setattr(wh, "settings", SimpleNamespace(webhook_refreshes_per_second=50))
    _tenant(monkeypatch, limits=TenantLimits(commands_per_second=2))
    _held(monkeypatch, None)
    now = [1000.0]
    pace = wh._Budget(clock=lambda: now[0])
    monkeypatch.setattr(wh, "_dispute_read_pace", pace, raising=False)
    while pace.take(TENANT, 2, 50):  # the burst spent
        pass
    now[0] += 1
    paced, read = _unread("paced"), _read()
    answers = [(await _post(dispute_event(f"evt_{i}", "needs_response")))[0] for i in range(6)]
    assert stripe_account.reads == 2, f"{stripe_account.reads} reads in a second at 2/s"
    assert (_unread("paced"), _read()) == (paced + 4, read + 2)
    assert answers == [200, 200, 503, 503, 503, 503]
    assert len(seen.sent) == 2  # (the reads took none of the refreshes' budget)


async def test_a_slow_stripe_holds_a_bounded_number_of_webhook_handlers(
    seen: SimpleNamespace,  # noqa: F811
    stripe_account: _Stripe,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While Stripe is slow, a burst of dispute events holds at most
    DISPUTE_READS_IN_FLIGHT of the worker's web connections; the rest are answered 503
    at once, never queued (review h72c: each waited on Stripe, up to the gateway's 10 s,
    and the web server's connections, shared with the ingress, ran out). Once Stripe
    answers, the held ones are refreshed and the next event is read again."""
    monkeypatch.setattr(wh, "settings", SimpleNamespace(webhook_refreshes_per_second=50))
    _held(monkeypatch, None)
    most = wh.DISPUTE_READS_IN_FLIGHT
    stripe_account.release.clear()  # Stripe hangs
    stripe_account.over, stripe_account.most = asyncio.Event(), most
    burst = most + 12
    in_flight = _unread("in_flight")
    posts = [asyncio.create_task(_post(dispute_event(f"evt_slow_{i}", "needs_response")))
             for i in range(burst)]  # fmt: skip
    refused: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def answered(_: Any) -> None:
        if sum(p.done() for p in posts) == burst - most and not refused.done():
            refused.set_result(None)

    for post in posts:
        post.add_done_callback(answered)
    over = asyncio.create_task(stripe_account.over.wait())
    # (the refused all answered, or one read too many begun: whichever comes first)
    await asyncio.wait([refused, over], return_when=asyncio.FIRST_COMPLETED)
    over.cancel()
    held_at_once = stripe_account.in_flight
    stripe_account.release.set()
    answers = await asyncio.gather(*posts)
    assert held_at_once <= most, f"{held_at_once} handlers waited on Stripe at once"
    assert [a[0] for a in answers].count(503) == burst - most
    assert {a[1]["message"] for a in answers if a[0] == 503} == {
        "the provider reads of disputes are all in flight; send it again"
    }
    assert len(seen.sent) == most
    assert _unread("in_flight") == in_flight + burst - most
    status, body = await _post(dispute_event("evt_after", "needs_response"))
    assert (status, body["action"]) == (200, "refresh"), body


async def test_a_read_stripe_does_not_answer_in_time_is_sent_again(
    seen: SimpleNamespace,  # noqa: F811
    stripe_account: _Stripe,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A read Stripe never answers is given up after DISPUTE_READ_SECONDS (5 s; here a
    few ms): 503, logged, its client closed and its place given back (review h72c: it
    held the handler for the gateway's timeout, per try)."""
    monkeypatch.setattr(wh, "DISPUTE_READ_SECONDS", 0.01)
    _held(monkeypatch, None)
    stripe_account.release.clear()  # Stripe never answers
    timeout = _unread("timeout")
    with caplog.at_level(logging.WARNING, logger=wh.__name__):
        status, body = await asyncio.wait_for(_post(dispute_event("evt_hung", "needs_response")), 5)
    assert status == 503, body
    assert _unread("timeout") == timeout + 1
    assert any("over 0.01 s" in r.getMessage() for r in caplog.records), caplog.text
    assert stripe_account.in_flight == 0 and wh._dispute_reads.now == 0
    assert stripe_account.closed == stripe_account.opened == 1


async def test_a_dispute_read_whose_key_cannot_be_used_is_logged(
    seen: SimpleNamespace,  # noqa: F811
    stripe_account: _Stripe,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The tenant's api_key does not open under the worker's master key (or its gateway
    options are refused): each of its dispute events is answered 503, and Stripe sends
    it again for days. The operator sees PaystreamDisputeEventsUnread fire (counted
    key_unusable; h72l: PaystreamWebhooksUnavailable stays quiet while the tenant's
    payment events are taken) and, as for every other 503 of this read, a WARNING naming
    the event, the tenant and the cause (review h72e: this one logged nothing)."""
    _held(monkeypatch, "needs_response")
    unread = _unread("key_unusable")
    closed: list[bool] = []

    class Pool:
        def __init__(self, deps: Any, open_secret: Any = None) -> None:
            pass

        def get(self, tenant: Tenant) -> Any:
            raise CryptoError("the api_key does not open under this master key")

        async def aclose(self) -> None:
            closed.append(True)

    monkeypatch.setattr(wh, "GatewayPool", Pool)
    with caplog.at_level(logging.WARNING, logger=wh.__name__):
        status, body = await _post(dispute_event("evt_key", "needs_response"))
    assert status == 503, body
    assert body["message"] == "the tenant's provider key cannot be used; send it again", body
    [line] = [r.getMessage() for r in caplog.records if "evt_key" in r.getMessage()]
    assert TENANT in line and "provider key cannot be used (CryptoError" in line, line
    assert "open under this master key" not in line  # (the cause's type, nothing it says)
    assert closed == [True] and not seen.sent
    assert _unread("key_unusable") == unread + 1
