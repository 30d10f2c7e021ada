"""A vouched binary re-drive over the attribute limit (review h58p) ran with its
CloudEvents headers unbounded (the value is held to the 256 KiB ceiling, the
headers to nothing): a producer re-sending its own parked request with a first-attempt
header and a ~1 MiB ce_ extension makes the worker park a record over the broker's
message size (the park copies every ce_ header), which stopped its batch for good. One
whose park would not fit where a dead letter does now waits unanswered instead."""

from __future__ import annotations

import time

import pytest

from paystream.agents.pipeline import Inbound
from paystream.client import build_command
from paystream.first_attempt import FIRST_ATTEMPT_HEADER
from paystream.settings import CloudEventsMode
from paystream.streams.codec import encode_event
from tests.agents.harness import Harness, new_tenant_id

pytestmark = pytest.mark.asyncio

_BODY = {"amount": 5000, "currency": "USD", "payment_method_token": "pm_card_visa",
         "payment_id": "p1"}  # fmt: skip
BROKER_MAX = 1048588  # Kafka's default message.max.bytes (a whole batch of one record)


def _batch(key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]) -> int:
    """Bytes of a one-record batch of it, as the broker measures against message.max.bytes."""
    from aiokafka.record.default_records import DefaultRecordBatchBuilder

    b = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, 2**24)
    b.append(0, int(time.time() * 1000), key, value, headers)
    return b.size()


def _in(rec: Inbound) -> int:
    return _batch(rec.key, rec.value, list(rec.headers.items()))


def _cmd(tenant: str, offset: int, ext: int = 0) -> Inbound:
    event = build_command("payment.create", tenant, _BODY, command_id="c1")
    if ext:
        event = type(event)({**event.get_attributes(), "bigext": "x" * ext}, event.get_data())
    rec = encode_event(event, tenant.encode(), CloudEventsMode.BINARY)
    return Inbound(
        rec.key, rec.value, dict(rec.headers), int(time.time() * 1000),
        "paystream.commands", 0, offset,
    )  # fmt: skip


async def test_a_redrive_with_a_huge_header_is_not_parked_over_the_broker_limit(
    harness: Harness,
) -> None:
    h = harness
    t = new_tenant_id()
    # The provider loses its answers for a while (an outage): c1 is parked.
    h.add_tenant(t, gateway_options={"lose_response_first": {f"pse:{t}:payment:p1": 100}})
    emits = await h.processor.process(_cmd(t, 1))
    assert [e.topic for e in emits] == [h.settings.retry_topic]
    # The sender re-sends its own request: first-attempt header, a ~1 MiB ce_ header,
    # sized to fit the broker as it is.
    probe = _cmd(t, 2, ext=1)
    probe.headers[FIRST_ATTEMPT_HEADER] = str(int(time.time() * 1000) - 60_000).encode()
    ext = BROKER_MAX - _in(probe)
    while True:
        hostile = _cmd(t, 2, ext=ext)
        hostile.headers[FIRST_ATTEMPT_HEADER] = probe.headers[FIRST_ATTEMPT_HEADER]
        if _in(hostile) <= BROKER_MAX:
            break
        ext -= 1
    assert _in(hostile) <= BROKER_MAX  # the broker took it (exactly at its limit)
    emits = await h.processor.process(hostile)
    sizes = {e.topic: _batch(e.record.key, e.record.value, list(e.record.headers)) for e in emits}
    assert all(s <= BROKER_MAX for s in sizes.values()), sizes
