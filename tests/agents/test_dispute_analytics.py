"""A dispute's life as the handlers emit it, read by the insights (observe): opened once,
lost once, whichever outcomes carry it on the way, including an accept re-driven after a
refresh recorded the loss (its `dispute.closed` says the dispute was lost already)."""

from __future__ import annotations

from typing import Any

import pytest
from cloudevents.core.v1.event import CloudEvent

from paystream.gateways.simulator import SimulatorGateway
from paystream.insights.observe import observe
from paystream.tenancy.models import Tenant
from tests.agents.harness import Harness, data, kind, new_tenant_id
from tests.agents.test_let_through import _answer, _command

pytestmark = pytest.mark.asyncio
DISPUTED = {"payment_id": "p1", "amount": 1000, "currency": "USD",
            "payment_method_token": "pm_card_createDispute"}  # fmt: skip


def _gateway(h: Harness, tenant: str) -> SimulatorGateway:
    gateway = h.pool.get(Tenant.model_validate(h.tenants[tenant]))
    assert isinstance(gateway, SimulatorGateway)
    return gateway


def _counted(outcomes: list[CloudEvent]) -> tuple[list[Any], list[Any]]:
    seen = [observe(o) for o in outcomes]
    assert all(s is not None for s in seen)
    return (
        [d for s in seen if s for d in s.disputes_opened],
        [d for s in seen if s for d in s.disputes_lost],
    )


async def test_a_dispute_is_opened_once_and_lost_once_over_its_life(harness: Harness) -> None:
    """Raised at charge, answered with evidence, lost at the network, read back, read
    back again: one opened, one lost, in the charge's currency and minor units."""
    h = harness
    t = h.add_tenant()
    paid = await h.send("payment.create", t, DISPUTED)
    assert kind(paid) == "payment.succeeded", data(paid)
    [related] = data(paid)["related"]
    dispute = related["entity_id"]
    answered = await h.send(
        "dispute.submit_evidence",
        t,
        {"dispute_id": dispute, "evidence": {"uncategorized_text": "delivered"}},
    )
    assert data(answered)["object"]["status"] == "under_review"
    await _gateway(h, t).resolve_dispute(related["object"]["provider_dispute_id"], won=False)
    decided = await h.send("payment.refresh", t, {"payment_id": "p1"})
    assert [r["object"]["status"] for r in data(decided)["related"]] == ["lost"]
    again = await h.send("payment.refresh", t, {"payment_id": "p1"})
    opened, lost = _counted([paid, answered, decided, again])
    assert opened == [("USD", 1000)]
    assert lost == [("USD", 1000)]


async def test_an_accept_re_driven_after_a_refresh_read_the_loss_counts_it_once(
    harness: Harness,
) -> None:
    """The accept reaches the provider, its answer is lost (parked); Stripe's
    charge.dispute.closed webhook brings a refresh, which records the dispute lost;
    the accept re-driven then answers dispute.closed. Counted lost twice without its
    `previous_status` (the analytics cannot tell the two apart otherwise)."""
    h = harness
    t = new_tenant_id()
    h.add_tenant(t, gateway_options={"lose_response_first": {f"ps:{t}:acc": 3}})
    paid = await _answer(h, _command(t, "payment.create", DISPUTED, "k1"))
    dispute = data(paid)["related"][0]["entity_id"]
    emits = await h.processor.process(_command(t, "dispute.accept", {"dispute_id": dispute}, "acc"))
    assert [e.topic for e in emits] == [h.settings.retry_topic]
    read = await _answer(h, _command(t, "payment.refresh", {"payment_id": "p1"}, "r1"))
    assert [r["object"]["status"] for r in data(read)["related"]] == ["lost"]
    closed = await _answer(h, _command(t, "dispute.accept", {"dispute_id": dispute}, "acc"))
    assert kind(closed) == "dispute.closed", data(closed)
    assert data(closed)["previous_status"] == "lost"
    opened, lost = _counted([paid, read, closed])
    assert (opened, lost) == ([("USD", 1000)], [("USD", 1000)])


async def test_an_accept_says_what_the_dispute_was_and_is_one_loss(harness: Harness) -> None:
    h = harness
    t = h.add_tenant()
    paid = await h.send("payment.create", t, DISPUTED)
    accepted = await h.send(
        "dispute.accept", t, {"dispute_id": data(paid)["related"][0]["entity_id"]}
    )
    assert kind(accepted) == "dispute.closed", data(accepted)
    assert data(accepted)["previous_status"] == "needs_response"
    assert _counted([paid, accepted]) == ([("USD", 1000)], [("USD", 1000)])
