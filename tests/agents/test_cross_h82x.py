"""Today's features together (review h82x): a trial ended now, parked, and re-driven
after its subscription was paused (the pause a command's, applied since)."""

from __future__ import annotations

import pytest

from tests.agents.harness import Harness, data, kind
from tests.agents.test_subscription_trial_end import _charges, _refresh
from tests.agents.test_subscription_update import _subscribed

pytestmark = pytest.mark.asyncio


async def test_a_parked_end_re_driven_after_a_pause_is_counted_once(harness: Harness) -> None:
    """Charged, its answer lost (parked); a refresh reads it active and the tenant pauses
    it: re-driven, the end is read back (paused, the trial ended: in effect) and its
    charge counted toward the day once, as when re-driven while active (it was held
    only while trialing, active or past_due: a paused one, live all the same, held and
    counted nothing, the 1,500 left past the cap)."""
    from tests.agents.harness import new_tenant_id
    from tests.agents.test_let_through import _answer, _command

    h = harness
    t = new_tenant_id()
    h.add_tenant(
        t,
        gateway_options={"lose_response_first": {f"ps:{t}:e1": 3}},
        limits={"daily_payment_volume": {"EUR": 2_000}},
    )
    await _subscribed(h, t, trial_days=14)
    end = {"subscription_id": "s1", "trial_end": "now"}
    emits = await h.processor.process(_command(t, "subscription.update", end, "e1"))
    assert [e.topic for e in emits] == [h.settings.retry_topic]
    read = await _refresh(h, t)
    assert data(read)["object"]["status"] == "active", data(read)
    paused = await h.send("subscription.pause", t, {"subscription_id": "s1"})
    assert kind(paused) == "subscription.paused", data(paused)
    out = await _answer(h, _command(t, "subscription.update", end, "e1"))  # `dlq replay`
    assert kind(out) == "subscription.updated", data(out)
    assert data(out)["object"]["status"] == "paused", data(out)
    assert len(await _charges(h, t)) == 1
    pay = {"amount": 600, "currency": "EUR", "payment_method_token": "pm_card_visa"}
    over = await h.send("payment.create", t, pay)
    assert data(over).get("reason") == "quota_exceeded", data(over)
    assert (data(over)["used"], data(over)["held"]) == (1500, 0), data(over)


async def test_todays_subscription_outcomes_match_their_published_payloads(
    harness: Harness,
) -> None:
    """A trial ended now (`subscription.updated` with ``trial_end_charge``), a pause
    with its ``resumes_at`` (`subscription.paused`, the record's ``pause_resumes_at``)
    and a resume (`subscription.resumed`), against their AsyncAPI payloads (no test sent
    them through the published schemas, which refuse a field they do not name)."""
    import time
    from pathlib import Path

    import yaml

    from tests.agents.harness import new_tenant_id
    from tests.test_docs import validator

    doc = yaml.safe_load((Path(__file__).parents[2] / "docs" / "asyncapi.yaml").read_text())
    h = harness
    t = new_tenant_id()
    h.add_tenant(t)
    await _subscribed(h, t, trial_days=14)
    ended = await h.send("subscription.update", t, {"subscription_id": "s1", "trial_end": "now"})
    assert data(ended).get("trial_end_charge") == "paid", data(ended)
    at = int(time.time()) + 7 * 86_400
    pause = {"subscription_id": "s1", "resumes_at": at}
    paused = await h.send("subscription.pause", t, pause)
    assert data(paused)["object"].get("pause_resumes_at") is not None, data(paused)
    resumed = await h.send("subscription.resume", t, {"subscription_id": "s1"})
    for out, outcome in (
        (ended, "subscription.updated"),
        (paused, "subscription.paused"),
        (resumed, "subscription.resumed"),
    ):
        assert kind(out) == outcome, data(out)
        pointer = f"/components/messages/outcome.{outcome}/payload"
        validator(doc, pointer, draft7=True).validate(data(out))
