"""Insights review findings: an outcome on another partition, and declines read back by
a refresh."""

from __future__ import annotations

from typing import Any

import pytest

from paystream.insights.events import ALERT_TYPE, WINDOW_TYPE
from tests.insights.test_runner import PAID, T0, Harness

pytestmark = pytest.mark.asyncio
MIN = 60_000


def _at(h: Harness, ev: Any, partition: int, offset: int) -> Any:
    ev.message.partition = partition
    ev.message.offset = offset
    return ev


async def test_an_outcome_of_a_tenant_on_another_partition_does_not_blind_its_own() -> None:
    """acme's outcomes are on partition 0 (offsets ~100). One outcome under acme's id read
    on partition 1 (a producer of paystream.events with another partitioner, or a forged
    one: the README says forged outcomes are expected) at offset 5000: `through` becomes
    5000, and every later outcome of acme on partition 0 (offsets < 5000) is skipped as
    "applied before", silently (no skip metric), for good. Now it is skipped itself
    (other_partition) and acme's own are counted."""
    h = Harness("xpart")
    await h.runner.run_batch([_at(h, h.event("payment.succeeded", PAID, cid="a1"), 0, 100)])
    await h.runner.run_batch([_at(h, h.event("payment.succeeded", PAID, cid="x1"), 1, 5000)])
    await h.runner.run_batch(
        [_at(h, h.event("payment.succeeded", PAID, cid=f"a{i}"), 0, 100 + i) for i in range(2, 6)]
    )
    h.now = (T0 + 70_000) / 1000
    await h.runner.tick(lambda p: True)
    windows = [w.get_data() for w in h.of_type(WINDOW_TYPE)]
    # a1 and a2..a5: x1 is not acme's partition's
    assert max(w["events"] for w in windows) == 5, windows


def _payment(status: str, **fields: Any) -> dict[str, Any]:
    obj = {
        "amount": 500,
        "currency": "USD",
        "capture_method": "automatic",
        "status": status,
        "customer_id": "cus_1",
    }
    return {"object": {**obj, **fields}}


async def test_declines_read_back_by_a_refresh_reach_the_fraud_rules() -> None:
    """A 3-D Secure tenant: five payments of one customer wait on authentication
    (attempts), each read back `payment.failed` with card_declined (the issuer refused
    after the step). The analytics count five card declines (money `declined`), the
    fraud rules none: `_rules` returns at once for an outcome that is not an attempt,
    so no subject_declines alert ever fires for declines seen through a refresh (nor
    for another card declined through the client secret on a failed payment)."""
    h = Harness("refresh-fraud")
    batch = [
        h.event("payment.requires_action", _payment("requires_action"), cid=f"p{i}")
        for i in range(5)
    ]
    batch += [
        h.event(
            "payment.failed",
            {
                **_payment("failed", failure_code="card_declined"),
                "previous_status": "requires_action",
                "error": {"code": "card_declined", "decline_code": "generic_decline"},
            },
            cid=f"r{i}",
        )
        for i in range(5)
    ]
    await h.runner.run_batch(batch)
    st = h.state.get("acme")
    [window] = st["windows"].values()
    assert window["money"]["USD"]["declined"] == 2500  # the analytics see 5 card declines
    [fw] = st["fraud"].values()
    assert fw["declines"] == 5, fw
    assert len(h.of_type(ALERT_TYPE)) == 1
