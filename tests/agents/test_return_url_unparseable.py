"""A return_url urllib cannot split (an unclosed "[") made the pre-call rule raise ValueError
inside the gateway call: a bug of ours by the pipeline's reckoning, parked unanswered as one
that may have charged (review h68ak). It is refused `validation_error`."""

from __future__ import annotations

from typing import Any

import pytest

from paystream.agents.pipeline import Inbound
from paystream.client import build_command
from tests.agents.harness import Harness, data, kind, outcome_of
from tests.agents.harness import binary_inbound as _inbound

pytestmark = pytest.mark.asyncio

_VISA = {"amount": 1000, "currency": "USD", "payment_method_token": "pm_card_visa"}


async def _as_the_agent_does(h: Harness, rec: Inbound) -> list[Any]:
    try:  # agents/commands.py: an exception of ours goes to dead_letter_bug
        return await h.processor.process(rec)
    except Exception:
        return h.processor.dead_letter_bug(rec)


@pytest.mark.parametrize("return_url", ["https://[shop.example/done", "http://[::1/return"])
async def test_an_unparseable_return_url_is_refused_not_parked_as_a_bug(
    harness: Harness, return_url: str
) -> None:
    t = harness.add_tenant()
    cmd = build_command(
        "payment.create", t, {**_VISA, "return_url": return_url}, command_id="c-url"
    )
    emits = await _as_the_agent_does(harness, _inbound(cmd, t, 1))
    out = outcome_of(harness.settings, emits)
    assert out is not None, ([e.topic for e in emits], harness.idempotency.get(f"{t}:c-url"))
    assert kind(out) == "command.rejected", data(out)
    assert data(out)["reason"] == "validation_error", data(out)
