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

from paystream import metrics
from paystream.agents import commands, pipeline
from paystream.agents.admission_order import AdmissionOrder, Slot, Turn
from paystream.client import build_command
from paystream.settings import CloudEventsMode
from paystream.streams.codec import encode_event
from paystream.tenancy.limits import TenantLimits
from paystream.tenancy.models import TenantStatus
from tests.agents.harness import Harness
from tests.agents.test_tenant_chains import _Event, harness_runner
from tests.agents.test_tenant_chains_differential import _outcomes, _tables, run_batches

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
    """Each handler (after its admission, before its provider call) waits 0-2 ms, drawn
    from ``rng``: chains finish in an order of the seed's choosing. (The loop wakes
    timers due together in deadline order, so a smaller scale keeps the order the seed
    draws; 0-8 ms spent most of these tests' time asleep.)"""
    for command_type, real in list(pipeline.HANDLERS.items()):

        async def late(ctx: Any, body: Any, real: Any = real) -> Any:
            await asyncio.sleep(rng.random() * 0.002)
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
    answers = await run_batches(harness, runner, tenant, batches, _event, concurrency)
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


@pytest.mark.parametrize("seed", range(10))
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


@pytest.mark.parametrize("seed", range(12))
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
    first_state = _limits_state(harness, tenant)
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
    # (Whole outcomes and the limits state: kinds and reasons alone missed a decision
    # taken in another order; review h70b.)
    assert again == first
    assert _limits_state(harness, tenant) == first_state


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


@pytest.mark.asyncio
async def test_a_payment_refused_while_an_earlier_one_holds_waits_for_its_answer(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review h69a, Finding 1: a daily volume of 10.00; a payment of 9.00 on a card that
    is declined, then one of 5.00 on a good card, on different payments. Serially the
    first is declined (its hold released) before the second is decided: it succeeds.
    Side by side the second found the first still holding and was refused, and a
    redelivery in the other order could refuse a payment the provider had charged."""
    t = harness.add_tenant(
        limits=TenantLimits(daily_payment_volume={"USD": 1000}),
        gateway_options={"latency_ms": 20},
    )
    runner = harness_runner(harness, monkeypatch)
    _set_concurrency(monkeypatch, 4)
    now = int(time.time() * 1000)
    events = [
        _event(t, 1, ("payment.create", {"currency": "USD", "amount": 900, "payment_id": "a",
                      "payment_method_token": "pm_card_chargeDeclined"}, now)),
        _event(t, 2, ("payment.create", {"currency": "USD", "amount": 500, "payment_id": "b",
                      "payment_method_token": "pm_card_visa"}, now + 1)),
        _event(t, 3, ("payment.create", {"currency": "USD", "amount": 100, "payment_id": "c",
                      "payment_method_token": "pm_card_visa"}, now + 2)),
    ]  # fmt: skip
    waits = metrics.VOLUME_WAITS.labels(t)
    done = await runner.process_batch(events)
    assert [k for k, _ in _outcomes(harness, done, t)] == [
        "payment.failed", "payment.succeeded", "payment.succeeded",
    ]  # fmt: skip
    assert waits._value.get() >= 1  # (b, and perhaps c, waited for a's answer)
    state = harness.processor.limits.table[harness.processor.limits.key(t)]
    assert state["volume"] == {"USD": 600} and not state["held"]


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


def test_a_trial_admission_writes_nothing_and_decides_as_the_admission() -> None:
    from paystream.tenancy.limits import LimitGate, Record

    table: dict[str, Any] = {}
    gate = LimitGate(table)
    limits = TenantLimits(commands_per_second=2, burst=2, daily_payment_volume={"USD": 1000})
    now = int(time.time() * 1000)

    class Data:
        currency, amount = "USD", 600

    decided = []
    for offset in range(4):
        rec = Record(f"c{offset}", 0, offset, now)
        before = copy.deepcopy(table)
        tried = gate.trial("t", limits, rec, "payment.create", Data(), hold_key=f"k{offset}")
        assert table == before
        assert (
            gate.admit("t", limits, rec, "payment.create", Data(), hold_key=f"k{offset}") == tried
        )
        decided.append(getattr(tried, "extra", {}).get("limit"))
    # Admitted, refused by the volume with the first holding, then by the rate.
    assert decided == [None, "daily_payment_volume", "commands_per_second", "commands_per_second"]


class _Escaped(BaseException):
    """What _run_one lets through: anything not an Exception."""


@pytest.mark.asyncio
async def test_a_failed_chain_does_not_leave_the_others_waiting() -> None:
    """Review h70a: a chain ended by an exception never ran its later commands, and every
    command of another chain after them waited for their turn for good."""
    from paystream.agents.admission_order import ADMISSION_TURN
    from paystream.agents.tenant_chains import run_in_chains

    admitted: list[int] = []
    tasks_before = asyncio.all_tasks()

    async def run(i: int) -> int:
        turn = ADMISSION_TURN.get()
        assert turn is not None
        if i == 0:
            raise _Escaped
        await turn.wait()
        admitted.append(i)
        turn.passed()
        await asyncio.sleep(0)  # its provider call
        return i

    with pytest.raises(_Escaped):
        await run_in_chains(range(4), [[0, 2], [1, 3]], run, 4)
    deadline = time.monotonic() + 5
    left = [t for t in asyncio.all_tasks() - tasks_before if not t.done()]
    while left and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
        left = [t for t in left if not t.done()]
    for t in left:
        t.cancel()
    # Command 3 waited on command 2, which its chain (ended with command 0) never ran.
    assert left == [], f"{len(left)} chain task(s) still waiting; admitted {admitted}"
    assert admitted == [1, 3]


async def _volume_set_mid_batch(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, concurrency: int
) -> list[Any]:
    rate = TenantLimits(commands_per_second=100, burst=100)
    t = harness.add_tenant(limits=rate, gateway_options={"latency_ms": 40})
    runner = harness_runner(harness, monkeypatch)
    _set_concurrency(monkeypatch, concurrency)
    real = commands._run_one
    changed = False

    async def registry_update_lands(processor: Any, event: Any, inbound: Any) -> Any:
        nonlocal changed
        if not changed:
            # The operator's new limits reach this worker after the batch was keyed.
            changed = True
            with_volume = rate.model_copy(update={"daily_payment_volume": {"USD": 1000}})
            harness.tenants[t] = {**harness.tenants[t], "limits": with_volume.model_dump()}
        return await real(processor, event, inbound)

    monkeypatch.setattr(commands, "_run_one", registry_update_lands)
    now = int(time.time() * 1000)
    declined = {"currency": "USD", "amount": 700, "payment_method_token": "pm_card_chargeDeclined"}
    visa = {"currency": "USD", "amount": 700, "payment_method_token": "pm_card_visa"}
    events = [
        _event(t, 1, ("payment.create", {**declined, "payment_id": "p1"}, now), concurrency),
        _event(t, 2, ("payment.create", {**visa, "payment_id": "p2"}, now + 1), concurrency),
    ]
    done = await runner.process_batch(events)
    return [(k, (d or {}).get("reason")) for k, d in _outcomes(harness, done, t)]


@pytest.mark.asyncio
async def test_a_daily_volume_set_mid_batch_decides_as_serial(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review h70b: a daily volume set while a batch's chains ran (the registry mirror
    applies a tenant record at any await). Creates keyed apart at the batch's start, with
    the volume read at each admission, must still wait for an earlier one's answer where
    the volume would refuse them: serially, the declined payment released its hold first."""
    serial = await _volume_set_mid_batch(harness, monkeypatch, 1)
    chained = await _volume_set_mid_batch(harness, monkeypatch, 4)
    assert serial == [("payment.failed", None), ("payment.succeeded", None)]
    assert chained == serial


def _random_chains(rng: random.Random, n: int) -> list[list[int]]:
    k = rng.randint(2, 6)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(rng.randrange(k), []).append(i)
    return sorted(groups.values(), key=lambda c: c[0])


@pytest.mark.parametrize("seed", range(60))
@pytest.mark.asyncio
async def test_turns_in_order_within_the_slots_under_random_chains(seed: int) -> None:
    """(Review h70b's stress, with the settled wait.) Random chains at concurrency 1-4,
    some commands finishing before their turn, some waiting for the earlier ones to
    finish: admissions in order, never more chains running than slots, no hang."""
    from paystream.agents.admission_order import ADMISSION_TURN
    from paystream.agents.tenant_chains import run_in_chains

    rng = random.Random(seed)
    n = rng.randint(2, 14)
    chains = _random_chains(rng, n)
    concurrency = rng.randint(1, 4)
    admitted: list[int] = []
    finished: set[int] = set()
    running = most = 0
    early = {i for i in range(n) if rng.random() < 0.2}  # refused before their turn
    settling = {i for i in range(n) if rng.random() < 0.3}  # the volume would refuse

    async def run(i: int) -> int:
        nonlocal running, most
        try:
            await asyncio.sleep(rng.random() * 0.002)
            turn = ADMISSION_TURN.get()
            assert turn is not None
            if i not in early:
                await turn.wait()
                if i in settling and not turn.settled():
                    await turn.wait_settled()
                    assert set(range(i)) <= finished
                admitted.append(i)
                turn.passed()
            running += 1  # (its slot held from here to its end)
            most = max(most, running)
            try:
                await asyncio.sleep(rng.random() * 0.003)  # its provider call
            finally:
                running -= 1
            return i
        finally:
            finished.add(i)

    out = await asyncio.wait_for(run_in_chains(range(n), chains, run, concurrency), 10)
    assert out == list(range(n))
    assert admitted == sorted(admitted)
    assert most <= concurrency


@pytest.mark.parametrize("seed", range(30))
@pytest.mark.asyncio
async def test_a_run_cancelled_midway_leaves_no_chain_waiting(seed: int) -> None:
    """(Review h70b.) A rebalance's hand-over cancels the batch mid-run."""
    from paystream.agents.admission_order import ADMISSION_TURN
    from paystream.agents.tenant_chains import run_in_chains

    rng = random.Random(seed)
    n = rng.randint(2, 12)
    before = asyncio.all_tasks()

    async def run(i: int) -> int:
        await asyncio.sleep(rng.random() * 0.002)
        turn = ADMISSION_TURN.get()
        assert turn is not None
        await turn.wait()
        turn.passed()
        await asyncio.sleep(rng.random() * 0.002)
        return i

    task = asyncio.ensure_future(
        run_in_chains(range(n), _random_chains(rng, n), run, rng.randint(1, 3))
    )
    await asyncio.sleep(rng.random() * 0.006)
    if task.done():
        return  # (finished before the cancel)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    deadline = time.monotonic() + 5
    left = [t for t in asyncio.all_tasks() - before if t is not asyncio.current_task()]
    while any(not t.done() for t in left) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert all(t.done() for t in left)


@pytest.mark.parametrize("seed", range(20))
def test_volume_room_is_a_bound_the_admission_never_refuses_within(seed: int) -> None:
    """``volume_room`` spares the trial admission where the payment fits whatever the
    earlier ones' answers: wherever it says so, the volume and the cap on payments
    awaiting an answer admitted it."""
    from datetime import UTC, datetime, timedelta

    from paystream.tenancy.limits import LimitGate, Record

    rng = random.Random(seed)
    now = int(time.time() * 1000)
    today = datetime.fromtimestamp(now / 1000, tz=UTC).date()
    days = [(today - timedelta(days=d)).isoformat() for d in (0, 1, 2)]
    limits = TenantLimits(daily_payment_volume={"USD": 5000, "EUR": 3000})
    checked = 0
    for n in range(200):
        held = {
            f"h{i}": [rng.choice(days), rng.choice(["USD", "EUR"]), rng.randrange(1, 2000), None]
            for i in range(rng.randrange(0, 5))
        }
        state = {
            "partition": 0, "at_ms": now - 1000, "tokens": None, "day": rng.choice(days),
            "volume": {"USD": rng.randrange(0, 4000)}, "decided": {}, "held": held,
        }  # fmt: skip
        gate = LimitGate({LimitGate.key("t"): state})
        currency, amount = rng.choice(["USD", "EUR", "GBP"]), rng.randrange(1, 3000)

        class Data:
            pass

        Data.currency, Data.amount = currency, amount  # type: ignore[attr-defined]
        decision = gate.trial(
            "t", limits, Record(f"c{n}", 0, n, now), "payment.create", Data(), hold_key=f"k{n}"
        )
        if gate.volume_room("t", limits, currency, amount):
            checked += 1
            assert getattr(decision, "extra", {}).get("limit") not in (
                "daily_payment_volume", "pending_payments",
            ), (state, currency, amount, decision)  # fmt: skip
    assert checked > 20


CARD = {"currency": "USD", "amount": 700, "payment_method_token": "pm_card_visa"}


async def _changed_while_c1_at_provider(
    harness: Harness,
    monkeypatch: pytest.MonkeyPatch,
    concurrency: int,
    first: TenantLimits,
    change: TenantLimits | TenantStatus | None,
    bodies: list[dict[str, Any]],
    hook: str = "wait",
    index: int = 2,
    lost_before: bool = False,
    entities_kept: bool = False,
) -> tuple[list[Any], list[Any], Any]:
    """``bodies`` (payment.create, offsets 2..) under ``first``; the registry set to
    ``change`` (limits; a status: the record with it; None: the record removed) once c1
    (offset 2) has made its provider call and the chained command at ``index`` has
    reached ``Turn.<hook>`` (serially: at once, as it has not started), before c1 is
    answered. The outcomes (type, the limit or reason refusing), those of the batch
    redelivered (nothing committed) after the operator put the active record with
    ``first`` back, and the limits state the first run left. ``lost_before``: the batch
    ran once, unchanged, and a crash lost every write of it: only the provider
    remembers its calls (``entities_kept``: but the entities it wrote)."""
    t = harness.add_tenant(limits=first)
    runner = harness_runner(harness, monkeypatch)
    _set_concurrency(monkeypatch, concurrency)
    now = int(time.time() * 1000)
    part = 10 + concurrency  # (a run's own partition: see run_batches)
    setup = await runner.process_batch(
        [_event(t, 1, ("customer.create", {"customer_id": "cu1"}, now), part)]
    )
    assert [k for k, _ in _outcomes(harness, setup, t)] == ["customer.created"]
    events = [
        _event(t, 2 + i, ("payment.create", body, now + 1 + i), part)
        for i, body in enumerate(bodies)
    ]
    if lost_before:
        tables = {n: dict(getattr(harness.tables, n)) for n in ("payments", "customers")}
        kept = [(m, copy.deepcopy(dict(m))) for m in (harness.idempotency,
                harness.processor.limits.table, harness.processor.answers.table)]  # fmt: skip
        await asyncio.wait_for(runner.process_batch(events), 30)
        for name, rows in tables.items() if not entities_kept else ():
            getattr(harness.tables, name).clear()
            getattr(harness.tables, name).update(rows)
        for live, before in kept:
            live.clear()
            live.update(before)
    reached = asyncio.Event()
    if concurrency > 1:
        real_hook = getattr(Turn, hook)

        async def hooked(self: Turn) -> Any:
            if self.index == index:
                reached.set()  # at its turnstile, its tenant read before the change
            return await real_hook(self)

        monkeypatch.setattr(Turn, hook, hooked)
    else:
        reached.set()
    real = pipeline.HANDLERS["payment.create"]
    record = harness.tenants[t]

    async def changed_meanwhile(ctx: Any, body: Any) -> Any:
        answer = await real(ctx, body)  # its provider call
        if ctx.cmd.tenant_id == t and ctx.cmd.command_id == "cmd-2":
            await asyncio.wait_for(reached.wait(), 10)
            # The operator's new record reaches the worker before c1's answer is written.
            if change is None:
                del harness.tenants[t]
            elif isinstance(change, TenantStatus):
                harness.tenants[t] = {**record, "status": change.value}
            else:
                harness.tenants[t] = {**record, "limits": change.model_dump()}
        return answer

    monkeypatch.setitem(pipeline.HANDLERS, "payment.create", changed_meanwhile)

    def answered(done: Any) -> list[Any]:
        return [
            (k, (d or {}).get("limit") or (d or {}).get("reason") if d else None)
            for k, d in _outcomes(harness, done, t)
        ]

    done = await asyncio.wait_for(runner.process_batch(events), 30)
    first_run = answered(done)
    # (Less the latest record time seen: each run's records are stamped from its own now.)
    state = {k: v for k, v in (_limits_state(harness, t) or {}).items() if k != "at_ms"}
    harness.tenants[t] = {**record, "limits": first.model_dump()}
    monkeypatch.setitem(pipeline.HANDLERS, "payment.create", real)
    again = await asyncio.wait_for(runner.process_batch(events), 30)
    return first_run, answered(again), state


# c1 and c2 name one customer (one chain), c3 none (a chain of its own), 7.00 each.
THREE = [
    {**CARD, "payment_id": "p1", "customer_id": "cu1"},
    {**CARD, "payment_id": "p2", "customer_id": "cu1"},
    {**CARD, "payment_id": "p3"},
]


async def _serial_and_chained(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, *args: Any, **kwargs: Any
) -> tuple[tuple[list[Any], list[Any], Any], tuple[list[Any], list[Any], Any]]:
    serial = await _changed_while_c1_at_provider(harness, monkeypatch, 1, *args, **kwargs)
    chained = await _changed_while_c1_at_provider(harness, monkeypatch, 4, *args, **kwargs)
    return serial, chained


@pytest.mark.asyncio
async def test_a_volume_lowered_mid_run_applies_in_offset_order(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review h70d: the daily volume (50.00) lowered to 10.00 while c1 was at the
    provider. c2 (c1's chain) read the tenant after the change and was refused; c3 (its
    own chain) read it before, waited at the turnstile for c2, and was admitted under the
    old volume after c2 was refused under the new one. Serially, once one command sees
    the change every later one does: c3 is refused too. Redelivered after the volume was
    put back, each keeps its answer."""
    old, lowered = (TenantLimits(daily_payment_volume={"USD": v}) for v in (5000, 1000))
    serial, chained = await _serial_and_chained(harness, monkeypatch, old, lowered, THREE)
    refused = ("command.rejected", "daily_payment_volume")
    assert serial[0] == [("payment.succeeded", None), refused, refused]
    assert chained == serial
    assert chained[1] == chained[0]


@pytest.mark.asyncio
async def test_limits_removed_mid_run_admit_as_serial(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The limits (a 10.00 volume, which c3 would pass the limit of) removed while c1
    was at the provider: c3, which read them before, is decided without them at its
    turn, as c2 and, serially, c3 are (review h71c: under a volume c3 fits anyway, the
    test passed with the read at the turn taken out)."""
    first = TenantLimits(daily_payment_volume={"USD": 1000})
    serial, chained = await _serial_and_chained(harness, monkeypatch, first, TenantLimits(), THREE)
    assert serial[0] == [("payment.succeeded", None)] * 3
    assert chained == serial


@pytest.mark.asyncio
async def test_volume_raised_while_waiting_for_earlier_payments_to_settle(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The read after wait_settled (review h71c: taken out, every other test passed). c1
    and c2 (7.00 each, chains of their own) under a 10.00 volume: c2, at its turn while
    c1 holds 7.00 at the provider, is refused by the trial and waits for c1 to be
    answered. The volume is raised to 50.00 meanwhile: serially c2 starts after c1 is
    answered, reads 50.00 and is admitted; chained it must be too."""
    first, raised = (TenantLimits(daily_payment_volume={"USD": v}) for v in (1000, 5000))
    bodies = [{**CARD, "payment_id": "p1"}, {**CARD, "payment_id": "p2"}]
    serial, chained = await _serial_and_chained(
        harness, monkeypatch, first, raised, bodies, "wait_settled", 1
    )
    assert serial[0] == [("payment.succeeded", None)] * 2
    assert chained == serial


@pytest.mark.parametrize("change", [TenantStatus.SUSPENDED, None], ids=["suspended", "removed"])
@pytest.mark.asyncio
async def test_tenant_stopped_mid_run_stops_c3_as_serial(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, change: TenantStatus | None
) -> None:
    """The tenant suspended (a kill switch: fraud) or its record removed while c1 is at
    the provider. Serially c2 and c3 start after it and are refused tenant_suspended
    (unknown_tenant); c1, let through, finishes. Chained, c3 started before it and,
    waiting at its turn, was charged (review h71c). Redelivered after the record is put
    back, each keeps its answer."""
    first = TenantLimits(daily_payment_volume={"USD": 5000})
    serial, chained = await _serial_and_chained(harness, monkeypatch, first, change, THREE)
    refused = ("command.rejected", "unknown_tenant" if change is None else "tenant_suspended")
    assert serial[0] == [("payment.succeeded", None), refused, refused]
    assert serial[1] == serial[0]
    if change is not None:  # (the suspended tenant's day: c1 alone counted, nothing held)
        assert serial[2]["volume"] == {"USD": 700} and not serial[2]["held"]
    assert chained == serial


@pytest.mark.parametrize("change", [TenantStatus.SUSPENDED, None], ids=["suspended", "removed"])
@pytest.mark.asyncio
async def test_tenant_stopped_while_waiting_for_earlier_payments_to_settle(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, change: TenantStatus | None
) -> None:
    """The read after wait_settled: c1 and c2 (7.00 each, chains of their own) under a
    10.00 volume; c2, refused by the trial while c1 holds 7.00 at the provider, waits for
    c1's answer, and the tenant is suspended (or removed) meanwhile. Serially c2 starts
    after c1 is answered and is refused as the registry then says; chained too."""
    first = TenantLimits(daily_payment_volume={"USD": 1000})
    bodies = [{**CARD, "payment_id": "p1"}, {**CARD, "payment_id": "p2"}]
    serial, chained = await _serial_and_chained(
        harness, monkeypatch, first, change, bodies, "wait_settled", 1
    )
    reason = "unknown_tenant" if change is None else "tenant_suspended"
    assert serial[0] == [("payment.succeeded", None), ("command.rejected", reason)]
    assert serial[1] == serial[0]
    assert chained == serial


@pytest.mark.asyncio
async def test_tenant_suspended_mid_run_finishes_what_a_lost_run_charged(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run again at its turn, a command of a suspended tenant is answered as one starting
    then: c1, c2 and c3 charged, the batch's every write lost in a crash, and the tenant
    suspended as it is redelivered. The provider says it took each (its key): each is
    let through and finishes, as serially, never refused after the charge."""
    first = TenantLimits(daily_payment_volume={"USD": 5000})
    serial, chained = await _serial_and_chained(
        harness, monkeypatch, first, TenantStatus.SUSPENDED, THREE, lost_before=True
    )
    assert serial[0] == [("payment.succeeded", None)] * 3
    assert serial[1] == serial[0]
    assert serial[2]["volume"] == {"USD": 2100}  # (each counted once)
    assert chained == serial


@pytest.mark.parametrize("change", [TenantStatus.SUSPENDED, None], ids=["suspended", "removed"])
@pytest.mark.asyncio
async def test_a_lost_run_s_entities_answer_a_command_run_again_at_its_turn(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, change: TenantStatus | None
) -> None:
    """Review h71h: as above, but the crash kept the payments it wrote and lost the rest
    (idempotency, limits, answers): run again at its turn, each command is let through
    by its entity, answered as serially, each counted once."""
    first = TenantLimits(daily_payment_volume={"USD": 5000})
    serial, chained = await _serial_and_chained(
        harness, monkeypatch, first, change, THREE, lost_before=True, entities_kept=True
    )
    assert serial[0] == [("payment.succeeded", None)] * 3
    assert serial[2]["volume"] == {"USD": 2100}
    assert chained == serial


@pytest.mark.asyncio
async def test_a_tenant_without_limits_has_its_chained_commands_in_flight_at_once(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What README's "Registry changes mid-run" says of a tenant without limits (review
    h71j): its chained command awaits nothing between reading its tenant and its
    provider call, so c3 (a chain of its own) is at its provider before c1 is answered.
    Limits added then find it in flight, and it goes on (one command a chain, where
    serially c1 alone was), while c2, starting after, is decided by them. A check at a
    turn for such commands would never fire; an await added on that path would open a
    window for one to start before a change and decide after it: this test then fails."""
    t = harness.add_tenant(limits=TenantLimits())
    runner = harness_runner(harness, monkeypatch)
    _set_concurrency(monkeypatch, 4)
    now = int(time.time() * 1000)
    part = 40
    await runner.process_batch(
        [_event(t, 1, ("customer.create", {"customer_id": "cu1"}, now), part)]
    )
    events = [
        _event(t, 2 + i, ("payment.create", body, now + 1 + i), part)
        for i, body in enumerate(THREE)
    ]
    seen: list[str] = []
    real = pipeline.HANDLERS["payment.create"]
    record = harness.tenants[t]
    added = TenantLimits(daily_payment_volume={"USD": 1000}).model_dump()

    async def at_provider(ctx: Any, body: Any) -> Any:
        seen.append(ctx.cmd.command_id)
        answer = await real(ctx, body)
        if ctx.cmd.command_id == "cmd-2" and "changed" not in seen:
            harness.tenants[t] = {**record, "limits": added}  # (c1 answered after)
            seen.append("changed")
        return answer

    monkeypatch.setitem(pipeline.HANDLERS, "payment.create", at_provider)
    done = await runner.process_batch(events)
    assert seen == ["cmd-2", "cmd-4", "changed", "cmd-3"]  # c1 and c3 in flight, then c2
    assert [k for k, _ in _outcomes(harness, done, t)] == ["payment.succeeded"] * 3
