"""paystream_command_rejections_total: every rejection is counted with its reason, on
each path that answers command.rejected (a rule before the handler, the handler's own
refusal, the provider's refusal of the request itself), beside paystream_commands_total."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import REGISTRY

from tests.agents.harness import Harness, data, kind

pytestmark = pytest.mark.asyncio


def _count(metric: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(metric, labels) or 0.0


@pytest.mark.parametrize(
    ("command", "body", "reason", "by_provider"),
    [
        # before the handler: the data does not validate
        ("payment.create", {"amount": -5, "currency": "USD"}, "validation_error", False),
        # the handler refuses: no such payment
        ("payment.capture", {"payment_id": "nope"}, "not_found", False),
        # the provider refuses the parameters (below Stripe's minimum charge)
        (
            "payment.create",
            {"amount": 10, "currency": "USD", "payment_method_token": "pm_card_visa"},
            "validation_error",
            True,
        ),
    ],
    ids=["rule", "handler", "provider"],
)
async def test_each_rejection_is_counted_with_its_reason(
    harness: Harness, command: str, body: dict[str, Any], reason: str, by_provider: bool
) -> None:
    t = harness.add_tenant()
    out = await harness.send(command, t, body)
    assert (kind(out), data(out)["reason"]) == ("command.rejected", reason), data(out)
    assert ("error" in data(out)) is by_provider, data(out)  # the provider's own error
    assert (
        _count("paystream_command_rejections_total", tenant=t, command=command, reason=reason) == 1
    )
    assert (
        _count("paystream_commands_total", tenant=t, command=command, outcome="command.rejected")
        == 1
    )


async def test_a_declined_card_is_an_outcome_not_a_rejection(harness: Harness) -> None:
    t = harness.add_tenant()
    body = {"amount": 1000, "currency": "USD", "payment_method_token": "pm_card_chargeDeclined"}
    out = await harness.send("payment.create", t, body)
    assert kind(out) == "payment.failed"
    assert not [
        s
        for m in REGISTRY.collect()
        if m.name == "paystream_command_rejections"
        for s in m.samples
        if s.labels.get("tenant") == t
    ]


async def test_a_made_up_tenants_parked_command_is_counted_as_unregistered(
    harness: Harness,
) -> None:
    """Without a master key a first-attempt time is believed as it stands: a made-up
    tenant's "re-drive" is parked stale, and its id became a label, a series each for
    ever (review finding)."""
    import itertools
    import time

    from paystream.agents.pipeline import Inbound
    from paystream.client import build_command
    from paystream.settings import CloudEventsMode
    from paystream.streams.codec import encode_event

    offsets = itertools.count(1)
    before = _count("paystream_parked_total", tenant="(unregistered)", reason="stale")
    for n in range(3):
        tenant = f"made-up-{n}"
        body = {"amount": 1, "currency": "USD", "payment_method_token": "pm_card_visa"}
        event = build_command("payment.create", tenant, body)
        rec = encode_event(event, tenant.encode(), CloudEventsMode.BINARY)
        headers = {**dict(rec.headers), "paystream-first-attempt-ms": b"1"}
        emits = await harness.processor.process(
            Inbound(rec.key, rec.value, headers, int(time.time() * 1000), "c", 0, next(offsets))
        )
        assert [e.topic for e in emits] == [harness.settings.retry_topic]
        assert _count("paystream_parked_total", tenant=tenant, reason="stale") == 0
    after = _count("paystream_parked_total", tenant="(unregistered)", reason="stale")
    assert after - before == 3
