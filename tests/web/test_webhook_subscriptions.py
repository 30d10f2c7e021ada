"""Stripe's subscription and invoice events bring a sealed ``subscription.refresh`` of
the subscription their metadata names, through the same bounds as a payment's event
(lookups, budget, 503 while unrecorded and recent, dropped once old); another tenant's
or account's are ignored. In process: the view alone (tests/web/test_webhook_lookups.py's
fakes), and the refresh command built for real."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

import paystream.web.webhooks as wh
from paystream.gateways.base import SUBSCRIPTION_REF_KEY
from paystream.gateways.webhook_notices import SubscriptionNotice
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


def _event(
    kind: str = "invoice.payment_failed",
    *,
    event_id: str = "evt_s1",
    tenant: str = TENANT,
    subscription: str = "sub_p1",
    provider_id: str = "sub_1",
    created: int | None = None,
    **fields: Any,
) -> bytes:
    meta = {SUBSCRIPTION_REF_KEY: f"{tenant}:{subscription}"}
    if kind.startswith("invoice."):
        obj: dict[str, Any] = {
            "id": "in_2",
            "object": "invoice",
            "status": "open",
            "parent": {
                "type": "subscription_details",
                "subscription_details": {"subscription": provider_id, "metadata": meta},
            },
        }
    else:
        obj = {"id": provider_id, "object": "subscription", "status": "past_due", "metadata": meta}
    return json.dumps(stripe_event(kind, event_id, obj, created, **fields)).encode()


@pytest.fixture
def rows(seen: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:  # noqa: F811
    held = {"sub_p1": {"provider_subscription_id": "sub_1", "status": "active"}}

    async def row(tenant: str, table: Any, kind: str, entity_id: str) -> Any:
        assert kind == "invoices"
        seen.lookups += 1
        return None  # (its invoice not recorded: a renewal's)

    monkeypatch.setattr(wh, "_row", row)
    return held_rows(seen, monkeypatch, "subscription_id", held)


@pytest.mark.parametrize(
    "kind",
    [
        "invoice.paid",
        "invoice.payment_failed",
        "customer.subscription.updated",
        "customer.subscription.deleted",
    ],
)
async def test_a_subscription_event_brings_its_refresh(
    seen: SimpleNamespace,  # noqa: F811
    rows: dict[str, Any],
    kind: str,
) -> None:
    ids = {"subscription_id": "sub_p1", "provider_subscription_id": "sub_1"}
    await assert_it_brings_its_refresh(seen, _event(kind), SubscriptionNotice, ids)


async def test_another_tenants_or_accounts_subscription_event_is_ignored(
    seen: SimpleNamespace,  # noqa: F811
    rows: dict[str, Any],
) -> None:
    await assert_another_tenants_and_accounts_are_ignored(seen, _event, "subscription")


async def test_a_canceled_or_another_provider_subscription_is_not_refreshed(
    seen: SimpleNamespace,  # noqa: F811
    rows: dict[str, Any],
) -> None:
    rows["sub_p1"]["status"] = "canceled"
    status, body = await _post(_event("customer.subscription.deleted"))
    assert (status, body["action"]) == (200, "ignored") and "canceled already" in body["why"]
    rows["sub_p1"].update(status="active", provider_subscription_id="sub_other")
    status, body = await _post(_event(event_id="evt_s2"))
    assert body["action"] == "ignored" and "another provider subscription" in body["why"]
    assert seen.sent == []


async def test_an_unrecorded_subscription_is_asked_again_while_recent_then_dropped(
    seen: SimpleNamespace,  # noqa: F811
    rows: dict[str, Any],
) -> None:
    await assert_unrecorded_is_asked_again_while_recent_then_dropped(
        seen, _event, "subscription", subscription="sub_parked"
    )


async def test_subscription_events_share_the_tenants_refresh_budget(
    seen: SimpleNamespace,  # noqa: F811
    rows: dict[str, Any],
) -> None:
    await assert_the_tenants_refresh_budget_is_shared(seen, _event)


async def test_the_refresh_is_a_sealed_subscription_refresh(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    notice = SubscriptionNotice("evt_9", "invoice.paid", TENANT, "sub_p1", "sub_1", None)
    assert_a_sealed_refresh(
        monkeypatch, notice, "subscription.refresh", {"subscription_id": "sub_p1"}
    )
