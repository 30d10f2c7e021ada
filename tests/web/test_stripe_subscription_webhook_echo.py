"""h73q review: Stripe's echo of paystream's own subscription call (the
customer.subscription.updated its cancel at period end makes) brings a refresh and a
second subscription.updated outcome with nothing changed, as a payment's echo does not
(_known_already: "the payment is succeeded already")."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace
from typing import Any

import pytest

import paystream.web.webhooks as wh
from paystream.gateways.base import SUBSCRIPTION_REF_KEY
from tests.web.test_webhook_lookups import TENANT, _post, seen  # noqa: F401 (fixture)

pytestmark = pytest.mark.asyncio

END = 1_762_592_000


@pytest.mark.xfail(
    strict=True,
    reason="known gap (review h73q): the echo of paystream's own subscription changes (a "
    "create's invoice.paid, a cancel at period end's update) is refreshed, not ignored as "
    "payment echoes are: a refresh with nothing new, 2-3 Stripe calls",
)
async def test_the_echo_of_paystreams_own_cancel_at_period_end_is_no_news(
    seen: SimpleNamespace,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    row = {"provider_subscription_id": "sub_1", "status": "active",
           "cancel_at_period_end": True,
           "current_period_end": "2025-11-08T08:53:20Z"}  # fmt: skip

    async def entity_row(tenant: str, notice: Any) -> Any:
        return row

    monkeypatch.setattr(wh, "_entity_row", entity_row)
    obj = {"id": "sub_1", "object": "subscription", "status": "active",
           "cancel_at_period_end": True,
           "items": {"data": [{"current_period_start": END - 30 * 86400,
                               "current_period_end": END}]},
           "metadata": {SUBSCRIPTION_REF_KEY: f"{TENANT}:sub_p1"}}  # fmt: skip
    event = {"id": "evt_echo", "type": "customer.subscription.updated",
             "created": int(time.time()), "data": {"object": obj,
             "previous_attributes": {"cancel_at_period_end": False}}}  # fmt: skip
    status, body = await _post(json.dumps(event).encode())
    assert (status, body["action"]) == (200, "ignored"), body
    assert seen.sent == []
