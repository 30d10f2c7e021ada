"""Review h78f F5: a `subscription.cancel` (at period end) parked with its answer lost and
re-driven by `dlq replay` after a newer command resumed the subscription. The update
handler guards this (_changed_since_first_attempt, review h77i); the cancel handler
did not. On Square (keyless CancelSubscription, "read first") the re-drive schedules the
cancel AGAIN, undoing the resume: the customer's subscription ends against the tenant's
latest command. On a keyed provider (the simulator, Stripe) the re-drive gets the stale
keyed answer and records cancel_at_period_end=true over the provider's false."""

from __future__ import annotations

import pytest

from tests.agents.harness import Harness, data, kind, new_tenant_id, simulator_of
from tests.agents.test_let_through import _answer, _command
from tests.agents.test_subscription_update import _subscribed

pytestmark = pytest.mark.asyncio


async def test_a_parked_cancel_re_driven_after_a_resume_does_not_write_the_cancel_back(
    harness: Harness,
) -> None:
    h = harness
    t = new_tenant_id()
    h.add_tenant(t, gateway_options={"lose_response_first": {f"ps:{t}:x1": 3}})
    await _subscribed(h, t)
    x1 = {"subscription_id": "s1", "at_period_end": True}
    emits = await h.processor.process(_command(t, "subscription.cancel", x1, "x1"))
    assert [e.topic for e in emits] == [h.settings.retry_topic]  # applied, answer lost
    # The tenant reads it back (the cancel is in effect), then resumes it.
    read = await _answer(h, _command(t, "subscription.refresh", {"subscription_id": "s1"}, "r1"))
    assert data(read)["object"]["cancel_at_period_end"] is True, data(read)
    u2 = {"subscription_id": "s1", "cancel_at_period_end": False}
    resumed = await _answer(h, _command(t, "subscription.update", u2, "u2"))
    assert kind(resumed) == "subscription.updated", data(resumed)
    out = await _answer(h, _command(t, "subscription.cancel", x1, "x1"))  # `dlq replay`
    assert kind(out) == "command.rejected", data(out)
    assert data(out)["reason"] == "invalid_state", data(out)
    assert "changed since this cancel was first tried" in data(out)["message"], data(out)
    sub = h.tables.subscriptions[f"{t}:s1"]
    at_provider = await simulator_of(h, t)._store.read(sub["provider_subscription_id"])
    assert at_provider is not None
    # The record says what the provider holds: resumed, as the newer command left it.
    assert (sub["cancel_at_period_end"], at_provider["cancel_at_period_end"]) == (False, False)
