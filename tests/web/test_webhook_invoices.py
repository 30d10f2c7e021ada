"""Stripe's invoice events of a one-off invoice paystream made (its metadata names it:
``paystream_invoice``) bring a sealed ``invoice.refresh`` of it, through the same bounds
as a payment's or a payout's event (lookups, budget, 503 while unrecorded and recent,
dropped once old); a subscription's invoice's events still bring its subscription's
refresh; an invoice paystream did not make, another tenant's or account's are ignored,
and so are the echoes of what paystream holds and events of an invoice paid or void here.
In process: the view alone (tests/web/test_webhook_lookups.py's fakes), and the refresh
command built for real."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

import paystream.web.webhooks as wh
from paystream.gateways.base import INVOICE_REF_KEY, SUBSCRIPTION_REF_KEY
from paystream.gateways.stripe.webhooks import (
    EVERY_FOLLOWED_EVENT,
    FOLLOWED_INVOICE_EVENTS,
    invoice_notice,
    subscription_notice,
)
from paystream.gateways.webhook_notices import InvoiceNotice, SubscriptionNotice
from tests.web.test_webhook_lookups import (  # noqa: F401 (seen: a fixture)
    TENANT,
    _post,
    assert_a_sealed_refresh,
    assert_another_tenants_and_accounts_are_ignored,
    assert_it_brings_its_refresh,
    assert_the_tenants_refresh_budget_is_shared,
    assert_unrecorded_is_asked_again_while_recent_then_dropped,
    held_rows,
    seen,
    stripe_event,
)

pytestmark = pytest.mark.asyncio

_STATUS = {
    "invoice.paid": "paid",
    "invoice.payment_failed": "open",
    "invoice.voided": "void",
    "invoice.marked_uncollectible": "uncollectible",
    "invoice.finalized": "open",
}


def _event(
    kind: str = "invoice.paid",
    *,
    event_id: str = "evt_i1",
    tenant: str = TENANT,
    invoice: str = "in_a",
    provider_id: str = "in_1",
    status: str | None = None,
    created: int | None = None,
    metadata: dict[str, str] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    obj = {
        "id": provider_id,
        "object": "invoice",
        "status": status or _STATUS[kind],
        "metadata": {INVOICE_REF_KEY: f"{tenant}:{invoice}"} if metadata is None else metadata,
        "subscription": None,
    }
    return stripe_event(kind, event_id, obj, created, **fields)


def _body(**kw: Any) -> bytes:
    return json.dumps(_event(**kw)).encode()


@pytest.fixture
def rows(seen: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:  # noqa: F811
    held = {"in_a": {"provider_invoice_id": "in_1", "status": "open", "subscription_id": None}}
    return held_rows(seen, monkeypatch, "invoice_id", held)


async def test_the_followed_invoice_events_name_paystreams_invoice() -> None:
    assert set(_STATUS) == FOLLOWED_INVOICE_EVENTS <= EVERY_FOLLOWED_EVENT
    notice = invoice_notice(_event("invoice.marked_uncollectible", account="acct_9"))
    assert notice == InvoiceNotice(
        "evt_i1",
        "invoice.marked_uncollectible",
        TENANT,
        "in_a",
        "in_1",
        "uncollectible",
        "acct_9",
        notice.created,
    )
    assert invoice_notice(_event("invoice.created", status="draft")) is None  # (made here)
    # An invoice made in Stripe's dashboard: nothing of paystream's.
    assert invoice_notice(_event(metadata={})) is None
    assert invoice_notice(_event(status="some_new_status")).status is None  # type: ignore[union-attr]


async def test_a_subscriptions_invoice_is_still_its_subscriptions() -> None:
    """Its metadata names no invoice of paystream's; its subscription_details name the
    subscription: a subscription.refresh, as before (no invoice.refresh)."""
    event = _event(metadata={})
    obj = event["data"]["object"]
    obj.update(
        subscription="sub_1",
        parent={
            "subscription_details": {
                "subscription": "sub_1",
                "metadata": {SUBSCRIPTION_REF_KEY: f"{TENANT}:s_a"},
            }
        },
    )
    assert invoice_notice(event) is None
    notice = subscription_notice(event)
    assert isinstance(notice, SubscriptionNotice) and notice.subscription_id == "s_a"
    assert wh._notice("stripe", TENANT, event) == notice
    # (even one whose metadata were to carry an invoice reference too)
    obj["metadata"] = {INVOICE_REF_KEY: f"{TENANT}:in_a"}
    assert invoice_notice(event) is None


@pytest.mark.parametrize(
    ("kind", "held"),
    [
        ("invoice.paid", "open"),
        ("invoice.paid", "uncollectible"),
        ("invoice.voided", "open"),
        ("invoice.marked_uncollectible", "open"),
        ("invoice.finalized", "draft"),
    ],
)
async def test_an_invoice_event_brings_its_refresh(
    seen: SimpleNamespace,  # noqa: F811
    rows: dict[str, Any],
    kind: str,
    held: str,
) -> None:
    rows["in_a"]["status"] = held
    ids = {"invoice_id": "in_a", "provider_invoice_id": "in_1"}
    await assert_it_brings_its_refresh(seen, _body(kind=kind), InvoiceNotice, ids)


async def test_an_invoice_paystream_did_not_make_is_acknowledged_and_dropped(
    seen: SimpleNamespace,  # noqa: F811
    rows: dict[str, Any],
) -> None:
    status, body = await _post(_body(metadata={"order": "7"}))
    assert (status, body["action"]) == (200, "ignored"), body
    assert "paystream made" in body["why"] and seen.lookups == 0 and seen.sent == []
    assert "one-off invoice" in body["why"]  # (the log names what it was looked at as)


async def test_another_tenants_or_accounts_invoice_event_is_ignored(
    seen: SimpleNamespace,  # noqa: F811
    rows: dict[str, Any],
) -> None:
    await assert_another_tenants_and_accounts_are_ignored(seen, _body, "invoice")


async def test_echoes_and_final_invoices_are_not_refreshed(
    seen: SimpleNamespace,  # noqa: F811
    rows: dict[str, Any],
) -> None:
    # The echo of paystream's own pay (or a refresh that read it paid): final here.
    rows["in_a"]["status"] = "paid"
    status, body = await _post(_body())
    assert (status, body["action"]) == (200, "ignored") and "paid already" in body["why"]
    rows["in_a"]["status"] = "void"  # (final: nothing moves it on)
    status, body = await _post(_body(event_id="evt_i2", kind="invoice.paid"))
    assert body["action"] == "ignored" and "void already" in body["why"]
    # Its own finalize's, its own write-off's, a declined pay it was answered.
    for n, (kind, held) in enumerate(
        [
            ("invoice.finalized", "open"),
            ("invoice.marked_uncollectible", "uncollectible"),
            ("invoice.payment_failed", "open"),
        ]
    ):
        rows["in_a"]["status"] = held
        status, body = await _post(_body(event_id=f"evt_e{n}", kind=kind))
        assert body["action"] == "ignored" and f"{held} already" in body["why"], body
    rows["in_a"].update(status="open", provider_invoice_id="in_other")
    status, body = await _post(_body(event_id="evt_i4"))
    assert body["action"] == "ignored" and "another provider invoice" in body["why"]
    assert seen.sent == []


async def test_an_unrecorded_invoice_is_asked_again_while_recent_then_dropped(
    seen: SimpleNamespace,  # noqa: F811
    rows: dict[str, Any],
) -> None:
    await assert_unrecorded_is_asked_again_while_recent_then_dropped(
        seen, _body, "invoice", invoice="in_parked"
    )


async def test_invoice_events_share_the_tenants_refresh_budget(
    seen: SimpleNamespace,  # noqa: F811
    rows: dict[str, Any],
) -> None:
    await assert_the_tenants_refresh_budget_is_shared(seen, _body)


async def test_the_refresh_is_a_sealed_invoice_refresh(monkeypatch: pytest.MonkeyPatch) -> None:
    notice = InvoiceNotice("evt_9", "invoice.paid", TENANT, "in_a", "in_1", "paid", None)
    assert_a_sealed_refresh(monkeypatch, notice, "invoice.refresh", {"invoice_id": "in_a"})
