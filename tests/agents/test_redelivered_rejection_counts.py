"""A redelivered record (same partition and offset, after a crash) is counted in
paystream_commands_total / paystream_command_rejections_total once, as a success is, and
its repeat as a replay (review h60d: a rate-limited one was counted at each delivery,
and raised the rejection ratio alerts watch after every rebalance). A rejection decided
from the record alone is counted at each delivery, as the metrics' help says."""

from __future__ import annotations

from prometheus_client import REGISTRY

from tests.agents.harness import Harness, data, kind, outcome_of
from tests.agents.test_limits import T0, _pay, _record


def _v(metric: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(metric, labels) or 0.0


async def _twice(h: Harness, rec) -> str:  # type: ignore[no-untyped-def]
    first = outcome_of(h.settings, await h.processor.process(rec))
    again = outcome_of(h.settings, await h.processor.process(rec))  # the crash redelivery
    assert first is not None and again is not None and first.get_id() == again.get_id()
    return kind(first) if kind(first) != "command.rejected" else data(first)["reason"]


async def test_a_redelivered_success_is_counted_once(harness: Harness) -> None:
    t = harness.add_tenant()
    rec = _record("payment.create", t, _pay(100), "ok", T0, 1)
    assert await _twice(harness, rec) == "payment.succeeded"
    assert _v("paystream_commands_total", tenant=t, command="payment.create",
              outcome="payment.succeeded") == 1  # fmt: skip
    assert _v("paystream_replayed_commands_total", tenant=t, via="idempotency") == 1


async def test_a_redelivered_rate_limited_command_is_counted_once(harness: Harness) -> None:
    t = harness.add_tenant(limits={"commands_per_second": 1, "burst": 1})
    await harness.processor.process(_record("customer.create", t, {}, "first", T0, 1))
    rec = _record("payment.create", t, _pay(100), "limited", T0, 2)
    assert await _twice(harness, rec) == "rate_limited"
    assert _v("paystream_limited_commands_total", tenant=t, limit="commands_per_second") == 1
    rejected = dict(tenant=t, command="payment.create", reason="rate_limited")
    counted = (
        _v("paystream_command_rejections_total", **rejected),
        _v("paystream_commands_total", tenant=t, command="payment.create",
           outcome="command.rejected"),
    )  # fmt: skip
    assert counted == (1, 1)
    assert _v("paystream_replayed_commands_total", tenant=t, via="rejection") == 1


async def test_a_redelivered_validation_error_is_counted_once(harness: Harness) -> None:
    t = harness.add_tenant()
    rec = _record("payment.create", t, {"amount": -5, "currency": "USD"}, "bad", T0, 1)
    assert await _twice(harness, rec) == "validation_error"
    rejected = dict(tenant=t, command="payment.create", reason="validation_error")
    assert _v("paystream_command_rejections_total", **rejected) == 1


async def test_a_redelivered_unknown_command_is_counted_at_each_delivery(
    harness: Harness,
) -> None:
    """Nothing of its tenant's state is read or kept for it: nothing says it was
    answered before (documented in the help of both metrics)."""
    from paystream.agents.pipeline import Inbound
    from paystream.client import build_command
    from paystream.settings import CloudEventsMode
    from paystream.streams.codec import encode_event

    t = harness.add_tenant()
    event = build_command("customer.create", t, {}, command_id="u1")
    event.get_attributes()["type"] = "com.paystream.command.payment.teleport"
    r = encode_event(event, t.encode(), CloudEventsMode.BINARY)
    rec = Inbound(r.key, r.value, dict(r.headers), T0, "paystream.commands", 0, 7)
    assert await _twice(harness, rec) == "unknown_command"
    rejected = dict(tenant=t, command="unknown", reason="unknown_command")
    assert _v("paystream_command_rejections_total", **rejected) == 2
    assert "counted at each delivery" in str(
        REGISTRY._names_to_collectors["paystream_command_rejections"]._documentation  # type: ignore[attr-defined]
    )
