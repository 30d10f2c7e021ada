"""One tenant's commands on different payments run side by side (agents/tenant_chains.py);
commands on the same payment, and every run with a barrier, stay in order."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from faust.types import TP, Message

from paystream.agents import commands, pipeline
from paystream.agents.tenant_chains import chain_keys, chains_of, run_in_chains
from paystream.client import build_command
from paystream.first_attempt import FIRST_ATTEMPT_HEADER
from paystream.ids import derived_id
from paystream.settings import CloudEventsMode
from paystream.streams.codec import decode_record, encode_event
from paystream.tenancy.limits import TenantLimits
from tests.agents.harness import Harness, binary_inbound

CARD = {"currency": "USD", "payment_method_token": "pm_card_visa"}


class _Event:
    def __init__(self, message: Message) -> None:
        self.message = message


class _Partitioner:
    async def partition(self, topic: str, key: bytes | None) -> int:
        return 0


def _event(
    tenant: str, offset: int, command_type: str, data: dict[str, Any], command_id: str | None = None
) -> _Event:
    cmd = build_command(command_type, tenant, data, command_id=command_id)
    rec = encode_event(cmd, tenant.encode(), CloudEventsMode.BINARY)
    tp = TP("paystream.commands", 0)
    message = Message(
        tp.topic, 0, offset, 1.0, 0, list(rec.headers), rec.key, rec.value, None, tp=tp
    )
    return _Event(message)


def _offsets() -> Iterator[int]:
    n = 0
    while True:
        n += 1
        yield n


def harness_runner(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> commands.CommandRunner:
    """The command agent's runner over the harness's processor, producing nothing."""
    r = commands.CommandRunner()

    async def processor() -> Any:
        return harness.processor

    monkeypatch.setattr(r, "processor", processor)
    monkeypatch.setattr(r, "_kafka", lambda: (None, _Partitioner()))
    return r


@pytest.fixture
def runner(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> commands.CommandRunner:
    return harness_runner(harness, monkeypatch)


class _InFlight:
    """The most provider-bound handler calls of one type in flight at once."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, command_type: str) -> None:
        self.now = self.most = 0
        real = pipeline.HANDLERS[command_type]

        async def counted(ctx: Any, body: Any) -> Any:
            self.now += 1
            self.most = max(self.most, self.now)
            try:
                return await real(ctx, body)
            finally:
                self.now -= 1

        monkeypatch.setitem(pipeline.HANDLERS, command_type, counted)


def _outcomes(harness: Harness, batch: Any) -> list[tuple[str, Any]]:
    out = []
    for e in batch.emits:
        if e.topic == harness.settings.events_topic:
            ev = decode_record(e.record.key, e.record.value, dict(e.record.headers))
            out.append((ev.get_type().removeprefix("com.paystream."), ev.get_data()))
    return out


async def _batch(runner: commands.CommandRunner, events: list[_Event]) -> Any:
    return await runner.process_batch(events)


@pytest.mark.asyncio
async def test_captures_of_different_payments_run_side_by_side_in_order_answered(
    harness: Harness, runner: commands.CommandRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A provider answering in 50 ms (the simulator's latency knob): calls overlap only if
    # they run side by side.
    t = harness.add_tenant(gateway_options={"latency_ms": 50})
    offsets = _offsets()
    creates = [
        _event(t, next(offsets), "payment.create",
               {**CARD, "payment_id": f"p{i}", "amount": 1000 + i, "capture": "manual"})
        for i in range(6)
    ]  # fmt: skip
    in_flight = _InFlight(monkeypatch, "payment.create")
    created = await _batch(runner, creates)
    assert [k for k, _ in _outcomes(harness, created)] == ["payment.authorized"] * 6
    assert in_flight.most == 4  # PAYSTREAM_TENANT_CONCURRENCY
    # Captures of p0..p5, and a second capture of p0 (refused: it already succeeded),
    # which must run after the first.
    captures = [
        _event(t, next(offsets), "payment.capture", {"payment_id": f"p{i}"}) for i in range(6)
    ]
    captures.append(_event(t, next(offsets), "payment.capture", {"payment_id": "p0"}))
    in_flight = _InFlight(monkeypatch, "payment.capture")
    captured = await _batch(runner, captures)
    answers = _outcomes(harness, captured)
    # Answered in the commands' order, each about its own payment.
    assert [(k, d["entity_id"] if "entity_id" in d else d["reason"]) for k, d in answers] == [
        *[("payment.succeeded", f"p{i}") for i in range(6)],
        ("command.rejected", "invalid_state"),
    ]
    assert in_flight.most > 1
    assert harness.tables.payments  # (the payments' records were written)


@pytest.mark.asyncio
async def test_creates_of_a_tenant_with_a_daily_volume_run_side_by_side_with_room(
    harness: Harness, runner: commands.CommandRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A daily volume holds each payment's amount until it is answered; with room for
    every one of them holding, none waits for another's answer (admission_order.py)."""
    limits = TenantLimits(daily_payment_volume={"USD": 1_000_000})
    t = harness.add_tenant(gateway_options={"latency_ms": 20}, limits=limits)
    offsets = _offsets()
    creates = [
        _event(t, next(offsets), "payment.create", {**CARD, "payment_id": f"p{i}", "amount": 500})
        for i in range(4)
    ]
    in_flight = _InFlight(monkeypatch, "payment.create")
    created = await _batch(runner, creates)
    assert [k for k, _ in _outcomes(harness, created)] == ["payment.succeeded"] * 4
    assert in_flight.most == 4


@pytest.mark.asyncio
async def test_a_barrier_keeps_the_whole_run_in_order(
    harness: Harness, runner: commands.CommandRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = harness.add_tenant(gateway_options={"latency_ms": 20})
    offsets = _offsets()
    events = [
        _event(t, next(offsets), "payment.create", {**CARD, "payment_id": "p0", "amount": 500}),
        _event(t, next(offsets), "customer.create", {"customer_id": "c1"}),
        _event(t, next(offsets), "payment.create", {**CARD, "payment_id": "p1", "amount": 500}),
    ]
    in_flight = _InFlight(monkeypatch, "payment.create")
    done = await _batch(runner, events)
    assert [k for k, _ in _outcomes(harness, done)] == [
        "payment.succeeded", "customer.created", "payment.succeeded",
    ]  # fmt: skip
    assert in_flight.most == 1


@pytest.mark.asyncio
async def test_a_redelivered_batch_is_answered_alike_and_charges_once(
    harness: Harness, runner: commands.CommandRunner
) -> None:
    """A crash before delivery: the batch comes again, and the provider's keys and the
    tables answer it as the first run did, byte for byte."""
    t = harness.add_tenant(gateway_options={"latency_ms": 10})
    offsets = _offsets()
    events = [
        _event(
            t, next(offsets), "payment.create", {**CARD, "payment_id": f"p{i}", "amount": 700 + i}
        )
        for i in range(5)
    ]
    first = await _batch(runner, events)
    again = await _batch(runner, events)
    assert [(e.record.value, sorted(e.record.headers)) for e in first.emits] == [
        (e.record.value, sorted(e.record.headers)) for e in again.emits
    ]
    sim = harness.pool.get(harness.processor._tenant(t, harness.tenants[t]))
    charges = [e for e in await sim.effects() if e.kind == "charge"]
    assert sorted(e.amount for e in charges) == [700, 701, 702, 703, 704]


@pytest.mark.asyncio
async def test_the_purge_after_the_chains_writes_to_the_tenants_partition(
    harness: Harness, runner: commands.CommandRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each chain sets the current event in its own task: the tenant's purge, after them,
    must still find one of the tenant's events (its tombstones go to its partition)."""
    t = harness.add_tenant()
    seen: list[Any] = []

    def purge(tenant: str, clock: float, read_at: float) -> None:
        current = commands._current_event.get(None)
        seen.append(None if current is None else current())

    monkeypatch.setattr(harness.processor, "purge_expired", purge)
    monkeypatch.setattr(runner, "clock_for_deletes", lambda events: 1.0)
    monkeypatch.setattr(commands, "_may_delete", lambda events, taken_at: True)
    monkeypatch.setattr(runner.retention, "step", lambda clock: None)
    events = [
        _event(t, n, "payment.create", {**CARD, "payment_id": f"p{n}", "amount": 500})
        for n in (1, 2, 3)
    ]
    await _batch(runner, events)
    assert seen == [events[-1]]


def test_chains_join_commands_sharing_any_key() -> None:
    k = frozenset
    assert chains_of([k({"a"}), k({"b"}), k({"a", "c"}), k({"d"}), k({"c", "d"})]) == [
        [0, 2, 3, 4],
        [1],
    ]
    assert chains_of([k({"a"}), k({"b"})]) == [[0], [1]]
    assert chains_of([k({"a"}), k({"a"})]) is None  # one chain: run as before
    assert chains_of([k({"a"}), None, k({"b"})]) is None  # a barrier


@pytest.mark.asyncio
async def test_chains_run_each_in_order_and_answer_in_the_items_order() -> None:
    order: list[int] = []

    async def run(i: int) -> int:
        await asyncio.sleep(0)
        order.append(i)
        return i * 10

    results = await run_in_chains([0, 1, 2, 3], [[0, 2], [1, 3]], run, 2)
    assert results == [0, 10, 20, 30]
    assert order.index(0) < order.index(2) and order.index(1) < order.index(3)


@pytest.mark.parametrize(
    ("command_type", "body", "keys"),
    [
        ("payment.capture", {"payment_id": "p1"}, {"p:p1"}),
        ("refund.create", {"payment_id": "p1", "refund_id": "r1"}, {"p:p1", "r:r1"}),
        (
            "payment.create",
            {**CARD, "amount": 5, "customer_id": "c1", "payment_id": "p1"},
            {"c:c1", "p:p1"},
        ),
    ],
)
@pytest.mark.asyncio
async def test_the_keys_name_the_entities_and_the_ids(
    harness: Harness, command_type: str, body: dict[str, Any], keys: set[str]
) -> None:
    t = harness.add_tenant()
    cmd = build_command(command_type, t, body, command_id="id1", idempotency_key="k1")
    got = chain_keys(harness.processor, binary_inbound(cmd, t, 1))
    assert got == {"i:id1", "i:k1", *keys}


@pytest.mark.parametrize(
    "case",
    ["customer", "suspended", "unknown", "keyed_before", "other_key", "redrive",
     "no_payment_id"],
)  # fmt: skip
@pytest.mark.asyncio
async def test_barriers(harness: Harness, case: str) -> None:
    t = harness.add_tenant()
    body: dict[str, Any] = {"payment_id": "p1"}
    command_type = "payment.capture"
    key = t
    if case == "customer":
        command_type, body = "customer.create", {"customer_id": "c1"}
    elif case == "suspended":
        harness.tenants[t] = {**harness.tenants[t], "status": "suspended"}
    elif case == "unknown":
        t = key = "t-nobody"
    elif case == "keyed_before":
        harness.idempotency[f"{t}:k1"] = {"state": "done"}
    elif case == "no_payment_id":
        body = {}
    cmd = build_command(command_type, t, body, command_id="id1", idempotency_key="k1")
    rec = binary_inbound(cmd, key, 1)
    if case == "other_key":
        rec = binary_inbound(cmd, "someone-else", 1)
    elif case == "redrive":
        rec = type(rec)(
            rec.key, rec.value, {**rec.headers, FIRST_ATTEMPT_HEADER: b"1"},
            rec.timestamp_ms, rec.topic, rec.partition, rec.offset,
        )  # fmt: skip
    assert chain_keys(harness.processor, rec) is None


@pytest.mark.asyncio
async def test_a_create_without_an_id_is_keyed_by_the_id_it_will_make(
    harness: Harness, runner: commands.CommandRunner
) -> None:
    """A capture naming the id a create derives from its command id (a client may know
    it) runs after that create, not beside it."""
    t = harness.add_tenant()
    create = build_command(
        "payment.create", t, {**CARD, "amount": 900, "capture": "manual"}, command_id="c-1"
    )
    keys = chain_keys(harness.processor, binary_inbound(create, t, 1))
    made = derived_id("pay", t, "c-1")
    assert keys is not None and f"p:{made}" in keys
    events = [
        _event(t, 1, "payment.create", {**CARD, "amount": 900, "capture": "manual"}, "c-1"),
        _event(t, 2, "payment.capture", {"payment_id": made}),
    ]
    answered = _outcomes(harness, await _batch(runner, events))
    assert [k for k, _ in answered] == ["payment.authorized", "payment.succeeded"]


@pytest.mark.asyncio
async def test_a_saved_card_is_keyed_by_its_customer(harness: Harness) -> None:
    t = harness.add_tenant()
    harness.tables.payment_methods[f"{t}:pm1"] = {"id": "pm1", "customer_id": "c9"}
    create = build_command(
        "payment.create", t, {"amount": 900, "currency": "USD", "payment_method_id": "pm1"}
    )
    keys = chain_keys(harness.processor, binary_inbound(create, t, 1))
    assert keys is not None and {"m:pm1", "c:c9"} <= keys
