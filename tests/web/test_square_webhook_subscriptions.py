"""Square's subscription events at the webhook view: paystream's subscription named by
the Square subscription's ``source.name``; another tenant's, another location's, one
paystream did not make and one whose record holds another Square subscription bring no
refresh; invoice events stay ignored (an invoice names Square's subscription only)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from paystream.gateways.square import webhooks as sq
from tests.fixtures.square_fake import FAKE_SQUARE_LOCATION, square_event
from tests.web.test_square_webhook_view import TENANT, _post, seen

__all__ = ["seen"]

_NOT_OURS = (
    "not an event about a payment, refund, subscription, payout or connected account paystream made"
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


async def test_invoice_events_stay_ignored(seen: SimpleNamespace) -> None:
    invoice = {"id": "inv:0-1", "status": "UNPAID", "location_id": FAKE_SQUARE_LOCATION,
               "subscription_id": "sqsub1"}  # fmt: skip
    for event_type in (
        "invoice.payment_made",
        "invoice.scheduled_charge_failed",
        "invoice.canceled",
    ):
        status, body = await _post(square_event(event_type, invoice))
        assert (status, body.get("why")) == (200, _NOT_OURS), body
    assert seen.sent == []
