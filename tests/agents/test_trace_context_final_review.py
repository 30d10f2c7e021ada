"""The trace-context exemption: what the last review round (11) found left."""

from __future__ import annotations

import pytest

from paystream.client import build_command
from paystream.settings import CloudEventsMode
from tests.agents.conftest import running_harness
from tests.agents.harness import Harness, data, kind, outcome_of
from tests.agents.test_trace_context_card_data import (
    _PAY,
    NEW_RELIC,
    TRACEPARENT,
    _blob,
    _inbound,
)

pytestmark = pytest.mark.asyncio


async def test_a_re_sent_command_with_a_large_card_like_trace_keeps_its_answer(
    harness: Harness,
) -> None:
    """The same command (same id, same request) re-sent with over 16 KiB of trace context:
    admitted (its key has a record), its trace dropped from the event, but the value's text
    scan no longer exempts it: a payment answered payment.succeeded is now answered
    card_data_forbidden for one New Relic tracestate member."""
    t = harness.add_tenant()
    first = build_command("payment.create", t, _PAY, idempotency_key="k-big")
    out = outcome_of(
        harness.settings, await harness.raw(_inbound(harness, first, CloudEventsMode.STRUCTURED, 1))
    )
    assert out is not None and kind(out) == "payment.succeeded"
    again = build_command(
        "payment.create", t, _PAY, idempotency_key="k-big", command_id=first.get_id(),
        traceparent=TRACEPARENT, tracestate=f"{NEW_RELIC},a=" + "b" * 17_000,
    )  # fmt: skip
    out2 = outcome_of(
        harness.settings, await harness.raw(_inbound(harness, again, CloudEventsMode.STRUCTURED, 2))
    )
    assert out2 is not None
    assert kind(out2) == "payment.succeeded", data(out2)


async def test_a_redelivered_oversized_command_gets_its_first_answer(harness: Harness) -> None:
    """First emission: payload_too_large (no record under its key). Another command of
    the key runs next (same batch); the first record is redelivered (crash before the
    commit) and is admitted now: a second, different answer for one command record."""
    t = harness.add_tenant()
    big = build_command("payment.create", t, _PAY, idempotency_key="k-r", traceparent="0" * 20_000)
    rec = _inbound(harness, big, CloudEventsMode.STRUCTURED, 1)
    first = outcome_of(harness.settings, await harness.raw(rec))
    assert first is not None and data(first)["reason"] == "payload_too_large"
    small = build_command("payment.create", t, _PAY, idempotency_key="k-r")
    other = outcome_of(
        harness.settings, await harness.raw(_inbound(harness, small, CloudEventsMode.STRUCTURED, 2))
    )
    assert other is not None and kind(other) == "payment.succeeded"
    again = outcome_of(harness.settings, await harness.raw(rec))  # redelivered
    assert again is not None
    assert (kind(again), again.get_id()) == (kind(first), first.get_id()), (
        kind(again),
        data(again),
    )


async def test_control_small_card_like_trace_re_sent_is_replayed(harness: Harness) -> None:
    t = harness.add_tenant()
    first = build_command("payment.create", t, _PAY, idempotency_key="k-small")
    await harness.raw(_inbound(harness, first, CloudEventsMode.STRUCTURED, 1))
    again = build_command(
        "payment.create", t, _PAY, idempotency_key="k-small", command_id=first.get_id(),
        traceparent=TRACEPARENT, tracestate=f"{NEW_RELIC},a=b",
    )  # fmt: skip
    out2 = outcome_of(
        harness.settings, await harness.raw(_inbound(harness, again, CloudEventsMode.STRUCTURED, 2))
    )
    assert out2 is not None and kind(out2) == "payment.succeeded", data(out2)


@pytest.mark.parametrize("mode", list(CloudEventsMode))
async def test_a_let_through_commands_park_keeps_no_trace_state_security_code(
    redis_url: str, mode: CloudEventsMode
) -> None:
    """Let through once (its id parked before), a command with `cvc=737` in its trace
    state runs "without its trace state": a binary park drops the ce_tracestate header,
    but a structured park kept the body, `"tracestate": "cvc=737"` and all."""
    async with running_harness(redis_url) as h:
        t = h.add_tenant(gateway_options={"fail_first": {"*": 5}})
        first = build_command("customer.create", t, {}, traceparent=TRACEPARENT)
        [park] = await h.raw(_inbound(h, first, mode, 1))
        assert park.topic == h.settings.retry_topic
        again = build_command(
            "customer.create", t, {}, command_id=first.get_id(), traceparent=TRACEPARENT,
            tracestate="cvc=737",
        )  # fmt: skip
        emits = await h.raw(_inbound(h, again, mode, 2))
        assert [e.topic for e in emits] == [h.settings.retry_topic], [e.topic for e in emits]
        assert "cvc=737" not in _blob(emits), _blob(emits)
