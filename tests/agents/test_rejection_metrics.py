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
