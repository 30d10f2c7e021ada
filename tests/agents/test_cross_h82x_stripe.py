"""A trialing Stripe subscription paused in Stripe's dashboard (Stripe takes
``pause_collection`` on a trialing one too), then resumed, by `subscription.resume` or in
the dashboard (review h82x): localstripe with its FAKE of trials and of
``pause_collection`` (tests/fixtures/localstripe_server.py)."""

from __future__ import annotations

import aiohttp
import pytest

from tests.agents.harness import Harness, data, kind
from tests.agents.test_subscription_proration_stripe import AUTH
from tests.agents.test_subscription_trial_end_stripe import _trialing, sh  # noqa: F401

pytestmark = pytest.mark.asyncio


async def _pause_collection(url: str, provider_id: str, value: str) -> None:
    """As Stripe's dashboard: ``pause_collection`` set (``void``) or lifted (``""``)."""
    body = {"pause_collection[behavior]": value} if value else {"pause_collection": ""}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{url}/v1/subscriptions/{provider_id}", data=body, headers=AUTH) as resp,
    ):
        assert resp.status == 200, await resp.text()


@pytest.mark.parametrize("by", ["subscription.resume", "dashboard"])
async def test_a_trial_paused_at_stripe_is_resumed_trialing(
    sh: Harness,  # noqa: F811
    localstripe_url: str,
    by: str,
) -> None:
    """Read back paused, then resumed: trialing again (before, paused could not become
    trialing: the resume, sent and in effect at Stripe, and every refresh after were
    refused invalid_state, the record paused for good)."""
    h = sh
    t = await _trialing(h)
    provider_id = h.tables.subscriptions[f"{t}:s1"]["provider_subscription_id"]
    await _pause_collection(localstripe_url, provider_id, "void")
    read = await h.send("subscription.refresh", t, {"subscription_id": "s1"})
    assert data(read)["object"]["status"] == "paused", data(read)
    if by == "dashboard":
        await _pause_collection(localstripe_url, provider_id, "")
        out = await h.send("subscription.refresh", t, {"subscription_id": "s1"})
        assert kind(out) == "subscription.updated", (kind(out), data(out))
    else:
        out = await h.send("subscription.resume", t, {"subscription_id": "s1"})
        assert kind(out) == "subscription.resumed", (kind(out), data(out))
    assert data(out)["object"]["status"] == "trialing", data(out)
    assert h.tables.subscriptions[f"{t}:s1"]["status"] == "trialing"
