"""Chains of a tenant with limits (agents/admission_order.py), audited: the paths the
random runs of test_tenant_chains_limits.py do not reach, each batch run with chains
(concurrency 4, handlers jittered as there) and serially on a twin tenant, with the same
answers, tables and limits state required:

* creates without a chosen id (held under their idempotency key), refreshes, a declined
  card and creates over the volume and the per-payment maximum, beside a rate limit;
* a create its provider keeps failing, parked holding its amount into the next batch;
  quota refusals that go on to ask the entity and the provider; a create over a payment
  that exists (answered as without limits, review h59f);
* the tenant's limits removed while a parked create still holds;
* the UTC day turning inside a batch (a hold counts on its day and the next);
* webhook refreshes (``exempt``) refilling the bucket in admission order;
* the cap on payments awaiting an answer (``pending_payments``) reached by the run's own
  creates: the trial refuses, the create waits for their answers and is admitted;
* a create waiting for the earlier commands to finish keeps its slot: at 2 and 3 slots
  the run still ends, and the runner alone at one slot;
* a crash inside a chained run (the store kept the writes up to a moment, or each table
  its own moment): the batch redelivered is answered as the first time.

Review h70a wrote these against a first design (a tenant's creates in one chain under a
daily volume, ``v:``), on a model of it; review h70c kept those that add to the suite,
run on the code itself. Neither found a limits decision differing from serial processing
here (h70a's finding, a chain ended by an exception leaving the others' admissions
waiting, is tested in test_tenant_chains_limits.py). With
the turnstile disabled (``Turn.wait`` returning False at once) 26 of the 34 failed (all
but the pending-payments, a 2-slot and some mixed-moment crash runs); with the settled
wait disabled (``_refused_while_others_hold`` returning False), 12: the parks, day, webhook
(some seeds), pending-payments and slot tests.
"""

from __future__ import annotations

import asyncio
import copy
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from paystream.agents import pipeline, tenant_chains
from paystream.agents.admission_order import ADMISSION_TURN
from paystream.agents.pipeline import CommandProcessor
from paystream.tenancy import limits as limits_module
from paystream.tenancy.limits import TenantLimits
from tests.agents.harness import Harness
from tests.agents.test_tenant_chains import harness_runner
from tests.agents.test_tenant_chains_differential import _outcomes, _tables
from tests.agents.test_tenant_chains_limits import (
    Spec,
    _event,
    _jitter,
    _limits_state,
    _set_concurrency,
)

pytestmark = pytest.mark.asyncio

T0 = 1_790_000_000_000  # 2026-09-21 (UTC): the first record's broker time
MIDNIGHT = 1_790_035_200_000  # 2026-09-22T00:00Z
CARD = {"currency": "USD", "payment_method_token": "pm_card_visa"}
DECLINED = {"currency": "USD", "payment_method_token": "pm_card_chargeDeclined"}
MANUAL = {"capture": "manual"}
# The parked create's payment: its provider key, failed on every call.
PARKED = "pk"

# (command type, data): record times are given by the runs.
Command = tuple[str, dict[str, Any]]


@dataclass
class Seen:
    """What a chained run did: batches run in chains, and the limits of the trial
    refusals that waited for the earlier commands to finish."""

    chained_runs: int = 0
    settled_waits: list[str] = field(default_factory=list)


def _parked_provider(tenant: str) -> dict[str, Any]:
    return {"latency_ms": 3, "fail_first": {f"pse:{tenant}:payment:{PARKED}": 1_000}}


def _set_provider(harness: Harness, tenant: str, options: dict[str, Any]) -> None:
    """The tenant's simulator options (its provider keys name the tenant)."""
    harness.tenants[tenant] = {**harness.tenants[tenant], "gateway_options": options}


def _specs(batches: list[list[Command]], t0: int, step_ms: int) -> list[list[Spec]]:
    at, out = t0, []
    for batch in batches:
        specs: list[Spec] = []
        for command_type, body in batch:
            specs.append((command_type, body, at))
            at += step_ms
        out.append(specs)
    return out


async def _differential(
    harness: Harness,
    monkeypatch: pytest.MonkeyPatch,
    batches: list[list[Spec]],
    seed: int,
    *,
    concurrency: int = 4,
    gateway: Callable[[str], dict[str, Any]] | None = None,
    between: Callable[[str, int], None] | None = None,
    **tenant_kw: Any,
) -> tuple[Any, Any, Seen]:
    """The batches with chains (``concurrency``) and serially, each on a tenant of its
    own with its provider's calls jittered by ``seed``: (answers, tables, limits state)
    of each, and what the chained run did. ``between(tenant, n)`` runs before batch
    ``n`` (n >= 1)."""
    seen = Seen()
    real_chains, real_refused = tenant_chains.run_in_chains, pipeline._refused_while_others_hold

    async def chains(*args: Any, **kw: Any) -> Any:
        seen.chained_runs += 1
        return await real_chains(*args, **kw)

    def refused(decision: Any) -> bool:
        waits = real_refused(decision)
        if waits:
            seen.settled_waits.append(decision.extra["limit"])
        return waits

    monkeypatch.setattr(tenant_chains, "run_in_chains", chains)
    monkeypatch.setattr(pipeline, "_refused_while_others_hold", refused)
    out = []
    for at_once in (concurrency, 1):
        tenant = harness.add_tenant(**tenant_kw)
        _set_provider(harness, tenant, {"latency_ms": 3} if gateway is None else gateway(tenant))
        runner = harness_runner(harness, monkeypatch)
        _set_concurrency(monkeypatch, at_once)
        _jitter(monkeypatch, random.Random(seed))
        answers, offset = [], 0
        for n, batch in enumerate(batches):
            if between is not None and n:
                between(tenant, n)
            events = []
            for spec in batch:
                offset += 1
                # (A partition of each run's own: kept answers are found by partition.)
                events.append(_event(tenant, offset, spec, partition=at_once))
            done = await asyncio.wait_for(runner.process_batch(events), 30)
            answers.append(_outcomes(harness, done, tenant))
        out.append((answers, _tables(harness, tenant), _limits_state(harness, tenant)))
        if at_once > 1:
            assert seen.chained_runs, "no batch of the chained run ran in chains"
    return out[0], out[1], seen


def _assert_alike(chained: Any, serial: Any, batches: list[list[Spec]]) -> None:
    for i, (a, b) in enumerate(zip(chained[0], serial[0], strict=True)):
        for j, (x, y) in enumerate(zip(a, b, strict=True)):
            assert x == y, (i, j, batches[i][j][:2], x, y)
    assert chained[1] == serial[1]
    assert chained[2] == serial[2]


def _mixed() -> list[list[Command]]:
    return [
        [
            ("payment.create", {**CARD, **MANUAL, "payment_id": "p1", "amount": 900}),
            ("payment.create", {**CARD, **MANUAL, "payment_id": "p2", "amount": 800}),
            ("payment.create", {**CARD, "payment_id": "p3", "amount": 700}),
        ],
        [
            ("payment.create", {**DECLINED, "amount": 900}),
            ("payment.capture", {"payment_id": "p1"}),
            ("payment.create", {**CARD, "amount": 500}),
            ("refund.create", {"payment_id": "p3", "amount": 100}),
            ("payment.cancel", {"payment_id": "p2"}),
            ("payment.create", {**CARD, "amount": 600}),
            ("payment.refresh", {"payment_id": "p3"}),
            ("payment.create", {**CARD, "amount": 2500}),
            ("refund.create", {"payment_id": "p1", "amount": 50}),
        ],
    ]


def _parks() -> list[list[Command]]:
    return [
        [
            ("payment.create", {**CARD, **MANUAL, "payment_id": "p1", "amount": 900}),
            ("payment.create", {**CARD, "payment_id": "p2", "amount": 400}),
        ],
        [
            ("payment.create", {**CARD, "payment_id": PARKED, "amount": 900}),  # holds 900
            ("payment.capture", {"payment_id": "p1"}),
            ("payment.create", {**CARD, "amount": 1200}),  # over: 900+400+900+1200
            ("refund.create", {"payment_id": "p2", "amount": 100}),
            ("payment.create", {**DECLINED, "amount": 100}),
            # Over the volume, but over a payment that exists: answered as without limits.
            ("payment.create", {**CARD, "payment_id": "p1", "amount": 2900}),
            ("payment.create", {**CARD, "amount": 700}),
            ("payment.refresh", {"payment_id": "p2"}),
            ("payment.create", {**CARD, "amount": 100}),
            ("payment.cancel", {"payment_id": "p2"}),
        ],
    ]


@pytest.mark.parametrize("seed", range(4))
async def test_volume_rate_and_max_with_unchosen_ids_as_serial(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    """A daily volume, a per-payment maximum and a rate limit together; creates held
    under their idempotency key, a declined card, refreshes, a create over the maximum:
    refusals of both kinds, decided as serially."""
    batches = _specs(_mixed(), T0, 250)
    limits = TenantLimits(
        commands_per_second=2, burst=3, max_payment_amount={"USD": 2000},
        daily_payment_volume={"USD": 3000},
    )  # fmt: skip
    chained, serial, _ = await _differential(harness, monkeypatch, batches, seed, limits=limits)
    _assert_alike(chained, serial, batches)
    reasons = {(d or {}).get("reason") for b in serial[0] for _, d in b}
    assert {"rate_limited", "quota_exceeded"} <= reasons


@pytest.mark.parametrize("seed", range(4))
async def test_a_parked_create_holds_and_quota_refusals_ask_as_serial(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    """A create its provider keeps failing is parked and holds its amount; later creates
    are refused by the volume (each then asks its entity and provider) or, over a payment
    that exists, answered as without limits."""
    batches = _specs(_parks(), T0, 50)
    chained, serial, _ = await _differential(
        harness, monkeypatch, batches, seed, gateway=_parked_provider,
        limits=TenantLimits(commands_per_second=20, burst=6, daily_payment_volume={"USD": 3000}),
    )  # fmt: skip
    _assert_alike(chained, serial, batches)
    assert serial[2]["held"], "the parked create holds"


@pytest.mark.parametrize("seed", range(3))
async def test_limits_removed_while_a_parked_create_holds_as_serial(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    """The tenant's limits are removed before the third batch, the parked create still
    holding: creates pass the limits' `not enforced` branch (no trial: no volume)."""

    def lift(tenant: str, n: int) -> None:
        if n == 2:
            harness.tenants[tenant] = {**harness.tenants[tenant], "limits": {}}

    parks = _parks()
    batches = _specs([*parks, parks[1][1:]], T0, 50)
    chained, serial, _ = await _differential(
        harness, monkeypatch, batches, seed, gateway=_parked_provider, between=lift,
        limits=TenantLimits(commands_per_second=5, burst=4, daily_payment_volume={"USD": 3000}),
    )  # fmt: skip
    _assert_alike(chained, serial, batches)


@pytest.mark.parametrize("seed", range(3))
async def test_the_day_turning_inside_a_batch_as_serial(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    """Midnight (UTC) falls inside the second batch: yesterday's holds still count on the
    new day, its answers count on yesterday (the `_add_volume` day guard)."""
    batches = _specs(_mixed(), MIDNIGHT - 5 * 400 - 1, 400)
    chained, serial, _ = await _differential(
        harness, monkeypatch, batches, seed,
        limits=TenantLimits(commands_per_second=2, burst=3, daily_payment_volume={"USD": 2000}),
    )  # fmt: skip
    _assert_alike(chained, serial, batches)
    days = {d["day"] for d in serial[2]["decided"].values()}
    assert len(days) == 2


@pytest.mark.parametrize("seed", range(3))
async def test_webhook_refreshes_refill_the_bucket_in_order(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    """Webhook refreshes (sealed as paystream's own: stood in for here by the refreshes
    at odd offsets) are ``exempt``: they refill the bucket and move its clock without
    spending, in admission order as every other command."""
    monkeypatch.setattr(
        CommandProcessor,
        "_own_refresh",
        lambda self, rec, cmd: cmd.command_type == "payment.refresh" and rec.offset % 2 == 1,
    )
    mixed = _mixed()
    mixed[1] = [
        c
        for n, command in enumerate(mixed[1])
        for c in (command, ("payment.refresh", {"payment_id": f"p{1 + n % 3}"}))
    ]
    batches = _specs(mixed, T0, 120)
    chained, serial, _ = await _differential(
        harness, monkeypatch, batches, seed,
        limits=TenantLimits(commands_per_second=4, burst=2, daily_payment_volume={"USD": 3000}),
    )  # fmt: skip
    _assert_alike(chained, serial, batches)


@pytest.mark.parametrize("seed", range(3))
async def test_the_run_reaching_the_cap_on_unanswered_payments_waits_as_serial(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    """At most 2 payments awaiting an answer (MAX_HOLDS lowered): a create finding two of
    the run's creates in flight is refused `pending_payments` by its trial, waits for their
    answers and is admitted, as serially (where they are answered before it)."""
    monkeypatch.setattr(limits_module, "MAX_HOLDS", 2)
    batches = _specs(
        [[("payment.create", {**CARD, "payment_id": f"p{i}", "amount": 100}) for i in range(5)]],
        T0, 10,
    )  # fmt: skip
    chained, serial, seen = await _differential(
        harness, monkeypatch, batches, seed, gateway=lambda t: {"latency_ms": 20},
        limits=TenantLimits(daily_payment_volume={"USD": 100_000}),
    )  # fmt: skip
    _assert_alike(chained, serial, batches)
    assert [k for k, _ in serial[0][0]] == ["payment.succeeded"] * 5
    assert "pending_payments" in seen.settled_waits


@pytest.mark.parametrize("concurrency", [2, 3])
async def test_a_create_waiting_for_earlier_answers_keeps_its_slot_without_a_deadlock(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, concurrency: int
) -> None:
    """Fewer slots than chains: a create refused while the earlier ones hold waits for
    them to finish keeping its slot; they are past their admission, each with a slot of
    its own, so the run ends (within the test's time-out) and decides as serially."""
    batches = _specs(
        [[
            ("payment.create", {**DECLINED, "payment_id": "a", "amount": 900}),
            ("payment.create", {**CARD, "payment_id": "b", "amount": 500}),
            ("payment.capture", {"payment_id": "b"}),
            ("payment.create", {**CARD, "payment_id": "c", "amount": 400}),
            ("payment.create", {**CARD, "payment_id": "d", "amount": 300}),
            ("refund.create", {"payment_id": "b", "amount": 100}),
        ]],
        T0, 10,
    )  # fmt: skip
    chained, serial, seen = await _differential(
        harness, monkeypatch, batches, 0, concurrency=concurrency,
        gateway=lambda t: {"latency_ms": 15},
        limits=TenantLimits(daily_payment_volume={"USD": 1000}),
    )  # fmt: skip
    _assert_alike(chained, serial, batches)
    assert seen.settled_waits


async def test_run_in_chains_with_settled_waits_at_one_slot() -> None:
    """The runner alone, one slot, three chains: each create waits for its turn and then
    for every earlier command to finish (as a refused one does), keeping its slot."""
    finished: list[int] = []

    async def run(i: int) -> int:
        turn = ADMISSION_TURN.get()
        assert turn is not None
        await turn.wait()
        await turn.wait_settled()
        assert finished == list(range(i))
        turn.passed()
        await asyncio.sleep(0)  # its provider call
        finished.append(i)
        return i

    result = await asyncio.wait_for(
        tenant_chains.run_in_chains(range(5), [[0, 3], [1, 4], [2]], run, 1), 5
    )
    assert result == [0, 1, 2, 3, 4]


# ---- a crash inside a chained run: the store keeps the writes up to a moment ----------


def _snapshot(harness: Harness) -> tuple[Any, ...]:
    names = ("payments", "refunds", "disputes", "customers", "payment_methods")
    return (
        {n: copy.deepcopy(dict(getattr(harness.tables, n))) for n in names},
        copy.deepcopy(dict(harness.idempotency)),
        copy.deepcopy(dict(harness.processor.limits.table)),
    )


def _restore(harness: Harness, tables: Any, idempotency: Any, limits: Any) -> None:
    for name, content in tables.items():
        live = getattr(harness.tables, name)
        live.clear()
        live.update(content)
    harness.idempotency.clear()
    harness.idempotency.update(idempotency)
    harness.processor.limits.table.clear()
    harness.processor.limits.table.update(limits)


def _snapshots_at_handlers(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, at: set[int]
) -> list[tuple[Any, ...]]:
    """Snapshots taken as the n-th handler call (n in ``at``) begins: commands admitted
    and holding, others in flight or waiting for their turn."""
    snaps: list[tuple[Any, ...]] = []
    calls = 0
    for command_type, real in list(pipeline.HANDLERS.items()):

        async def snapping(ctx: Any, body: Any, real: Any = real) -> Any:
            nonlocal calls
            calls += 1
            if calls in at:
                snaps.append(_snapshot(harness))
            return await real(ctx, body)

        monkeypatch.setitem(pipeline.HANDLERS, command_type, snapping)
    return snaps


async def _crash_run(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, seed: int, mix_tables: bool
) -> None:
    rng = random.Random(seed)
    tenant = harness.add_tenant(
        limits=TenantLimits(commands_per_second=8, burst=4, daily_payment_volume={"USD": 3000})
    )
    _set_provider(harness, tenant, _parked_provider(tenant))
    runner = harness_runner(harness, monkeypatch)
    _set_concurrency(monkeypatch, 4)
    parks, mixed = _parks(), _mixed()
    first_batch, batch = _specs([parks[0], parks[1] + mixed[1]], T0, 60)
    await runner.process_batch([_event(tenant, i + 1, s) for i, s in enumerate(first_batch)])
    events = [_event(tenant, len(first_batch) + i + 1, s) for i, s in enumerate(batch)]
    start = _snapshot(harness)
    _jitter(monkeypatch, rng)
    snaps = _snapshots_at_handlers(harness, monkeypatch, set(rng.sample(range(1, 15), 3)))
    first = _outcomes(harness, await runner.process_batch(events), tenant)
    assert len(snaps) == 3
    moments = [start, *snaps, _snapshot(harness)]
    if mix_tables:
        tables, idem, lim = (rng.choice(moments)[n] for n in range(3))
    else:
        tables, idem, lim = moments[1]
    _restore(harness, tables, idem, lim)
    _jitter(monkeypatch, random.Random(seed + 1000))
    again = _outcomes(harness, await runner.process_batch(events), tenant)
    reasons = [[(k, (d or {}).get("reason")) for k, d in run] for run in (first, again)]
    assert reasons[1] == reasons[0], [
        (batch[i][:2], x, y) for i, (x, y) in enumerate(zip(*reasons, strict=True)) if x != y
    ]


@pytest.mark.parametrize("seed", range(5))
async def test_a_crash_inside_a_chained_run_redelivered_is_answered_as_first(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    """The store kept every write up to a moment inside the run (RocksDB ahead of the
    changelog), then the batch came again."""
    await _crash_run(harness, monkeypatch, seed, mix_tables=False)


@pytest.mark.parametrize("seed", range(6))
async def test_a_crash_keeping_each_table_from_another_moment_is_answered_as_first(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    """As above, but the entity tables, the idempotency table and the limits table each
    as they were at a moment of their own (their changelogs delivered apart)."""
    await _crash_run(harness, monkeypatch, seed, mix_tables=True)
