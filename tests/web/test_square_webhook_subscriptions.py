"""Square's subscription events at the webhook view: paystream's subscription named by
the Square subscription's ``source.name``; another tenant's, another location's, one
paystream did not make and one whose record holds another Square subscription bring no
refresh. An invoice event names Square's subscription only: paystream's is the one the
tenant's record holds it for (read from Square for its source name, once), and an
invoice recorded as the event has it brings no refresh."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

import paystream.web.webhooks as wh
from paystream import metrics
from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.gateways.square import webhooks as sq
from paystream.ids import invoice_id as derived_invoice_id
from tests.fixtures.square_fake import FAKE_SQUARE_LOCATION, square_event
from tests.web.test_square_webhook_view import TENANT, _post, seen

__all__ = ["seen"]

_NOT_OURS = (
    "not an event about a payment, refund, subscription, one-off invoice, payout, "
    "connected account or transfer paystream made"
)


def _subscription(**more: Any) -> dict[str, Any]:
    return {"id": "sqsub1", "status": "ACTIVE", "location_id": FAKE_SQUARE_LOCATION,
            "source": {"name": sq.subscription_source(TENANT, "sub_1")}, **more}  # fmt: skip


async def test_a_subscription_update_brings_its_refresh(seen: SimpleNamespace) -> None:
    seen.row = {"provider_subscription_id": "sqsub1", "status": "active"}
    for event_type in ("subscription.created", "subscription.updated"):
        event = square_event(event_type, _subscription(), event_id=f"ev-{event_type}")
        status, body = await _post(event)
        assert (status, body.get("action")) == (200, "refresh"), body
    assert [(n.subscription_id, n.provider_subscription_id) for _, n in seen.sent] == [
        ("sub_1", "sqsub1"),
        ("sub_1", "sqsub1"),
    ]
    assert (
        sq.subscription_source(TENANT, "sub_1") == f"paystream [ps:{sq.tenant_tag(TENANT)}:sub_1]"
    )


async def test_subscription_events_not_the_tenants_bring_nothing(seen: SimpleNamespace) -> None:
    seen.row = {"provider_subscription_id": "sqsub1", "status": "active"}
    other_tenant = _subscription(source={"name": sq.subscription_source("globex", "sub_1")})
    status, body = await _post(square_event("subscription.updated", other_tenant))
    assert (status, body.get("why")) == (200, "another tenant's subscription"), body
    other_location = _subscription(location_id="LOTHER")
    status, body = await _post(
        square_event("subscription.updated", other_location, location_id="LOTHER")
    )
    assert (status, body.get("why")) == (200, "another location's subscription"), body
    for source in ({"name": "My Application"}, None):
        made_elsewhere = _subscription(source=source)
        status, body = await _post(square_event("subscription.updated", made_elsewhere))
        assert (status, body.get("why")) == (200, _NOT_OURS), body
    # (a forged or edited name: the record holds another Square subscription)
    status, body = await _post(square_event("subscription.updated", _subscription(id="sqsub2")))
    assert (status, body.get("why")) == (
        200,
        "the subscription is another provider subscription's",
    ), body
    assert seen.sent == []


def _invoice(status: str = "UNPAID", **more: Any) -> dict[str, Any]:
    return {"id": "inv:0-1", "status": status, "location_id": FAKE_SQUARE_LOCATION,
            "subscription_id": "sqsub1", **more}  # fmt: skip


@pytest.fixture
def square(seen: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """Square as the webhook view reads it for an invoice's subscription (RetrieveSubscription
    with the tenant's key), and the tenant's recorded invoices and payment methods."""
    state = SimpleNamespace(
        subscription=_subscription(), reads=0, error=None, invoices={}, methods={}
    )
    seen.row = {"provider_subscription_id": "sqsub1", "status": "active"}

    class Square:
        async def read_subscription(self, provider_subscription_id: str) -> dict[str, Any]:
            state.reads += 1
            if state.error is not None:
                raise state.error
            if state.subscription is None or state.subscription["id"] != provider_subscription_id:
                raise GatewayError(ErrorCode.NOT_FOUND, "not found", provider="square")
            return dict(state.subscription)

    class Pool:
        def __init__(self, deps: Any, open_secret: Any = None) -> None:
            pass

        def get(self, tenant: Any) -> Square:
            return Square()

        async def aclose(self) -> None:
            pass

    async def row(tenant: str, table: Any, kind: str, entity_id: str) -> Any:
        held = {"invoices": state.invoices, "payment_methods": state.methods}[kind]
        return held.get(entity_id)

    monkeypatch.setattr(wh, "GatewayPool", Pool)
    monkeypatch.setattr(wh, "_row", row)
    monkeypatch.setattr(wh, "_square_subscriptions", wh._SquareSubscriptions())
    return state


def _record(square: SimpleNamespace, status: str, failure_code: str | None = None) -> None:
    invoice_id = derived_invoice_id(TENANT, "sub_1", "inv:0-1")
    square.invoices[invoice_id] = {"provider_invoice_id": "inv:0-1", "subscription_id": "sub_1",
                                   "status": status, "failure_code": failure_code}  # fmt: skip


async def test_a_declined_then_paid_renewal_brings_its_subscriptions_refresh(
    seen: SimpleNamespace, square: SimpleNamespace
) -> None:
    """A renewal's invoice events name Square's subscription only: it is read once (its
    source name names paystream's), and each brings the subscription's refresh until
    the invoice is recorded as the event has it."""
    declined = square_event("invoice.scheduled_charge_failed", _invoice(), event_id="ev-d")
    status, body = await _post(declined)
    assert (status, body.get("action")) == (200, "refresh"), body
    [(_, notice)] = seen.sent
    assert (notice.subscription_id, notice.provider_subscription_id, notice.provider_invoice_id,
            notice.invoice_status, notice.invoice_declined) == (
        "sub_1", "sqsub1", "inv:0-1", "open", True)  # fmt: skip
    # The same decline again (invoice.updated), once the refresh recorded it: nothing to
    # read, from Square or by a refresh.
    _record(square, "open", "card_declined")
    status, body = await _post(square_event("invoice.updated", _invoice(), event_id="ev-u"))
    assert (status, body.get("why")) == (200, "the invoice is open already"), body
    # Recorded open while its charge was under way: the decline is news.
    _record(square, "open")
    status, body = await _post(square_event("invoice.updated", _invoice(), event_id="ev-u2"))
    assert (status, body.get("action")) == (200, "refresh"), body
    # Paid from Square's email: read.
    _record(square, "open", "card_declined")
    paid = square_event("invoice.payment_made", _invoice("PAID"), event_id="ev-p")
    status, body = await _post(paid)
    assert (status, body.get("action")) == (200, "refresh"), body
    _record(square, "paid")
    status, body = await _post(square_event("invoice.updated", _invoice("PAID")))
    assert (status, body.get("why")) == (200, "the invoice is paid already"), body
    assert [n.event_id for _, n in seen.sent] == ["ev-d", "ev-u2", "ev-p"]
    assert square.reads == 1  # (the Square subscription once: then known)


async def test_a_subscription_event_spares_its_invoices_read(
    seen: SimpleNamespace, square: SimpleNamespace
) -> None:
    status, body = await _post(square_event("subscription.updated", _subscription()))
    assert (status, body.get("action")) == (200, "refresh"), body
    status, body = await _post(square_event("invoice.payment_made", _invoice("PAID")))
    assert (status, body.get("action")) == (200, "refresh"), body
    assert [n.subscription_id for _, n in seen.sent] == ["sub_1", "sub_1"]
    assert square.reads == 0


async def test_invoice_events_of_subscriptions_not_the_tenants_bring_nothing(
    seen: SimpleNamespace, square: SimpleNamespace
) -> None:
    # Another location's: not read.
    other_location = _invoice(location_id="LOTHER")
    status, body = await _post(
        square_event("invoice.payment_made", other_location, location_id="LOTHER")
    )
    assert (status, body.get("why")) == (200, "another location's invoice"), body
    assert square.reads == 0
    # A subscription Square does not find (another seller's, or none).
    status, body = await _post(square_event("invoice.payment_made", _invoice(subscription_id="x")))
    assert (status, body.get("why")) == (200, _NOT_OURS), body
    # Made by another application of the seller's, or by none: read once.
    square.subscription = _subscription(id="sqapp", source={"name": "My Application"})
    for _ in range(2):
        status, body = await _post(
            square_event("invoice.payment_made", _invoice(subscription_id="sqapp"))
        )
        assert (status, body.get("why")) == (200, _NOT_OURS), body
    assert square.reads == 2
    # Another tenant's on the same location.
    square.subscription = _subscription(
        id="sqglobex", source={"name": sq.subscription_source("globex", "sub_1")}
    )
    status, body = await _post(
        square_event("invoice.payment_made", _invoice(subscription_id="sqglobex"))
    )
    assert (status, body.get("why")) == (200, "another tenant's subscription"), body
    # Named paystream's, but the tenant's record holds another Square subscription (a
    # source name edited or forged): the record decides, for each event.
    square.subscription = _subscription()
    seen.row = {"provider_subscription_id": "sqsub2", "status": "active"}
    for _ in range(2):
        status, body = await _post(square_event("invoice.payment_made", _invoice()))
        assert (status, body.get("why")) == (
            200, "the subscription is another provider subscription's"
        ), body  # fmt: skip
    # An invoice no subscription billed.
    one_off = {k: v for k, v in _invoice().items() if k != "subscription_id"}
    status, body = await _post(square_event("invoice.payment_made", one_off))
    assert (status, body.get("why")) == (200, _NOT_OURS), body
    assert seen.sent == []
    assert square.reads == 4


async def test_a_subscription_event_saying_what_is_recorded_brings_no_refresh(
    seen: SimpleNamespace, square: SimpleNamespace
) -> None:
    """The echo of paystream's own create, cancel or update, or a renewal's event once the
    renewal is recorded (review h78l L5): its status, period end (the day after
    charged_through_date), cancel, price and card as recorded. Any of them moved is
    read; so is an ACTIVE one recorded past_due (ACTIVE is either)."""
    seen.row = {"provider_subscription_id": "sqsub1", "status": "active", "amount": 700,
                "cancel_at_period_end": False, "payment_method_id": "pm_1",
                "current_period_end": "2030-01-08T00:00:00+00:00"}  # fmt: skip
    square.methods["pm_1"] = {"provider_payment_method_id": "ccof1"}
    held = {"charged_through_date": "2030-01-07", "card_id": "ccof1",
            "price_override_money": {"amount": 700, "currency": "USD"}}  # fmt: skip
    status, body = await _post(square_event("subscription.updated", _subscription(**held)))
    assert body.get("why") == "the subscription is active already, as the event says", body
    moved = [
        {"charged_through_date": "2030-01-14"},
        {"canceled_date": "2030-01-07"},
        {"price_override_money": {"amount": 900, "currency": "USD"}},
        {"card_id": "ccof2"},
        {"status": "PAUSED"},
    ]
    for change in moved:
        status, body = await _post(
            square_event("subscription.updated", _subscription(**{**held, **change}))
        )
        assert (status, body.get("action")) == (200, "refresh"), (change, body)
    seen.row = {**seen.row, "status": "past_due"}
    status, body = await _post(square_event("subscription.updated", _subscription(**held)))
    assert (status, body.get("action")) == (200, "refresh"), body
    assert len(seen.sent) == len(moved) + 1


async def test_an_invoices_subscription_square_cannot_read_now_is_sent_again(
    seen: SimpleNamespace, square: SimpleNamespace
) -> None:
    square.error = GatewayError(ErrorCode.PROVIDER_UNAVAILABLE, "down", provider="square")
    status, body = await _post(square_event("invoice.payment_made", _invoice()))
    assert (status, body.get("error")) == (503, "unavailable"), body
    assert seen.sent == []


async def test_a_subscription_square_does_not_find_is_read_once_a_minute(
    seen: SimpleNamespace, square: SimpleNamespace
) -> None:
    """Review h79r_d L2: an invoice event of a Square subscription the tenant's key does
    not find, sent again (Square's retries, a renewal's several events), reads Square
    once while remembered (MISSING_SECONDS), then again: a 404 is not kept forever."""
    now = [1000.0]
    wh._square_subscriptions._clock = lambda: now[0]
    for n in range(3):
        event = square_event(
            "invoice.payment_made", _invoice(subscription_id="x"), event_id=f"e{n}"
        )
        status, body = await _post(event)
        assert (status, body.get("why")) == (200, _NOT_OURS), body
    assert square.reads == 1
    now[0] += wh._SquareSubscriptions.MISSING_SECONDS
    # Found now (the token fixed, or made meanwhile): read again, and then known.
    square.subscription = _subscription(id="x")
    seen.row = {"provider_subscription_id": "x", "status": "active"}
    for n in range(2):
        event = square_event(
            "invoice.payment_made", _invoice(subscription_id="x"), event_id=f"f{n}"
        )
        status, body = await _post(event)
        assert (status, body.get("action")) == (200, "refresh"), body
    assert square.reads == 2
    assert seen.sent and all(n.subscription_id == "sub_1" for _, n in seen.sent)


def test_subscriptions_not_found_are_remembered_bounded() -> None:
    remembered = wh._SquareSubscriptions(clock=lambda: 0.0)
    remembered.MOST = 2
    for sid in ("a", "b", "c"):
        remembered.remember_missing("acme", sid)
    assert [remembered.missing("acme", sid) for sid in ("a", "b", "c")] == [False, True, True]
    remembered.remember("acme", "b", "sub_1")
    assert (remembered.missing("acme", "b"), remembered.get("acme", "b")) == (False, "sub_1")


def _reads(result: str) -> float:
    return metrics.WEBHOOK_SUBSCRIPTION_READS.labels("square", TENANT, result)._value.get()


async def test_invoice_reads_past_their_bounds_are_503_counted_and_give_back_their_slot(
    seen: SimpleNamespace, square: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review h79r_d L3: an invoice event's subscription read shares the dispute reads'
    bounds: over the tenant's pace, or with every slot in flight, it is answered 503 with
    no read (Square sends it again), its slot given back; each read or why none was
    made is counted. An event of a subscription known already is not paced."""
    before = {r: _reads(r) for r in ("found", "not_found", "paced", "in_flight", "provider_error")}

    class Spent:
        def take(self, tenant: str, per_second: int, burst_of: int | None = None) -> bool:
            return False

    monkeypatch.setattr(wh, "_dispute_read_pace", Spent())
    status, body = await _post(square_event("invoice.payment_made", _invoice(), event_id="p1"))
    assert (status, body.get("error")) == (503, "unavailable"), body
    assert (square.reads, wh._dispute_reads.now, seen.sent) == (0, 0, [])
    monkeypatch.setattr(wh._dispute_reads, "now", wh._dispute_reads.most)
    status, body = await _post(square_event("invoice.payment_made", _invoice(), event_id="p2"))
    assert (status, body.get("error")) == (503, "unavailable"), body
    monkeypatch.setattr(wh._dispute_reads, "now", 0)
    square.error = GatewayError(ErrorCode.PROVIDER_UNAVAILABLE, "down", provider="square")
    monkeypatch.setattr(wh, "_dispute_read_pace", wh._Budget())
    status, body = await _post(square_event("invoice.payment_made", _invoice(), event_id="p3"))
    assert (status, body.get("error")) == (503, "unavailable"), body
    square.error = None
    status, body = await _post(square_event("invoice.payment_made", _invoice(), event_id="p4"))
    assert (status, body.get("action")) == (200, "refresh"), body
    status, body = await _post(
        square_event("invoice.payment_made", _invoice(subscription_id="x"), event_id="p5")
    )
    assert (status, body.get("why")) == (200, _NOT_OURS), body
    # Known now: spent pace does not stop its next event, and it is not read.
    monkeypatch.setattr(wh, "_dispute_read_pace", Spent())
    status, body = await _post(square_event("invoice.updated", _invoice("PAID"), event_id="p6"))
    assert (status, body.get("action")) == (200, "refresh"), body
    assert (square.reads, wh._dispute_reads.now) == (3, 0)  # (p3, p4, p5)
    counted = {r: _reads(r) - before[r] for r in before}
    assert counted == {"found": 1, "not_found": 1, "paced": 1, "in_flight": 1, "provider_error": 1}


async def test_an_invoice_paid_after_its_subscription_ended_is_ignored_as_documented(
    seen: SimpleNamespace, square: SimpleNamespace
) -> None:
    """Review h79r_d L7 (docs/square.md, Only paystream's cancels cancel invoices): the
    seller collects an unpaid invoice after the subscription ended; canceled is final
    here, so its event brings no refresh and paystream's copy stays open."""
    seen.row = {"provider_subscription_id": "sqsub1", "status": "canceled"}
    _record(square, "open", "card_declined")
    status, body = await _post(square_event("invoice.payment_made", _invoice("PAID")))
    assert (status, body.get("why")) == (200, "the subscription is canceled already"), body
    assert seen.sent == []
