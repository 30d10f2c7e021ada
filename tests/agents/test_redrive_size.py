"""A re-driven command and the value limit (review findings): admitted at its first
attempt, it is not refused for its size later, when the provider may have acted on it;
and a park does not make a command larger than it came."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from paystream.agents.card_data import park_value
from paystream.agents.pipeline import Inbound
from paystream.client import build_command
from paystream.dlq import ParkedRecord
from paystream.first_attempt import FIRST_ATTEMPT_HEADER, SEAL_HEADER, FirstAttemptSeals
from paystream.settings import COMMAND_MAX_BYTES_CEILING, CloudEventsMode
from paystream.streams.codec import encode_event
from paystream.tenancy.crypto import MasterKey
from tests.agents.conftest import running_harness
from tests.agents.harness import Harness, kind, new_tenant_id, outcome_of

_KEY = base64.b64encode(MasterKey.generate().key).decode()
_LOWERED = 16 * 1024


@pytest_asyncio.fixture
async def keyed(redis_url: str) -> AsyncIterator[Harness]:
    async with running_harness(redis_url, master_key=_KEY) as h:
        yield h


def _big_payment(tenant: str, metadata_bytes: int) -> Inbound:
    """A binary payment.create of about ``metadata_bytes`` of metadata."""
    metadata = {f"k{i}": "x" * 500 for i in range(metadata_bytes // 500)}
    body = {"amount": 5000, "currency": "USD", "payment_method_token": "pm_card_visa",
            "payment_id": "p1", "metadata": metadata}  # fmt: skip
    rec = encode_event(
        build_command("payment.create", tenant, body, command_id="c1"),
        tenant.encode(),
        CloudEventsMode.BINARY,
    )
    return Inbound(rec.key, rec.value, dict(rec.headers), int(time.time() * 1000),
                   "paystream.commands", 0, 1)  # fmt: skip


def _redriven(h: Harness, parked: Inbound, *, sealed: bool = True) -> Inbound:
    """The parked record as `dlq replay` re-sends it: its first attempt, sealed."""
    first = parked.headers[FIRST_ATTEMPT_HEADER]
    headers = {k: v for k, v in parked.headers.items() if not k.startswith("paystream-")}
    headers[FIRST_ATTEMPT_HEADER] = first
    if sealed:
        seal = FirstAttemptSeals.from_settings(h.settings).seal(
            parked.key, parked.value, headers, int(first)
        )
        assert seal is not None
        headers[SEAL_HEADER] = seal
    return Inbound(parked.key, parked.value, headers, int(time.time() * 1000),
                   "paystream.commands", 0, 2)  # fmt: skip


async def _parked(h: Harness, metadata_bytes: int) -> tuple[str, Inbound]:
    t = new_tenant_id()
    h.add_tenant(t, gateway_options={"fail_first": {"*": 3}})  # the first attempt parks
    emits = await h.processor.process(_big_payment(t, metadata_bytes))
    [park] = [e.record for e in emits if e.topic == h.settings.retry_topic]
    return t, Inbound(park.key, park.value, dict(park.headers), 0, h.settings.retry_topic, 0, 0)


def _lower_limit(h: Harness) -> None:
    """As an operator would, restarting the workers with a smaller limit."""
    h.processor.settings = h.settings.model_copy(update={"command_max_bytes": _LOWERED})


@pytest.mark.asyncio
async def test_a_redrive_admitted_under_a_higher_limit_still_runs(keyed: Harness) -> None:
    """Parked at the default 64 KiB, re-driven after the limit went down to 16 KiB: it
    was refused `payload_too_large`, a final answer although the provider may have acted,
    and its sender, told so, might have paid again under a new id."""
    _, parked = await _parked(keyed, 20_000)
    _lower_limit(keyed)
    emits = await keyed.processor.process(_redriven(keyed, parked))
    out = outcome_of(keyed.settings, emits)
    assert out is not None and kind(out) == "payment.succeeded", out and out.get_data()
    assert not [e for e in emits if e.topic == keyed.settings.dlq_topic]


@pytest.mark.asyncio
async def test_an_unsealed_redrive_the_records_know_waits_unanswered_and_replayable(
    keyed: Harness,
) -> None:
    """Not under paystream's seal (the workers have a master key; a replay run without
    it), a request its records show was let through: dead-lettered without an answer,
    for `dlq replay` to re-send sealed."""
    _, parked = await _parked(keyed, 20_000)
    _lower_limit(keyed)
    emits = await keyed.processor.process(_redriven(keyed, parked, sealed=False))
    assert outcome_of(keyed.settings, emits) is None
    [letter] = [e.record for e in emits if e.topic == keyed.settings.dlq_topic]
    headers = dict(letter.headers)
    assert headers["paystream-dlq-reason"] == b"redrive_too_large"
    assert letter.value == parked.value
    assert ParkedRecord(keyed.settings.dlq_topic, 0, 0, letter.key, letter.value,
                        letter.headers).replayable  # fmt: skip


@pytest.mark.asyncio
async def test_a_sealed_redrive_over_the_ceiling_is_refused_for_good(keyed: Harness) -> None:
    """Larger than any limit may be: no worker ever admitted it, so no provider acted on
    it (parks are never larger than their command). Replayable, each replay would send
    it back to be dead-lettered again, until its age held its partition back."""
    _, parked = await _parked(keyed, 20_000)
    padded = (parked.value or b"") + b" " * COMMAND_MAX_BYTES_CEILING  # (JSON all the same)
    parked = Inbound(parked.key, padded, parked.headers, 0, parked.topic, 0, 0)
    emits = await keyed.processor.process(_redriven(keyed, parked))
    out = outcome_of(keyed.settings, emits)
    assert out is not None and out.get_data()["reason"] == "payload_too_large"
    [letter] = [e.record for e in emits if e.topic == keyed.settings.dlq_topic]
    assert not ParkedRecord(keyed.settings.dlq_topic, 0, 0, letter.key, letter.value,
                            letter.headers).replayable  # fmt: skip


@pytest.mark.asyncio
async def test_a_new_command_over_the_limit_is_still_refused(keyed: Harness) -> None:
    t = new_tenant_id()
    keyed.add_tenant(t)
    _lower_limit(keyed)
    out = outcome_of(keyed.settings, await keyed.processor.process(_big_payment(t, 20_000)))
    assert out is not None and kind(out) == "command.rejected"
    assert out.get_data()["reason"] == "payload_too_large"


def test_a_park_does_not_make_a_structured_command_larger() -> None:
    """Its card-like trace context dropped, the body is written again: escaped to ASCII,
    36 KB of CJK text became 72 KB, past the limit it was admitted under (review)."""
    event = {
        "specversion": "1.0", "id": "c1", "source": "/x", "tenantid": "t",
        "type": "com.paystream.command.customer.create",
        "traceparent": f"00-abcdefab4242424242424242abcdefab-{'1' * 16}-01",  # reads as a card
        "data": {"name": "中文" * 6000, "city": "Zürich"},
    }  # fmt: skip
    value = json.dumps(event, ensure_ascii=False).encode()
    rec = Inbound(b"t", value, {"content-type": b"application/cloudevents+json"}, 0, "c", 0, 1)
    kept = park_value(rec)
    assert "traceparent" not in json.loads(kept)
    assert json.loads(kept)["data"] == event["data"]
    assert len(kept) <= len(value)


def test_a_park_of_a_lone_surrogate_is_still_written() -> None:
    """JSON may escape a lone surrogate, which UTF-8 cannot hold: escaped again."""
    text = (
        '{"specversion":"1.0","id":"c1","source":"/x","tenantid":"t","type":"x",'
        f'"traceparent":"00-abcdefab4242424242424242abcdefab-{"1" * 16}-01",'
        '"data":{"name":"\\ud800"}}'
    )
    rec = Inbound(b"t", text.encode(), {"content-type": b"application/cloudevents+json"},
                  0, "c", 0, 1)  # fmt: skip
    kept = park_value(rec)
    assert json.loads(kept)["data"]["name"] == "\ud800"
    assert "traceparent" not in json.loads(kept)


def _structured_with_big_attribute(tenant: str, command_id: str) -> Inbound:
    event = build_command(
        "payment.create", tenant, _BODY, command_id=command_id, idempotency_key="K"
    )
    event = type(event)({**event.get_attributes(), "bigext": "x" * 20_000}, event.get_data())
    rec = encode_event(event, tenant.encode(), CloudEventsMode.STRUCTURED)
    return Inbound(rec.key, rec.value, dict(rec.headers), int(time.time() * 1000),
                   "paystream.commands", 0, 2)  # fmt: skip


async def a2_answered_under_k(h: Harness, t: str, mode: CloudEventsMode) -> None:
    """Command a2 under idempotency key K, answered: a1's retry, finished meanwhile."""
    retry = encode_event(
        build_command("payment.create", t, _BODY, command_id="a2", idempotency_key="K"),
        t.encode(),
        mode,
    )
    done = await h.processor.process(
        Inbound(
            retry.key,
            retry.value,
            dict(retry.headers),
            int(time.time() * 1000),
            "paystream.commands",
            0,
            1,
        )
    )
    assert kind(outcome_of(h.settings, done)) == "payment.succeeded"


_BODY = {"amount": 5000, "currency": "USD", "payment_method_token": "pm_card_visa",
         "payment_id": "p1"}  # fmt: skip


@pytest.mark.asyncio
async def test_a_redrive_over_the_attribute_limit_is_never_refused(
    harness: Harness, keyed: Harness
) -> None:
    """Parked by a version before the attribute limit (20 KB of attributes), a1's retry
    a2 under its key finished meanwhile; a1 re-driven was refused payload_too_large,
    though the provider had charged (review finding). Under paystream's seal (or with
    no master key to seal with) it gets the key's answer; unsealed while the workers
    have a master key, it waits unanswered on the dead-letter topic."""
    for h, sealed in ((harness, True), (keyed, False)):
        t = new_tenant_id()
        h.add_tenant(t)
        await a2_answered_under_k(h, t, CloudEventsMode.STRUCTURED)
        a1 = _structured_with_big_attribute(t, "a1")
        first = str(int(time.time() * 1000) - 60_000).encode()
        redriven = Inbound(a1.key, a1.value, {**a1.headers, FIRST_ATTEMPT_HEADER: first},
                           a1.timestamp_ms, a1.topic, 0, 3)  # fmt: skip
        emits = await h.processor.process(redriven)
        out = outcome_of(h.settings, emits)
        if sealed:
            assert out is not None and kind(out) == "payment.succeeded", out and out.get_data()
        else:
            assert out is None
            [letter] = [e.record for e in emits if e.topic == h.settings.dlq_topic]
            assert dict(letter.headers)["paystream-dlq-reason"] == b"redrive_too_large"
