"""Parks and the structured attribute limit around trace context (review round 10).

The decoder reads a structured body with the standard library's JSON parser, which takes
NaN, Infinity, 1e400 and integers past 64 bits; orjson refuses the first three. A park
that re-wrote a body with orjson returned such a body unchanged, card-like trace context
and all; a dead letter's security-code scan and its identity (for the rejection) gave up
on it the same way.
"""

from __future__ import annotations

import json

import pytest

from paystream.client import build_command
from paystream.settings import CloudEventsMode
from tests.agents.conftest import running_harness
from tests.agents.harness import Harness, data, kind, outcome_of
from tests.agents.test_trace_context_card_data import (
    _PAY,
    _W3C,
    CARD,
    _attrs,
    _blob,
    _inbound,
    _structured,
    replace_record,
)

pytestmark = pytest.mark.asyncio


def _with_extra(tenant: str, cid: str, trace: str, extra: str, data_: str = "{}") -> str:
    head = json.dumps(_attrs(tenant, cid, "customer.create"))[:-1]
    return f'{head}, {trace}, {extra}, "data": {data_}}}'


@pytest.mark.parametrize("extra", ['"x": NaN', '"x": 1e400', '"x": -Infinity'])
async def test_a_park_of_json_orjson_cannot_read_keeps_no_card_like_trace(
    redis_url: str, extra: str
) -> None:
    async with running_harness(redis_url) as h:
        t = h.add_tenant(gateway_options={"fail_first": {"*": 3}})
        text = _with_extra(t, "c-nan-1", f'"traceparent": "{CARD}"', extra)
        assert CARD not in _blob(await h.raw(_structured(h, t.encode(), text, 1)))


@pytest.mark.parametrize(
    ("extra", "kept"),
    [('"x": NaN', b"NaN"), ('"x": 1e400', b"Infinity"), ('"x": 18446744073709551616', None)],
)
async def test_a_rewritten_park_is_re_driven_as_the_same_command(
    redis_url: str, extra: str, kept: bytes | None
) -> None:
    async with running_harness(redis_url) as h:
        t = h.add_tenant(gateway_options={"fail_first": {"*": 3}})
        email = '{"email": "a@example.com"}'
        text = _with_extra(t, "c-nan-2", f'"traceparent": "{CARD}"', extra, email)
        [park] = await h.raw(_structured(h, t.encode(), text, 1))
        assert park.topic == h.settings.retry_topic and CARD not in _blob([park])
        assert (kept or extra.split(": ")[1].encode()) in park.record.value  # the same value
        h.add_tenant(t)  # the provider is well again
        out = outcome_of(h.settings, await h.raw(replace_record(h, park, 2)))
        assert out is not None and kind(out) == "customer.created", out and data(out)
        assert out.get_extension("causationid") == "c-nan-2"


@pytest.mark.parametrize(
    "trace",
    [
        f'"traceparent": {CARD}',
        f'"traceparent": {CARD}.0',
        '"traceparent": 4.111111111111111e15',
        f'"tracestate": {CARD}',
        f'"traceparent": "{_W3C}", "tracestate": {CARD}',
    ],
)
async def test_a_card_like_trace_attribute_that_is_no_string_is_not_kept(
    redis_url: str, trace: str
) -> None:
    async with running_harness(redis_url) as h:
        t = h.add_tenant(gateway_options={"fail_first": {"*": 3}})
        text = _with_extra(t, "c-num-1", trace, '"x": 1')
        assert CARD not in _blob(await h.raw(_structured(h, t.encode(), text, 1)))


@pytest.mark.parametrize(
    "names", [("ce_traceparent",), ("ce_tracestate",), ("ce_traceparent", "CE_TRACEPARENT")]
)
async def test_a_structured_commands_card_like_trace_header_is_not_parked(
    redis_url: str, names: tuple[str, ...]
) -> None:
    async with running_harness(redis_url) as h:
        t = h.add_tenant(gateway_options={"fail_first": {"*": 3}})
        body = {**_attrs(t, "c-th-1", "customer.create"), "traceparent": _W3C, "data": {}}
        headers = {
            n: (CARD if i or len(names) == 1 else _W3C).encode() for i, n in enumerate(names)
        }
        emits = await h.raw(_structured(h, t.encode(), json.dumps(body), 1, **headers))
        assert CARD not in _blob(emits)


@pytest.mark.parametrize("nan", ["", ', "x": NaN'])
async def test_a_dead_lettered_trace_state_security_code_is_not_kept(
    harness: Harness, nan: str
) -> None:
    """Not a CloudEvent (no specversion): with NaN in it, the dead letter kept its bytes,
    `cvc=737` and all, and its sender got no answer."""
    t = harness.add_tenant()
    body = json.dumps({**_attrs(t, "c-cvc-1", "customer.create"), "tracestate": "cvc=737"})
    body = body.replace('"specversion": "1.0", ', "")[:-1] + f', "data": {{}}{nan}}}'
    emits = await harness.raw(_structured(harness, t.encode(), body, 1))
    assert all(b"737" not in e.record.value for e in emits)
    out = outcome_of(harness.settings, emits)
    assert out is not None and data(out)["reason"] == "card_data_forbidden"


@pytest.mark.parametrize(
    "second", ["same", "other-data", "other-id", "other-type", "same-id-other-data"]
)
async def test_a_key_admitted_before_does_not_let_a_60_kb_traceparent_be_echoed(
    harness: Harness, second: str
) -> None:
    """The limit spares a request admitted before; its key reused with a 60 KB
    traceparent was echoed in an idempotency_conflict rejection (or a new answer)."""
    t = harness.add_tenant()
    first = build_command("payment.create", t, _PAY, idempotency_key="k-1")
    out = outcome_of(
        harness.settings, await harness.raw(_inbound(harness, first, CloudEventsMode.STRUCTURED, 1))
    )
    assert out is not None and kind(out) == "payment.succeeded"
    body = {**_PAY, "amount": 200} if second.endswith("other-data") else _PAY
    ctype = "payment.capture" if second == "other-type" else "payment.create"
    if ctype == "payment.capture":
        body = {"payment_id": "pay_x"}
    cid = first.get_id() if second.startswith("same") else None
    big = build_command(
        ctype, t, body, idempotency_key="k-1", command_id=cid, traceparent="0" * 60_000
    )
    emits = await harness.raw(_inbound(harness, big, CloudEventsMode.STRUCTURED, 2))
    assert max(len(e.record.value) + sum(len(v) for _, v in e.record.headers)
               for e in emits if e.topic != harness.settings.dlq_topic) < 16_384  # fmt: skip


async def test_a_parked_keys_retry_with_a_60_kb_traceparent_stores_none_of_it(
    redis_url: str,
) -> None:
    async with running_harness(redis_url) as h:
        t = h.add_tenant(gateway_options={"fail_first": {"*": 3}})
        first = build_command("payment.create", t, _PAY, idempotency_key="k-2")
        [park] = await h.raw(_inbound(h, first, CloudEventsMode.STRUCTURED, 1))
        assert park.topic == h.settings.retry_topic
        h.add_tenant(t)  # the provider is well again
        big = build_command(
            "payment.create", t, _PAY, idempotency_key="k-2", traceparent="0" * 60_000,
            tracestate="a=" + "b" * 200,
        )  # fmt: skip
        emits = await h.raw(_inbound(h, big, CloudEventsMode.STRUCTURED, 2))
        assert max(len(e.record.value) + sum(len(v) for _, v in e.record.headers)
                   for e in emits if e.topic != h.settings.dlq_topic) < 16_384  # fmt: skip
        assert len(json.dumps([dict(h.idempotency), dict(h.tables.payments)])) < 16_384
