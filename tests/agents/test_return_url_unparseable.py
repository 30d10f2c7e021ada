"""A return_url urllib cannot split (an unclosed "[") made the pre-call rule raise ValueError
inside the gateway call: a bug of ours by the pipeline's reckoning, parked unanswered as one
that may have charged (review h68ak). It is refused `validation_error`."""

from __future__ import annotations

import time
from typing import Any

import pytest

from paystream.agents.pipeline import Inbound
from paystream.client import build_command
from paystream.settings import CloudEventsMode
from paystream.streams.codec import encode_event
from tests.agents.harness import Harness, data, kind, outcome_of

pytestmark = pytest.mark.asyncio

_VISA = {"amount": 1000, "currency": "USD", "payment_method_token": "pm_card_visa"}


def _inbound(event: Any, tenant: str, offset: int) -> Inbound:
    rec = encode_event(event, tenant.encode(), CloudEventsMode.BINARY)
    return Inbound(
        rec.key, rec.value, dict(rec.headers), int(time.time() * 1000),
        "paystream.commands", 0, offset,
    )  # fmt: skip


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
