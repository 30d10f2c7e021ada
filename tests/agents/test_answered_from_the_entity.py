"""An entity remembers when it applied a command and how its outcome was emitted (review
findings): answering a resend from it emits the very event first emitted, and once the
idempotency window has passed a command id names another request, as the README says."""

from __future__ import annotations

import time
from typing import Any

from paystream.agents.pipeline import Inbound
from paystream.client import build_command
from paystream.settings import CloudEventsMode
from paystream.streams.codec import KafkaRecord, encode_event
from tests.agents.harness import Harness, data, kind, outcome_of

_PAY = {"payment_id": "order-42", "amount": 1000, "currency": "USD",
        "payment_method_token": "pm_card_visa"}  # fmt: skip
_TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
_OTHER_TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def _record(tenant: str, offset: int, command: str, body: dict[str, Any], **kw: Any) -> Inbound:
    event = build_command(command, tenant, body, command_id="order-42", **kw)
    rec = encode_event(event, tenant.encode(), CloudEventsMode.BINARY)
    return Inbound(rec.key, rec.value, dict(rec.headers), int(time.time() * 1000),
                   "paystream.commands", 0, offset)  # fmt: skip


def _outcome_record(h: Harness, emits: list[Any]) -> KafkaRecord:
    (record,) = [e.record for e in emits if e.topic == h.settings.events_topic]
    return record


def _age(h: Harness, tenant: str, seconds: float) -> None:
    """A day passes: the idempotency records are purged, the entity's memory ages."""
    h.idempotency.clear()
    payment = h.tables.payments[f"{tenant}:order-42"]
    for entry in payment["applied"].values():
        entry["at"] -= seconds


async def test_a_resend_answered_from_the_entity_is_the_first_event(harness: Harness) -> None:
    t = harness.add_tenant()
    first = _outcome_record(
        harness,
        await harness.raw(
            _record(t, 5, "payment.create", _PAY, traceparent=_TRACE, tracestate="v=1")
        ),
    )
    _age(harness, t, 2 * 24 * 3600)
    # Sent again, later and from another trace: the same request, answered as before.
    again = _outcome_record(
        harness,
        await harness.raw(_record(t, 900, "payment.create", _PAY, traceparent=_OTHER_TRACE)),
    )
    assert (again.key, again.value, again.headers) == (first.key, first.value, first.headers)


async def test_a_command_id_reused_past_its_window_names_another_request(
    harness: Harness,
) -> None:
    t = harness.add_tenant()
    await harness.raw(_record(t, 5, "payment.create", _PAY))
    refund = {"payment_id": "order-42", "amount": 100}
    # Within the window, another request under the id is a conflict (its records lost too).
    harness.idempotency.clear()
    out = outcome_of(harness.settings, await harness.raw(_record(t, 6, "refund.create", refund)))
    assert out is not None and data(out).get("reason") == "idempotency_conflict"
    _age(harness, t, 2 * 24 * 3600)
    out = outcome_of(harness.settings, await harness.raw(_record(t, 7, "refund.create", refund)))
    assert out is not None and kind(out) == "refund.succeeded", data(out)
