"""A failure of ours (a bug) while running a command: nothing lost, never answered twice.

A command that reached the provider before the failure may have moved money: it is
parked, unanswered, and its replay (once the bug is fixed) gives its one answer. One
that never reached it is dead-lettered and rejected ``internal_error``. Dead letters
that would only come back are not re-sent by ``dlq replay``."""

from __future__ import annotations

import time
from typing import Any

import pytest

from paystream.agents import key_pointers, pipeline
from paystream.agents.pipeline import Inbound
from paystream.client import build_command
from paystream.dlq import ParkedRecord
from paystream.gateways.simulator import SimulatorGateway
from paystream.settings import CloudEventsMode
from paystream.streams.codec import encode_event
from paystream.tenancy.models import Tenant
from tests.agents.harness import Harness, data, kind, outcome_of

pytestmark = pytest.mark.asyncio

_BODY = {"amount": 5000, "currency": "USD", "payment_method_token": "pm_card_visa",
         "payment_id": "p1"}  # fmt: skip


def _inbound(key: Any, value: Any, headers: dict[str, bytes], offset: int) -> Inbound:
    return Inbound(key, value, headers, int(time.time() * 1000), "paystream.commands", 0, offset)


async def _run_as_the_agent_does(h: Harness, rec: Inbound) -> list[Any]:
    try:  # what agents/commands.py does with an exception of ours
        return await h.processor.process(rec)
    except RuntimeError:
        return h.processor.dead_letter_bug(rec)


async def _charges(h: Harness, tenant: str) -> int:
    gateway = h.pool.get(Tenant.model_validate(h.tenants[tenant]))
    assert isinstance(gateway, SimulatorGateway)
    return sum(1 for e in await gateway.effects() if e.kind == "charge")


def _replayed(record: Any, offset: int) -> Inbound:
    """What `dlq replay` re-sends: the bytes, minus our headers but the first attempt."""
    ours = ("paystream-dlq-", "paystream-park-", "paystream-source")
    headers = {k: v for k, v in record.headers if not k.startswith(ours)}
    return _inbound(record.key, record.value, headers, offset)


async def test_a_failure_once_let_through_parks_the_command_unanswered(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = harness.add_tenant()
    real = pipeline.HANDLERS["payment.create"]

    async def buggy(ctx: Any, body: Any) -> Any:
        await real(ctx, body)  # the provider charged ...
        raise RuntimeError("a bug of ours after the provider acted")  # ... then we failed

    monkeypatch.setitem(pipeline.HANDLERS, "payment.create", buggy)
    event = build_command("payment.create", t, _BODY, command_id="c1")
    rec = encode_event(event, t.encode(), CloudEventsMode.BINARY)
    emits = await _run_as_the_agent_does(
        harness, _inbound(rec.key, rec.value, dict(rec.headers), 10)
    )
    assert outcome_of(harness.settings, emits) is None  # no answer to contradict later
    assert [e.topic for e in emits] == [harness.settings.retry_topic]
    parked = emits[0].record
    assert dict(parked.headers)["paystream-park-reason"] == b"internal_error"
    assert harness.idempotency[f"{t}:c1"]["state"] == "parked"
    assert await _charges(harness, t) == 1

    # The bug is fixed; the operator replays: the command's one answer, no second charge.
    monkeypatch.setitem(pipeline.HANDLERS, "payment.create", real)
    answer = outcome_of(harness.settings, await harness.processor.process(_replayed(parked, 11)))
    assert answer is not None and kind(answer) == "payment.succeeded"
    assert await _charges(harness, t) == 1


def _tenant_read_by_a_bug(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> str:
    """A new tenant whose commands fail on a bug of ours, before any is let through."""

    def buggy(tenant_id: str, raw: Any) -> Any:
        raise RuntimeError("a bug of ours while reading the tenant")

    monkeypatch.setattr(harness.processor, "_tenant", buggy)
    return harness.add_tenant()


async def test_a_failure_before_the_command_is_let_through_is_dead_lettered_and_rejected(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = _tenant_read_by_a_bug(harness, monkeypatch)
    event = build_command("payment.create", t, _BODY, command_id="c2")
    rec = encode_event(event, t.encode(), CloudEventsMode.BINARY)
    emits = await _run_as_the_agent_does(
        harness, _inbound(rec.key, rec.value, dict(rec.headers), 12)
    )
    answer = outcome_of(harness.settings, emits)
    assert answer is not None and data(answer)["reason"] == "internal_error"
    [letter] = [e.record for e in emits if e.topic == harness.settings.dlq_topic]
    assert f"{t}:c2" not in harness.idempotency
    assert await _charges(harness, t) == 0
    # Its sender was answered for good (and may have paid again under a new id): `dlq
    # replay --topic dlq`, once the bug is fixed, must not run it (review finding).
    assert dict(letter.headers)["paystream-dlq-answered"] == b"internal_error"
    parked = ParkedRecord("paystream.commands.dlq", 0, 0, letter.key, letter.value,
                          tuple(letter.headers))  # fmt: skip
    assert parked.answered == "internal_error" and not parked.replayable


async def test_a_dead_letter_too_large_is_never_replayed(
    harness: Harness,
) -> None:
    """A 300 KiB command is over PAYSTREAM_COMMAND_MAX_BYTES at any setting (at most
    256 KiB) but under what a dead letter keeps: re-sent, it would only come back. One
    just over today's limit is not replayed either, the limit raised or not: its sender
    was answered payload_too_large and may have sent it again, smaller (review finding)."""
    t = harness.add_tenant()
    body = {**_BODY, "metadata": {"blob": "x" * 300_000}}
    event = build_command("payment.create", t, body, command_id="big")
    rec = encode_event(event, t.encode(), CloudEventsMode.BINARY)
    emits = await harness.processor.process(_inbound(rec.key, rec.value, dict(rec.headers), 20))
    [d] = [e.record for e in emits if e.topic == harness.settings.dlq_topic]
    assert dict(d.headers)["paystream-dlq-reason"] == b"payload_too_large"
    assert not ParkedRecord(harness.settings.dlq_topic, 0, 0, d.key, d.value, d.headers).replayable
    body = {**_BODY, "metadata": {"blob": "x" * 70_000}}
    event = build_command("payment.create", t, body, command_id="mid")
    rec = encode_event(event, t.encode(), CloudEventsMode.BINARY)
    emits = await harness.processor.process(_inbound(rec.key, rec.value, dict(rec.headers), 21))
    [d] = [e.record for e in emits if e.topic == harness.settings.dlq_topic]
    assert dict(d.headers)["paystream-dlq-reason"] == b"payload_too_large"
    assert not ParkedRecord(harness.settings.dlq_topic, 0, 0, d.key, d.value, d.headers).replayable


async def test_a_failure_after_the_command_finished_answers_its_outcome(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug of ours in the last step (building the outcome, after its DONE record is
    written): the payment was charged, so its answer is the stored outcome."""
    from paystream.agents.pipeline import CommandProcessor

    t = harness.add_tenant()
    real = CommandProcessor._outcome
    calls = 0

    def buggy(self: Any, cmd: Any, stored: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug of ours building the outcome")
        return real(self, cmd, stored)

    monkeypatch.setattr(CommandProcessor, "_outcome", buggy)
    event = build_command("payment.create", t, _BODY, command_id="c9")
    raw = encode_event(event, t.encode(), CloudEventsMode.BINARY)
    rec = Inbound(raw.key, raw.value, dict(raw.headers), int(time.time() * 1000),
                  "paystream.commands", 0, 30)  # fmt: skip
    try:
        emits = await harness.processor.process(rec)
    except RuntimeError:
        emits = harness.processor.dead_letter_bug(rec)
    assert await _charges(harness, t) == 1
    assert harness.idempotency[f"{t}:c9"]["state"] == "done"
    out = outcome_of(harness.settings, emits)
    assert out is not None and kind(out) == "payment.succeeded", out and out.get_data()


def _rec(t: str, command_id: str, offset: int, key: str | None = None) -> Inbound:
    event = build_command("payment.create", t, _BODY, command_id=command_id, idempotency_key=key)
    raw = encode_event(event, t.encode(), CloudEventsMode.BINARY)
    return _inbound(raw.key, raw.value, dict(raw.headers), offset)


async def test_a_retry_under_a_new_id_of_a_finished_command_meeting_a_bug_gets_its_answer(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    from paystream.agents.pipeline import CommandProcessor

    t = harness.add_tenant()
    first = outcome_of(
        harness.settings, await _run_as_the_agent_does(harness, _rec(t, "c1", 1, "k1"))
    )
    assert first is not None and kind(first) == "payment.succeeded"
    real = CommandProcessor._repair_entities
    calls = 0

    def buggy(self: Any, *a: Any, **kw: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug of ours")
        return real(self, *a, **kw)

    monkeypatch.setattr(CommandProcessor, "_repair_entities", buggy)
    emits = await _run_as_the_agent_does(harness, _rec(t, "c2", 2, "k1"))
    out = outcome_of(harness.settings, emits)
    assert out is not None and kind(out) == "payment.succeeded"
    assert out.get_id() == first.get_id()  # the key's one answer


async def test_a_finished_command_whose_answer_cannot_be_built_is_kept_unanswered(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    from paystream.agents.pipeline import CommandProcessor

    t = harness.add_tenant()
    first = outcome_of(harness.settings, await _run_as_the_agent_does(harness, _rec(t, "c1", 1)))
    assert first is not None and kind(first) == "payment.succeeded"

    def buggy(self: Any, *a: Any, **kw: Any) -> Any:
        raise RuntimeError("a bug of ours")

    monkeypatch.setattr(CommandProcessor, "_repair_entities", buggy)
    emits = await _run_as_the_agent_does(harness, _rec(t, "c1", 2))
    assert outcome_of(harness.settings, emits) is None  # no internal_error for a charge
    assert [e.topic for e in emits] == [harness.settings.dlq_topic]


async def test_a_failure_while_reading_a_charged_command_again_still_parks_it(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bug path compares the command with its record; if that fails too (the same
    bug), its own record still decides: parked, never answered internal_error."""
    t = harness.add_tenant()
    real = pipeline.HANDLERS["payment.create"]
    real_hash = pipeline._request_hash
    broken = False

    async def buggy(ctx: Any, body: Any) -> Any:
        nonlocal broken
        await real(ctx, body)
        broken = True
        raise RuntimeError("a bug of ours after the provider acted")

    def hash_(*a: Any, **kw: Any) -> Any:
        if broken:
            raise RuntimeError("same bug, hit again")
        return real_hash(*a, **kw)

    monkeypatch.setitem(pipeline.HANDLERS, "payment.create", buggy)
    monkeypatch.setattr(pipeline, "_request_hash", hash_)
    monkeypatch.setattr(key_pointers, "request_hash", hash_)  # (its own import of it)
    event = build_command("payment.create", t, _BODY, command_id="c1")
    rec = encode_event(event, t.encode(), CloudEventsMode.BINARY)
    emits = await _run_as_the_agent_does(
        harness, _inbound(rec.key, rec.value, dict(rec.headers), 10)
    )
    assert await _charges(harness, t) == 1
    out = outcome_of(harness.settings, emits)
    assert out is None, "charged command answered internal_error"
    assert [e.topic for e in emits] == [harness.settings.retry_topic]


async def test_a_redrive_with_no_record_here_is_never_answered_internal_error(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A re-drive (its first attempt named) that no idempotency record here knows (a K1
    park, one parked past its record's window) may have been acted on by the provider:
    a bug of ours on it keeps it, unanswered (review finding: it was answered
    internal_error, which its sender might act on by paying again)."""
    t = _tenant_read_by_a_bug(harness, monkeypatch)
    event = build_command("payment.create", t, _BODY, command_id="c3")
    rec = encode_event(event, t.encode(), CloudEventsMode.BINARY)
    first = str(int(time.time() * 1000) - 60_000).encode()
    headers = {**dict(rec.headers), "paystream-first-attempt-ms": first}
    emits = await _run_as_the_agent_does(harness, _inbound(rec.key, rec.value, headers, 13))
    assert outcome_of(harness.settings, emits) is None
    [letter] = [e.record for e in emits if e.topic == harness.settings.dlq_topic]
    assert dict(letter.headers)["paystream-dlq-reason"] == b"internal_error"
    # Unanswered: replayed once the bug is fixed, for its one answer.
    assert "paystream-dlq-answered" not in dict(letter.headers)
    parked = ParkedRecord("paystream.commands.dlq", 0, 0, letter.key, letter.value,
                          tuple(letter.headers))  # fmt: skip
    assert parked.replayable


async def test_a_command_sent_again_under_another_key_meeting_a_bug_is_parked(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It runs under the key its first attempt was let through under: a bug after the
    provider acted parks it unanswered, as it would the first (not a final
    internal_error, which its replay would contradict)."""
    t = harness.add_tenant()
    real = pipeline.HANDLERS["payment.create"]

    async def buggy(ctx: Any, body: Any) -> Any:
        await real(ctx, body)
        raise RuntimeError("a bug of ours after the provider acted")

    monkeypatch.setitem(pipeline.HANDLERS, "payment.create", buggy)
    first = build_command("payment.create", t, _BODY, command_id="c1")
    rec = encode_event(first, t.encode(), CloudEventsMode.BINARY)
    await _run_as_the_agent_does(harness, _inbound(rec.key, rec.value, dict(rec.headers), 20))
    again = build_command("payment.create", t, _BODY, command_id="c1", idempotency_key="k2")
    rec = encode_event(again, t.encode(), CloudEventsMode.BINARY)
    emits = await _run_as_the_agent_does(
        harness, _inbound(rec.key, rec.value, dict(rec.headers), 21)
    )
    assert outcome_of(harness.settings, emits) is None
    assert [e.topic for e in emits] == [harness.settings.retry_topic]
    assert await _charges(harness, t) == 1


async def test_a_bug_on_a_record_naming_another_tenant_gives_nothing_of_its(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keyed as tenant A, naming tenant B and B's command: never B's answer (nor a park
    under B's record), whatever fails on the way."""
    a, b = harness.add_tenant(), harness.add_tenant()
    done = await harness.send("payment.create", b, _BODY, command_id="c1")
    assert kind(done) == "payment.succeeded"
    monkeypatch.setattr(harness.processor, "_process", _raise)
    event = build_command("payment.create", b, _BODY, command_id="c1")
    rec = encode_event(event, a.encode(), CloudEventsMode.BINARY)
    emits = await _run_as_the_agent_does(
        harness, _inbound(rec.key, rec.value, dict(rec.headers), 30)
    )
    assert [e.topic for e in emits] == [harness.settings.dlq_topic]  # dead-lettered only


async def _raise(*args: Any) -> Any:
    raise RuntimeError("a bug of ours")


async def test_an_internal_error_is_its_senders_answer_only(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two senders of one command id, each waiting on its own request: the internal_error
    answer of one sender's record carried no request header, so a client took it for the
    other's answer too (whose record then charged, unseen). Review finding."""
    t = harness.add_tenant()
    real = pipeline._request_hash

    def failing_for_one(command_type: str, body: Any) -> Any:  # before any provider call
        if getattr(body, "amount", None) == 1300:
            raise RuntimeError("a bug of ours, for this request only")
        return real(command_type, body)

    monkeypatch.setattr(pipeline, "_request_hash", failing_for_one)
    monkeypatch.setattr(key_pointers, "request_hash", failing_for_one)  # (its own import)
    body = {"currency": "USD", "payment_method_token": "pm_card_visa"}

    def record(amount: int, request: bytes, offset: int) -> Inbound:
        event = build_command("payment.create", t, {**body, "amount": amount}, command_id="o-7")
        rec = encode_event(event, t.encode(), CloudEventsMode.BINARY)
        headers = {**dict(rec.headers), pipeline.REQUEST_HEADER: request}
        return _inbound(rec.key, rec.value, headers, offset)

    def answer(emits: list[Any]) -> tuple[str, dict[str, bytes]]:
        [out] = [e.record for e in emits if e.topic == harness.settings.events_topic]
        event = outcome_of(harness.settings, emits)
        assert event is not None
        return kind(event), dict(out.headers)

    failed, headers = answer(await _run_as_the_agent_does(harness, record(1300, b"a" * 26, 0)))
    assert failed == "command.rejected"
    assert headers.get(pipeline.REQUEST_HEADER) == b"a" * 26
    paid, headers = answer(await _run_as_the_agent_does(harness, record(1000, b"b" * 26, 1)))
    assert paid == "payment.succeeded" and headers.get(pipeline.REQUEST_HEADER) == b"b" * 26
