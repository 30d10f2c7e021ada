"""A park is bounded as produced, not as its command came (review h58o): a structured
command's park value is written again by park_value when it drops card-like trace
context, and numbers written short ("1e15") come out longer ("1000000000000000.0"): a
re-drive under the limit as it came was parked over the broker's message size."""

from __future__ import annotations

import itertools
import string
import time

import orjson
import pytest

from paystream.agents.inbound import record_size
from paystream.agents.pipeline import PARK_MAX_BYTES, Inbound
from paystream.client import build_command
from paystream.first_attempt import FIRST_ATTEMPT_HEADER
from paystream.settings import CloudEventsMode
from paystream.streams.codec import encode_event
from tests.agents.harness import Harness, new_tenant_id
from tests.agents.test_redrive_outsized import BROKER_MAX, _batch

pytestmark = pytest.mark.asyncio

_BODY = {"amount": 5000, "currency": "USD", "payment_method_token": "pm_card_visa",
         "payment_id": "p1"}  # fmt: skip


def _rec(tenant: str, offset: int, mode: CloudEventsMode, value: bytes | None = None,
         extra: dict[str, bytes] | None = None) -> Inbound:  # fmt: skip
    event = build_command("payment.create", tenant, _BODY, command_id="c1")
    rec = encode_event(event, tenant.encode(), mode)
    headers = {**dict(rec.headers), **(extra or {})}
    return Inbound(rec.key, value if value is not None else rec.value, headers,
                   int(time.time() * 1000), "paystream.commands", 0, offset)  # fmt: skip


async def test_a_park_that_would_grow_past_the_broker_limit_is_dead_lettered(
    harness: Harness,
) -> None:
    h = harness
    t = new_tenant_id()
    h.add_tenant(t, gateway_options={"lose_response_first": {f"pse:{t}:payment:p1": 100}})
    emits = await h.processor.process(_rec(t, 1, CloudEventsMode.BINARY))
    assert [e.topic for e in emits] == [h.settings.retry_topic]  # c1 parked (outage)
    # The same request, re-sent structured with its first-attempt header: a trace
    # state that reads as a card number (so park_value rewrites the body), ~250 KiB of
    # short-written numbers, and ce_ headers up to record_size == PARK_MAX_BYTES.
    body = orjson.loads(_rec(t, 2, CloudEventsMode.STRUCTURED).value)
    body["traceparent"] = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    body["tracestate"] = "v=4242424242424242"
    # Scalar extensions of numbers written short: json.dumps writes 1e15 as
    # 1000000000000000.0 (an extension each: the SDK takes only scalars).
    names = (
        "".join(p) for p in itertools.product(string.ascii_lowercase + string.digits, repeat=3)
    )
    value = orjson.dumps(body)[:-1]
    while len(value) < 250 * 1024:
        value += b',"x' + next(names).encode() + b'":1e15'
    value += b"}"
    first = str(int(time.time() * 1000) - 60_000).encode()
    probe = _rec(t, 2, CloudEventsMode.STRUCTURED, value, {FIRST_ATTEMPT_HEADER: first})
    pad = PARK_MAX_BYTES - record_size(probe) - len("ce_pad")
    hostile = _rec(t, 2, CloudEventsMode.STRUCTURED, value,
                   {FIRST_ATTEMPT_HEADER: first, "ce_pad": b"x" * pad})  # fmt: skip
    assert len(value) <= 256 * 1024 and record_size(hostile) <= PARK_MAX_BYTES
    emits = await h.processor.process(hostile)
    sizes = {e.topic: _batch(e.record.key, e.record.value, list(e.record.headers)) for e in emits}
    assert all(s <= BROKER_MAX for s in sizes.values()), sizes
    letters = [dict(e.record.headers) for e in emits if e.topic == h.settings.dlq_topic]
    assert [d.get("paystream-dlq-reason") for d in letters] == [b"redrive_too_large"]
