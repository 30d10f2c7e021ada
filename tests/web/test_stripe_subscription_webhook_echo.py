"""h73q review, finding 5: Stripe's echo of paystream's own subscription call (the
``invoice.paid`` of a create's first invoice, the ``customer.subscription.updated`` of a
cancel at period end) brought a refresh (2-3 Stripe calls, the tenant's webhook budget)
and a second subscription.updated outcome with nothing changed, as a payment's echo does
not (_known_already: "the payment is succeeded already"). An event at what paystream
holds is dropped: a subscription's at the status, cancel_at_period_end, current period
end, price and card recorded (review h77n: the last two since a refresh records them),
an invoice's at the status its invoice is recorded at. Anything else (a renewal's
invoice not recorded yet, a status, period, price or card moved) is read."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

import paystream.web.webhooks as wh
from paystream.gateways.base import SUBSCRIPTION_REF_KEY
from paystream.gateways.stripe.webhooks import subscription_notice
from paystream.ids import derived_id
from tests.web.test_webhook_lookups import TENANT, _post, seen  # noqa: F401 (fixture)

pytestmark = pytest.mark.asyncio

END = 1_762_592_000
META = {SUBSCRIPTION_REF_KEY: f"{TENANT}:sub_p1"}
PLAN = {"id": "plan_1", "object": "plan", "amount": 1500, "currency": "eur", "interval": "month"}


def _iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).isoformat().replace("+00:00", "Z")


def _invoice_id(provider_invoice_id: str) -> str:
    # (handlers._invoice_id: the tenant, paystream's subscription, Stripe's invoice)
    return derived_id("in", TENANT, "sub_p1", provider_invoice_id)


@pytest.fixture
def held(seen: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:  # noqa: F811
    """sub_p1 recorded active at 1500, billing pm_p1 (Stripe's pm_1), to be canceled at
    its period's end (END), its first invoice in_1 recorded paid; ``held`` edits them
    (None: not recorded)."""
    state: dict[str, Any] = {
        "subscription": {"id": "sub_p1", "provider_subscription_id": "sub_1",
                         "status": "active", "cancel_at_period_end": True,
                         "current_period_start": _iso(END - 30 * 86400),
                         "current_period_end": _iso(END), "amount": 1500,
                         "payment_method_id": "pm_p1"},
        "invoices": {_invoice_id("in_1"): {"id": _invoice_id("in_1"),
                                           "subscription_id": "sub_p1",
                                           "provider_invoice_id": "in_1", "status": "paid"}},
        "payment_methods": {"pm_p1": {"id": "pm_p1", "provider_payment_method_id": "pm_1"},
                            "pm_p2": {"id": "pm_p2", "provider_payment_method_id": "pm_2"}},
    }  # fmt: skip
    seen.invoice_reads = []
    seen.method_reads = []

    async def entity_row(tenant: str, notice: Any) -> Any:
        seen.lookups += 1
        return state["subscription"]

    async def row(tenant: str, table: Any, kind: str, entity_id: str) -> Any:
        assert tenant == TENANT and kind in ("invoices", "payment_methods")
        (seen.invoice_reads if kind == "invoices" else seen.method_reads).append(entity_id)
        return state[kind].get(entity_id)

    monkeypatch.setattr(wh, "_entity_row", entity_row)
    monkeypatch.setattr(wh, "_row", row)
    return state


def _sub_event(
    kind: str = "customer.subscription.updated",
    *,
    event_id: str = "evt_echo",
    status: str = "active",
    cancel_at_period_end: bool = True,
    end: int = END,
    basil: bool = True,
    amount: int = 1500,
    card: str | dict[str, Any] | None = "pm_1",
) -> bytes:
    obj: dict[str, Any] = {
        "id": "sub_1",
        "object": "subscription",
        "status": status,
        "cancel_at_period_end": cancel_at_period_end,
        "default_payment_method": card,
        "metadata": META,
    }
    period = {"current_period_start": end - 30 * 86400, "current_period_end": end}
    plan = {"plan": {**PLAN, "amount": amount}}
    if basil:  # (the period on the item since 2025-03-31.basil, on the subscription before)
        obj["items"] = {"data": [{**period, **plan}]}
    else:
        obj.update(period, items={"data": [plan]})
    event = {"id": event_id, "type": kind, "created": int(time.time()),
             "data": {"object": obj,
                      "previous_attributes": {"cancel_at_period_end": False}}}  # fmt: skip
    return json.dumps(event).encode()


def _invoice_event(
    kind: str = "invoice.paid",
    *,
    event_id: str = "evt_in",
    invoice: str = "in_1",
    status: str = "paid",
    created: int | None = None,
) -> bytes:
    details = {"subscription": "sub_1", "metadata": META}
    obj = {"id": invoice, "object": "invoice", "status": status,
           "billing_reason": "subscription_create",
           "parent": {"type": "subscription_details", "subscription_details": details}}  # fmt: skip
    event = {"id": event_id, "type": kind,
             "created": int(time.time()) if created is None else created,
             "data": {"object": obj}}  # fmt: skip
    return json.dumps(event).encode()


async def test_the_echo_of_paystreams_own_cancel_at_period_end_is_no_news(
    seen: SimpleNamespace,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    row = {"provider_subscription_id": "sub_1", "status": "active",
           "cancel_at_period_end": True, "amount": 1500,
           "current_period_end": "2025-11-08T08:53:20Z"}  # fmt: skip

    async def entity_row(tenant: str, notice: Any) -> Any:
        return row

    monkeypatch.setattr(wh, "_entity_row", entity_row)
    obj = {"id": "sub_1", "object": "subscription", "status": "active",
           "cancel_at_period_end": True,
           "items": {"data": [{"current_period_start": END - 30 * 86400,
                               "current_period_end": END, "plan": PLAN}]},
           "metadata": {SUBSCRIPTION_REF_KEY: f"{TENANT}:sub_p1"}}  # fmt: skip
    event = {"id": "evt_echo", "type": "customer.subscription.updated",
             "created": int(time.time()), "data": {"object": obj,
             "previous_attributes": {"cancel_at_period_end": False}}}  # fmt: skip
    status, body = await _post(json.dumps(event).encode())
    assert (status, body["action"]) == (200, "ignored"), body
    assert seen.sent == []


@pytest.mark.parametrize("basil", [True, False])
async def test_a_subscription_event_at_what_is_held_is_ignored(
    seen: SimpleNamespace,  # noqa: F811
    held: dict[str, Any],
    basil: bool,
) -> None:
    status, body = await _post(_sub_event(basil=basil))
    assert (status, body["action"]) == (200, "ignored"), body
    assert "active already" in body["why"]
    assert seen.sent == [] and seen.invoice_reads == []
    assert seen.method_reads == ["pm_p1"]  # (the card compared by its Stripe id)


@pytest.mark.parametrize(
    "moved",
    [
        {"status": "past_due"},  # a renewal declined
        {"status": "canceled"},  # (a cancel made in the dashboard)
        {"cancel_at_period_end": False},  # the cancel at period end undone (dashboard)
        {"end": END + 30 * 86400},  # renewed: a new period
        {"status": "a_status_not_known_yet"},  # read (and parked as unreadable there)
        {"amount": 1900},  # the price changed in the dashboard (review h77n)
        {"card": "pm_2"},  # the card: one paystream records for the customer
        {"card": "pm_set_in_the_dashboard"},  # one it does not (the refresh counts it)
    ],
)
async def test_a_subscription_event_that_differs_is_refreshed(
    seen: SimpleNamespace,  # noqa: F811
    held: dict[str, Any],
    moved: dict[str, Any],
) -> None:
    status, body = await _post(_sub_event(**moved))
    assert (status, body["action"]) == (200, "refresh"), body
    assert len(seen.sent) == 1


async def test_the_echo_of_paystreams_own_update_is_no_news(
    seen: SimpleNamespace,  # noqa: F811
    held: dict[str, Any],
) -> None:
    """An update paystream made (1900, pm_p2) records its answer before Stripe's
    ``customer.subscription.updated`` for it can be read against the record: at the
    new price and card, the event is the echo."""
    held["subscription"].update(amount=1900, payment_method_id="pm_p2")
    expanded = {"id": "pm_2", "object": "payment_method"}  # (as an expanding request reads)
    for event_id, card in (("evt_u1", "pm_2"), ("evt_u2", expanded)):
        status, body = await _post(_sub_event(event_id=event_id, amount=1900, card=card))
        assert (status, body["action"]) == (200, "ignored"), body
    assert seen.sent == [] and seen.method_reads == ["pm_p2", "pm_p2"]
    # The event of the update before it, late, says the old price and card: read.
    status, body = await _post(_sub_event(event_id="evt_u0"))
    assert (status, body["action"]) == (200, "refresh"), body


async def test_a_card_or_price_not_read_from_the_event(
    seen: SimpleNamespace,  # noqa: F811
    held: dict[str, Any],
) -> None:
    """No ``default_payment_method`` (the customer's default billed): the refresh would
    keep the recorded card, so nothing is looked up for it. A price not readable, or a
    recorded card whose record is not found, is read."""
    status, body = await _post(_sub_event(card=None))
    assert (status, body["action"]) == (200, "ignored"), body
    assert seen.method_reads == []
    unreadable = json.loads(_sub_event(event_id="evt_noprice"))
    del unreadable["data"]["object"]["items"]["data"][0]["plan"]
    status, body = await _post(json.dumps(unreadable).encode())
    assert (status, body["action"]) == (200, "refresh"), body
    del held["payment_methods"]["pm_p1"]
    status, body = await _post(_sub_event(event_id="evt_nocard"))
    assert (status, body["action"]) == (200, "refresh"), body
    assert len(seen.sent) == 2


async def test_a_subscription_event_without_a_readable_period_is_refreshed(
    seen: SimpleNamespace,  # noqa: F811
    held: dict[str, Any],
) -> None:
    held["subscription"]["current_period_end"] = None  # (not read: nothing compares equal)
    status, body = await _post(_sub_event())
    assert (status, body["action"]) == (200, "refresh"), body


async def test_the_deletion_of_a_subscription_recorded_canceled_is_ignored(
    seen: SimpleNamespace,  # noqa: F811
    held: dict[str, Any],
) -> None:
    held["subscription"].update(status="canceled", cancel_at_period_end=False)
    status, body = await _post(
        _sub_event("customer.subscription.deleted", status="canceled", cancel_at_period_end=False)
    )
    assert (status, body["action"]) == (200, "ignored"), body
    assert "canceled already" in body["why"]
    assert seen.sent == []


async def test_the_invoice_paid_of_an_invoice_recorded_paid_is_ignored(
    seen: SimpleNamespace,  # noqa: F811
    held: dict[str, Any],
) -> None:
    status, body = await _post(_invoice_event())
    assert (status, body["action"]) == (200, "ignored"), body
    assert body["why"] == "the invoice is paid already"
    assert seen.invoice_reads == [_invoice_id("in_1")]
    assert seen.sent == []


async def test_a_renewals_invoice_not_recorded_is_refreshed(
    seen: SimpleNamespace,  # noqa: F811
    held: dict[str, Any],
) -> None:
    for kind, status_at_stripe in (("invoice.paid", "paid"), ("invoice.payment_failed", "open")):
        answer, body = await _post(
            _invoice_event(kind, event_id=f"evt_{kind}", invoice="in_2", status=status_at_stripe)
        )
        assert (answer, body["action"]) == (200, "refresh"), body
    assert seen.invoice_reads == [_invoice_id("in_2")] * 2
    assert len(seen.sent) == 2


async def test_an_invoice_paid_after_being_recorded_open_is_refreshed(
    seen: SimpleNamespace,  # noqa: F811
    held: dict[str, Any],
) -> None:
    held["invoices"][_invoice_id("in_1")]["status"] = "open"
    status, body = await _post(_invoice_event())
    assert (status, body["action"]) == (200, "refresh"), body
    assert len(seen.sent) == 1


async def test_the_decline_of_a_create_already_recorded_is_ignored(
    seen: SimpleNamespace,  # noqa: F811
    held: dict[str, Any],
) -> None:
    # (allow_incomplete: the create recorded the subscription incomplete and its first
    # invoice open with the decline; Stripe's invoice.payment_failed is its echo. A later
    # attempt's decline of the same open invoice moves nothing a refresh records: the
    # subscription's own move comes in customer.subscription.updated.)
    held["subscription"]["status"] = "incomplete"
    held["invoices"][_invoice_id("in_1")]["status"] = "open"
    status, body = await _post(_invoice_event("invoice.payment_failed", status="open"))
    assert (status, body["action"]) == (200, "ignored"), body
    assert body["why"] == "the invoice is open already"


async def test_an_invoice_of_a_status_not_known_is_refreshed(
    seen: SimpleNamespace,  # noqa: F811
    held: dict[str, Any],
) -> None:
    status, body = await _post(_invoice_event(status="a_status_not_known_yet"))
    assert (status, body["action"]) == (200, "refresh"), body
    assert seen.invoice_reads == []


async def test_a_creates_own_invoice_paid_before_its_outcome_is_recorded_is_asked_again(
    seen: SimpleNamespace,  # noqa: F811
    held: dict[str, Any],
) -> None:
    """Decided (h73s): answered 503 while the subscription is not recorded (the create's
    answer in flight; as a payment's event is), never dropped at once: the create may
    have read its invoice open (3-D Secure) just before this payment. Sent again, it
    finds the invoice recorded paid by the create's own answer, and is dropped."""
    created = held.pop("subscription")
    held["subscription"] = None
    paid = held["invoices"].pop(_invoice_id("in_1"))
    status, _ = await _post(_invoice_event())
    assert status == 503
    held["subscription"] = created
    held["invoices"][_invoice_id("in_1")] = paid
    status, body = await _post(_invoice_event())
    assert (status, body["action"]) == (200, "ignored"), body
    assert seen.sent == []


async def test_the_notice_carries_what_the_event_says() -> None:
    notice = subscription_notice(json.loads(_sub_event(cancel_at_period_end=False)))
    assert notice is not None
    assert (notice.status, notice.cancel_at_period_end, notice.current_period_end) == (
        "active",
        False,
        END,
    )
    assert notice.provider_invoice_id is None
    assert (notice.amount, notice.provider_payment_method_id) == (1500, "pm_1")
    # A Price (as the dashboard makes them) rather than a Plan; the card expanded.
    event = json.loads(_sub_event(card={"id": "pm_3", "object": "payment_method"}))
    obj = event["data"]["object"]
    obj["items"]["data"][0]["plan"] = None
    obj["items"]["data"][0]["price"] = {"unit_amount": 2100, "currency": "eur",
                                        "recurring": {"interval": "month"}}  # fmt: skip
    notice = subscription_notice(event)
    assert notice is not None
    assert (notice.amount, notice.provider_payment_method_id) == (2100, "pm_3")
    notice = subscription_notice(json.loads(_invoice_event(status="uncollectible")))
    assert notice is not None
    assert (notice.provider_invoice_id, notice.invoice_status) == ("in_1", "open")
    assert notice.status is None


def _paused_event(resumes_at: int | None = None) -> bytes:
    """A ``customer.subscription.updated`` of sub_1 with its collection paused (Stripe
    keeps it ``active``, ``pause_collection`` set)."""
    event = json.loads(_sub_event())
    pause = {"behavior": "void", "resumes_at": resumes_at}
    event["data"]["object"]["pause_collection"] = pause
    return json.dumps(event).encode()


async def test_a_pause_made_in_stripes_dashboard_is_refreshed_its_echo_ignored(
    seen: SimpleNamespace,  # noqa: F811
    held: dict[str, Any],
) -> None:
    """Stripe keeps a subscription paused by ``pause_collection`` ``active``: read as the
    event's status, a pause made in the dashboard was dropped as the echo of an active
    one. Paused (paystream's name): read; the echo of paystream's own pause, recorded
    paused, is no news; so is a resume's (pause_collection cleared, recorded active)."""
    notice = subscription_notice(json.loads(_paused_event(END)))
    assert notice is not None and notice.status == "paused"
    status, body = await _post(_paused_event())
    assert (status, body["action"]) == (200, "refresh"), body
    assert len(seen.sent) == 1
    held["subscription"]["status"] = "paused"
    status, body = await _post(_paused_event(END))
    assert (status, body["action"]) == (200, "ignored"), body
    assert "paused already" in body["why"]
    status, body = await _post(_sub_event())  # (resumed: cleared, recorded paused still)
    assert (status, body["action"]) == (200, "refresh"), body
    held["subscription"]["status"] = "active"
    status, body = await _post(_sub_event(event_id="evt_resumed"))
    assert (status, body["action"]) == (200, "ignored"), body
    assert len(seen.sent) == 2
