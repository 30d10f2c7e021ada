"""Chains of a tenant with limits (agents/admission_order.py): the same batches run with
chains and serially give the same decisions, outcomes, tables and limits state, whatever
order the provider answers in; a batch lost in a crash and redelivered is decided as its
first run was; and provider calls still overlap."""

from __future__ import annotations

import asyncio
import copy
import json
import random
import time
from typing import Any

import pytest
from faust.types import TP, Message

from paystream.agents import commands, pipeline
from paystream.agents.admission_order import AdmissionOrder, Slot, Turn
from paystream.agents.tenant_chains import chain_keys
from paystream.client import build_command
from paystream.settings import CloudEventsMode
from paystream.streams.codec import encode_event
from paystream.tenancy.limits import TenantLimits
from tests.agents.harness import Harness
from tests.agents.test_tenant_chains import _Event, harness_runner
from tests.agents.test_tenant_chains_differential import _outcomes, _tables

CARDS = ["pm_card_visa", "pm_card_visa", "pm_card_chargeDeclined",
         "pm_card_authenticationRequired", "pm_card_refundFail"]  # fmt: skip

# The command and its record time (ms), offset given by position.
Spec = tuple[str, dict[str, Any], int]


def _event(tenant: str, offset: int, spec: Spec, partition: int = 0) -> _Event:
    command_type, body, at_ms = spec
    cmd = build_command(command_type, tenant, body, command_id=f"cmd-{offset}")
    rec = encode_event(cmd, tenant.encode(), CloudEventsMode.BINARY)
    tp = TP("paystream.commands", partition)
    message = Message(
        tp.topic, partition, offset, at_ms / 1000, 0, list(rec.headers), rec.key, rec.value,
        None, tp=tp,
    )  # fmt: skip
    return _Event(message)


def _jitter(monkeypatch: pytest.MonkeyPatch, rng: random.Random) -> None:
    """Each handler (after its admission, before its provider call) waits 0-8 ms, drawn
    from ``rng``: chains finish in an order of the seed's choosing."""
    for command_type, real in list(pipeline.HANDLERS.items()):

        async def late(ctx: Any, body: Any, real: Any = real) -> Any:
            await asyncio.sleep(rng.random() * 0.008)
            return await real(ctx, body)

        monkeypatch.setitem(pipeline.HANDLERS, command_type, late)


def _limits_state(harness: Harness, tenant: str) -> Any:
    raw = harness.processor.limits.table.get(harness.processor.limits.key(tenant))
    if raw is None:
        return None
    state = dict(raw)
    del state["partition"]  # (each run's own)
    # Kept decisions by offset: the same entries, written in another order.
    state["decided"] = dict(sorted((state.get("decided") or {}).items()))
    return json.loads(json.dumps(state, sort_keys=True))


def _set_concurrency(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    monkeypatch.setattr(
        commands, "settings", commands.settings.model_copy(update={"tenant_concurrency": n})
    )


async def _run(
    harness: Harness,
    monkeypatch: pytest.MonkeyPatch,
    limits: TenantLimits,
    batches: list[list[Spec]],
    concurrency: int,
    rng: random.Random,
) -> tuple[list[Any], Any, Any]:
    tenant = harness.add_tenant(limits=limits)
    runner = harness_runner(harness, monkeypatch)
    _set_concurrency(monkeypatch, concurrency)
    _jitter(monkeypatch, rng)
    answers, offset = [], 0
    for batch in batches:
        events = []
        for spec in batch:
            offset += 1
            # (A partition of each run's own: a rejection's kept answer is found by
            # partition, offset and command id, which the other run's records share.)
            events.append(_event(tenant, offset, spec, partition=concurrency))
        done = await runner.process_batch(events)
        answers.append(_outcomes(harness, done, tenant))
    return answers, _tables(harness, tenant), _limits_state(harness, tenant)


def _batches(rng: random.Random, start_ms: int) -> list[list[Spec]]:
    at = start_ms
    out: list[list[Spec]] = []
    for _ in range(3):
        batch: list[Spec] = []
        for _ in range(rng.randint(5, 12)):
            at += rng.choice([0, 5, 50, 150, 400])
            p = f"p{rng.randrange(6)}"
            kind = rng.choice(["create", "create", "create", "capture", "cancel", "refund"])
            if kind == "create":
                body: dict[str, Any] = {
                    "currency": rng.choice(["USD", "USD", "EUR"]),
                    "payment_method_token": rng.choice(CARDS),
                    "amount": rng.choice([300, 700, 1200]),
                    "payment_id": p,
                }
                if rng.random() < 0.4:
                    body["capture"] = "manual"
                batch.append(("payment.create", body, at))
            elif kind == "refund":
                batch.append(("refund.create", {"payment_id": p, "amount": 100}, at))
            else:
                batch.append((f"payment.{kind}", {"payment_id": p}, at))
        out.append(batch)
    return out


LIMITS = {
    "rate": TenantLimits(commands_per_second=4, burst=3),
    "volume": TenantLimits(daily_payment_volume={"USD": 2500}),
    "max_amount": TenantLimits(max_payment_amount={"USD": 800}, only_listed_currencies=True),
    "all": TenantLimits(
        commands_per_second=6,
        burst=4,
        max_payment_amount={"USD": 1000, "EUR": 1000},
        daily_payment_volume={"USD": 3000, "EUR": 1500},
    ),
}


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("which", sorted(LIMITS))
@pytest.mark.asyncio
async def test_chains_decide_as_serial(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, which: str, seed: int
) -> None:
    start = int(time.time() * 1000) - 3_600_000
    batches = _batches(random.Random(seed), start)
    chained = await _run(harness, monkeypatch, LIMITS[which], batches, 4, random.Random(seed))
    serial = await _run(harness, monkeypatch, LIMITS[which], batches, 1, random.Random(seed))
    for i, (a, b) in enumerate(zip(chained[0], serial[0], strict=True)):
        for j, (x, y) in enumerate(zip(a, b, strict=True)):
            assert x == y, (i, j, batches[i][j], x, y)
    assert chained[1] == serial[1]
    assert chained[2] == serial[2]


@pytest.mark.asyncio
async def test_the_limits_refuse_in_the_random_runs(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    start = int(time.time() * 1000) - 3_600_000
    reasons: set[str] = set()
    for which in ("rate", "volume", "max_amount"):
        for seed in range(3):
            answers, _, _ = await _run(
                harness, monkeypatch, LIMITS[which], _batches(random.Random(seed), start), 4,
                random.Random(seed),
            )  # fmt: skip
            for batch in answers:
                reasons |= {d["limit"] for _, d in batch if d and
                            d.get("reason") in ("rate_limited", "quota_exceeded")}  # fmt: skip
    assert {"commands_per_second", "daily_payment_volume", "max_payment_amount"} <= reasons


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("which", ["rate", "volume", "all"])
@pytest.mark.asyncio
async def test_a_lost_batch_redelivered_is_decided_as_first(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, which: str, seed: int
) -> None:
    """A crash lost the batch's every write (tables, idempotency and limits records) after
    the provider acted: redelivered, with the provider answering in another order, each
    command is decided and answered as the first time (review h69a, Finding 1: a payment
    the provider charged was refused `quota_exceeded` in the other order)."""
    tenant = harness.add_tenant(limits=LIMITS[which])
    runner = harness_runner(harness, monkeypatch)
    _set_concurrency(monkeypatch, 4)
    start = int(time.time() * 1000) - 3_600_000
    batch = [spec for b in _batches(random.Random(seed), start) for spec in b]
    events = [_event(tenant, i + 1, spec) for i, spec in enumerate(batch)]
    before = (
        copy.deepcopy(harness.tables),
        copy.deepcopy(harness.idempotency),
        copy.deepcopy(dict(harness.processor.limits.table)),
    )
    _jitter(monkeypatch, random.Random(seed))
    first = _outcomes(harness, await runner.process_batch(events), tenant)
    # The crash: every write of the batch lost (the provider keeps what it did).
    tables, idem, lim = before
    for name in ("payments", "refunds", "disputes", "customers", "payment_methods"):
        live = getattr(harness.tables, name)
        live.clear()
        live.update(getattr(tables, name))
    harness.idempotency.clear()
    harness.idempotency.update(idem)
    harness.processor.limits.table.clear()
    harness.processor.limits.table.update(lim)
    _jitter(monkeypatch, random.Random(seed + 1000))
    again = _outcomes(harness, await runner.process_batch(events), tenant)
    assert [(k, (d or {}).get("reason")) for k, d in again] == [
        (k, (d or {}).get("reason")) for k, d in first
    ]


@pytest.mark.asyncio
async def test_provider_calls_of_a_rate_limited_tenant_overlap(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The point of it: admissions in order, provider calls side by side."""
    t = harness.add_tenant(
        limits=TenantLimits(commands_per_second=1000, max_payment_amount={"USD": 10_000}),
        gateway_options={"latency_ms": 30},
    )
    runner = harness_runner(harness, monkeypatch)
    _set_concurrency(monkeypatch, 4)
    now = int(time.time() * 1000)
    card = {"currency": "USD", "payment_method_token": "pm_card_visa", "amount": 500}
    events = [
        _event(t, i + 1, ("payment.create", {**card, "payment_id": f"p{i}"}, now + i))
        for i in range(8)
    ]
    most = now_in = 0
    real = pipeline.HANDLERS["payment.create"]

    async def counted(ctx: Any, body: Any) -> Any:
        nonlocal most, now_in
        now_in += 1
        most = max(most, now_in)
        try:
            return await real(ctx, body)
        finally:
            now_in -= 1

    monkeypatch.setitem(pipeline.HANDLERS, "payment.create", counted)
    done = await runner.process_batch(events)
    assert [k for k, _ in _outcomes(harness, done, t)] == ["payment.succeeded"] * 8
    assert most == 4


@pytest.mark.parametrize(
    ("limits", "held", "in_one_chain"),
    [
        (TenantLimits(commands_per_second=5), False, False),
        (TenantLimits(max_payment_amount={"USD": 5}), False, False),
        (TenantLimits(daily_payment_volume={"USD": 5}), False, True),
        (TenantLimits(), True, True),  # holds placed under a volume since removed
    ],
)
@pytest.mark.asyncio
async def test_creates_share_a_chain_only_under_a_daily_volume(
    harness: Harness, limits: TenantLimits, held: bool, in_one_chain: bool
) -> None:
    from tests.agents.harness import binary_inbound

    t = harness.add_tenant(limits=limits)
    if held:
        key = harness.processor.limits.key(t)
        harness.processor.limits.table[key] = {
            "partition": 0, "at_ms": 0, "tokens": None, "day": "", "volume": {},
            "decided": {}, "held": {"abc": ["2026-01-01", "USD", 100, None]},
        }  # fmt: skip
    keys = []
    for i in range(2):
        cmd = build_command(
            "payment.create",
            t,
            {"currency": "USD", "payment_method_token": "pm_card_visa", "amount": 100,
             "payment_id": f"p{i}"},
        )  # fmt: skip
        keys.append(chain_keys(harness.processor, binary_inbound(cmd, t, i + 1)))
    assert keys[0] is not None and keys[1] is not None
    assert ("v:" in keys[0] and "v:" in keys[1]) is in_one_chain
    assert bool(keys[0] & keys[1]) is in_one_chain


# ---- the turnstile itself -------------------------------------------------------------


@pytest.mark.asyncio
async def test_admissions_pass_in_order_and_give_up_their_slot_while_waiting() -> None:
    """At one slot, the chain holding it waits on a command of a chain holding none: it
    gives the slot up meanwhile (else neither ever ran)."""
    sem = asyncio.Semaphore(1)
    order = AdmissionOrder(3)
    admitted: list[int] = []

    async def chain(indexes: list[int]) -> None:
        slot = Slot(sem)
        await slot.take()
        try:
            for i in indexes:
                await Turn(order, i, slot).wait()
                admitted.append(i)
                order.passed(i)
                await asyncio.sleep(0)
        finally:
            slot.give_up()

    await asyncio.wait_for(asyncio.gather(chain([0, 2]), chain([1])), 5)
    assert admitted == [0, 1, 2]


@pytest.mark.asyncio
async def test_a_command_that_finishes_unadmitted_lets_the_next_pass() -> None:
    order = AdmissionOrder(3)
    sem = asyncio.Semaphore(3)
    slot = Slot(sem)
    await slot.take()
    turn2 = Turn(order, 2, slot)
    assert not await Turn(order, 0, slot).wait()  # nothing before it: no wait
    waiting = asyncio.ensure_future(turn2.wait())
    await asyncio.sleep(0)
    order.passed(1)  # finished without an admission (refused before it)
    await asyncio.sleep(0)
    assert not waiting.done()  # 0 has not passed
    order.passed(0)
    assert await asyncio.wait_for(waiting, 5) is True
