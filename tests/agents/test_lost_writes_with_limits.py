"""A crash may land any of a batch's changelog partitions and lose the rest, for a tenant
whose rate limit and quotas refuse some of the batch's commands and let others through:
its redelivery must answer every command as it did, end with the same tables (the
limits table exactly: the tenant's bucket, volume, holds and kept decisions, and the
partition's kept rejections under ``answers\\x00...``), and move no money twice.

tests/agents/test_lost_writes_in_a_batch.py does this for tenants without limits. With
them, the limits table is one more changelog partition a crash may land or lose, and one
of the batch's decisions: `_delivery_order` (agents/commands.py) produces it with the
idempotency records first, and waits for both, when the batch has a rejection (or
writes an entity others read). Such a crash may then lose part of the decisions (the
idempotency partition, or the limits one, with everything after them), or, with every
decision landed, any of the rest; any other batch any of its partitions.

Every command here is read at the same record timestamp (setups included), so the
bucket never refills: what a batch may spend is fixed by the burst, and a run again
decides as the first run did. Limits refuse a batch's commands three ways: the rate
(`rate_limited`), the largest payment and the day's volume (`quota_exceeded`).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from cloudevents.core.v1.event import CloudEvent

from paystream.client import build_command
from paystream.streams.codec import decode_record
from paystream.streams.commands import COMMAND_PREFIX, PROVIDER_READS
from tests.agents.harness import Harness, data, kind
from tests.agents.test_lost_writes import _effects, _state, snapshot
from tests.agents.test_lost_writes_in_a_batch import _decisions_first, _random_command, _type

pytestmark = pytest.mark.asyncio

WHEN_MS = 1_700_000_000_000
ENTITIES = ("customers", "payment_methods", "payments", "refunds", "disputes")
DECISIONS = ("idempotency", "limits")
TABLES = (*ENTITIES, *DECISIONS)

Make = Callable[[Harness, str], Awaitable[list[CloudEvent]]]


def _mapping(h: Harness, name: str) -> Any:
    if name == "limits":
        return h.processor.limits.table
    return h.idempotency if name == "idempotency" else getattr(h.tables, name)


def _full_state(h: Harness) -> dict[str, dict[str, Any]]:
    """The tables as compared: the entities and idempotency records as
    test_lost_writes normalises them, and the limits table exactly as it is."""
    state = _state(h)
    state["limits"] = snapshot(dict(h.processor.limits.table))
    return state


async def _sent(h: Harness, tenant: str, command_type: str, body: dict[str, Any]) -> CloudEvent:
    """A setup command, read at the batch's timestamp (no refill before the batch)."""
    _, out = await h.send_event(build_command(command_type, tenant, body), timestamp_ms=WHEN_MS)
    assert out is not None and kind(out) != "command.rejected", (command_type, out and data(out))
    return out


async def _run(h: Harness, batch: list[CloudEvent]) -> list[Any]:
    emits = []
    for offset, event in enumerate(batch, start=100):  # (as read: partition 0, an offset)
        emitted, _ = await h.send_event(event, timestamp_ms=WHEN_MS, offset=offset)
        emits += emitted
    return emits


def _answers(h: Harness, emits: list[Any]) -> list[str]:
    """Each outcome's type, with a rejection's reason (``type:reason``)."""
    out = []
    for e in emits:
        if e.topic != h.settings.events_topic:
            continue
        event = decode_record(e.record.key, e.record.value, dict(e.record.headers))
        name = kind(event)
        reason = data(event).get("reason") if name == "command.rejected" else None
        out.append(f"{name}:{reason}" if reason else name)
    return out


def _crashes(written: set[str], decided_first: bool) -> list[tuple[tuple[str, ...], bool]]:
    """What each crash the delivery order allows loses, and whether the batch's outcomes
    were published then: with decisions produced first, (published) any of the rest
    with every decision landed, or (not: the outcomes come after them) a part of the
    decisions and everything after; otherwise (published) any of the tables. The last
    crash loses everything, the outcomes too."""
    everything = tuple(sorted(written))
    crashes: list[tuple[tuple[str, ...], bool]]
    if decided_first:
        decisions = sorted(written & set(DECISIONS))
        rest = sorted(written - set(DECISIONS))
        crashes = [
            (lost, True)
            for n in range(1, len(rest) + 1)
            for lost in itertools.combinations(rest, n)
        ]
        crashes += [
            (tuple(sorted((*part, *rest))), False)
            for n in range(1, len(decisions) + 1)
            for part in itertools.combinations(decisions, n)
        ]
    else:
        may_lose = sorted(written)
        crashes = [
            (lost, True)
            for n in range(1, len(may_lose) + 1)
            for lost in itertools.combinations(may_lose, n)
        ]
    crashes = [c for c in dict.fromkeys(crashes) if c[0] != everything]
    return [*crashes, (everything, False)]


# Per batch run: the crashes tried, the first run's answers, whether it kept a rejection
# in the partition's shards (answers.py), not only in the tenant's limits record.
CRASHES_TRIED: dict[str, int] = {}
FIRST_ANSWERS: dict[str, list[str]] = {}
KEPT_IN_SHARDS: set[str] = set()


async def _every_crash(h: Harness, limits: dict[str, Any], make: Make, what: str) -> list[str]:
    """Run the batch ``make`` sets up (on a fresh tenant with ``limits`` each time), then
    each crash the delivery order allows, redelivering it after each: the same outcomes,
    tables and provider effects. Returns the first run's answers (see ``_answers``).

    As in test_lost_writes_in_a_batch: a crash that lost decisions (all, or one of the
    two partitions) published no outcome (they come after), so every answer but a
    provider read's is compared by type and reason only, with the provider effects and
    the limits table (a customer delete run again finds its provider's customer gone:
    another outcome, never published); outcomes before an erasure are compared by type,
    the erasure scrubbed their stored outcomes. A limits record lost while the
    idempotency records landed is rebuilt from them (see ``_rebuilt``)."""
    answers: list[str] = []
    for n in itertools.count():
        tenant = h.add_tenant(limits=limits)
        batch = await make(h, tenant)
        before = _full_state(h)
        # The tables as they are (``before`` is normalised, for comparing): what a lost
        # partition is put back to.
        raw_before = {name: snapshot(dict(_mapping(h, name))) for name in TABLES}
        emits = await _run(h, batch)
        after = _full_state(h)
        effects = await _effects(h, tenant)
        answers = _answers(h, emits)
        written = {
            name
            for name in TABLES
            if any(
                after[name].get(k) != before[name].get(k)
                for k in after[name].keys() | before[name].keys()
            )
        }
        if any(
            key.startswith("answers\x00") and after["limits"][key] != before["limits"].get(key)
            for key in after["limits"]
        ):
            KEPT_IN_SHARDS.add(what)
        decided_first = _decisions_first(emits, written)
        crashes = _crashes(written, decided_first)
        if n >= len(crashes):
            CRASHES_TRIED[what] = n
            FIRST_ANSWERS[what] = answers
            return answers
        lost, published = crashes[n]
        for name in lost:
            mapping = _mapping(h, name)
            for key in after[name].keys() | before[name].keys():
                if key in raw_before[name]:
                    mapping[key] = snapshot(raw_before[name][key])
                else:
                    mapping.pop(key, None)
        replayed = await _run(h, batch)
        label = f"{what}: {answers}, lost {lost} (decisions first: {decided_first})"
        first = [e.record for e in emits if e.topic == h.settings.events_topic]
        again = [e.record for e in replayed if e.topic == h.settings.events_topic]
        now, then = _full_state(h), after
        if "limits" in lost and "idempotency" not in lost:
            now, then = _rebuilt(now), _rebuilt(after)
        if not published:
            reads = [e.get_type().removeprefix(COMMAND_PREFIX) in PROVIDER_READS for e in batch]
            redone = _answers(h, replayed)
            assert [a for a, read in zip(redone, reads, strict=True) if not read] == [
                a for a, read in zip(answers, reads, strict=True) if not read
            ], f"{label}: again {redone}"
            assert await _effects(h, tenant) == effects, label
            assert now["limits"] == then["limits"], f"{label}: {_diff(now, then, 'limits')}"
            continue
        assert _answers(h, replayed) == answers, f"{label}: again {_answers(h, replayed)}"
        erased_at = next(
            (i for i, e in enumerate(batch) if e.get_type().endswith(".customer.erase")), 0
        )
        assert [_type(r) for r in again] == [_type(r) for r in first], label
        assert again[erased_at:] == first[erased_at:], label
        for name in TABLES:
            assert now[name] == then[name], f"{label}: table {name}: {_diff(now, then, name)}"
        assert await _effects(h, tenant) == effects, label
    raise AssertionError("unreachable")


def _rebuilt(state: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``state`` with what a lost limits record rebuilt from idempotency records cannot
    know blanked: an admission's currency and amount, kept in its decision only to count
    it once it is answered (`LimitGate.account_answered` rebuilds it answered, counted or
    not, as it then is). The rest (bucket, volume, holds, rejections) must match."""
    limits = snapshot(state["limits"])
    for record in limits.values():
        for decided in (record.get("decided") or {}).values() if "decided" in record else ():
            if decided.get("admit"):
                decided.update(currency=None, amount=None)
    return {**state, "limits": limits}


def _diff(now: dict[str, Any], after: dict[str, Any], name: str) -> str:
    keys = sorted(k for k in now[name].keys() | after[name].keys()
                  if now[name].get(k) != after[name].get(k))  # fmt: skip
    return "; ".join(f"{k!r}: again {now[name].get(k)} first {after[name].get(k)}" for k in keys)


# ---- named batches ---------------------------------------------------------------------


async def _customer_with_method(h: Harness, tenant: str) -> None:
    await _sent(h, tenant, "customer.create", {"customer_id": "cus1", "email": "a@example.com"})
    attach = {"customer_id": "cus1", "token": "pm_card_visa", "payment_method_id": "pm1"}
    await _sent(h, tenant, "payment_method.attach", attach)


def _charge(tenant: str, pid: str = "pay1", amount: int = 1000, **more: Any) -> CloudEvent:
    body = {"payment_id": pid, "amount": amount, "currency": "USD", **more}
    return build_command("payment.create", tenant, body)


def _visa(tenant: str, pid: str = "pay1", amount: int = 1000, **more: Any) -> CloudEvent:
    return _charge(tenant, pid, amount, payment_method_token="pm_card_visa", **more)


@dataclass(frozen=True)
class Named:
    limits: dict[str, Any]
    make: Make
    answers: list[str]  # the first run's (the limits refuse what they should)


async def _over_the_largest_then_charged(h: Harness, tenant: str) -> list[CloudEvent]:
    return [_visa(tenant, "pay1", 1500), _visa(tenant, "pay2", 900)]


async def _charged_then_over_the_day(h: Harness, tenant: str) -> list[CloudEvent]:
    return [
        _visa(tenant, "pay1", 1000),
        _visa(tenant, "pay2", 1000),
        build_command("refund.create", tenant, {"payment_id": "pay1", "amount": 400}),
    ]


async def _declined_releases_its_hold(h: Harness, tenant: str) -> list[CloudEvent]:
    return [
        _charge(tenant, "pay1", 1000, payment_method_token="pm_card_chargeDeclined"),
        _visa(tenant, "pay2", 1000),
        _visa(tenant, "pay3", 600),
    ]


async def _updates_past_the_burst(h: Harness, tenant: str) -> list[CloudEvent]:
    await _sent(h, tenant, "customer.create", {"customer_id": "cus1", "email": "a@example.com"})
    return [
        build_command("customer.update", tenant, {"customer_id": "cus1", "name": "B"}),
        build_command("customer.update", tenant, {"customer_id": "cus1", "name": "C"}),
        build_command("customer.update", tenant, {"customer_id": "cus1", "name": "D"}),
    ]


async def _charge_then_detach_rate_limited(h: Harness, tenant: str) -> list[CloudEvent]:
    await _customer_with_method(h, tenant)
    return [
        _charge(tenant, customer_id="cus1", payment_method_id="pm1"),
        build_command("payment_method.detach", tenant, {"payment_method_id": "pm1"}),
    ]


async def _detach_then_charge_rate_limited(h: Harness, tenant: str) -> list[CloudEvent]:
    await _customer_with_method(h, tenant)
    return [
        build_command("payment_method.detach", tenant, {"payment_method_id": "pm1"}),
        _charge(tenant, customer_id="cus1", payment_method_id="pm1"),
    ]


async def _over_quota_then_delete_customer(h: Harness, tenant: str) -> list[CloudEvent]:
    await _customer_with_method(h, tenant)
    return [
        _charge(tenant, customer_id="cus1", payment_method_id="pm1"),
        build_command("customer.delete", tenant, {"customer_id": "cus1"}),
    ]


async def _capture_then_over_the_day(h: Harness, tenant: str) -> list[CloudEvent]:
    await _sent(h, tenant, "payment.create", {"payment_id": "pay0", "amount": 700,
                "currency": "USD", "payment_method_token": "pm_card_visa",
                "capture": "manual"})  # fmt: skip
    return [
        build_command("payment.capture", tenant, {"payment_id": "pay0"}),
        _visa(tenant, "pay1", 900),
        _visa(tenant, "pay2", 800),
    ]


async def _awaiting_3ds_holds_the_day(h: Harness, tenant: str) -> list[CloudEvent]:
    return [
        _charge(tenant, "pay1", 1000, payment_method_token="pm_card_authenticationRequired"),
        build_command("payment.refresh", tenant, {"payment_id": "pay1"}),
        _visa(tenant, "pay2", 900),
    ]


async def _over_the_largest_then_refund_not_found(h: Harness, tenant: str) -> list[CloudEvent]:
    """The refund of the payment the limits refused is refused `not_found`, kept in the
    partition's shard (a state-dependent rejection); then that payment id is charged."""
    return [
        _visa(tenant, "pay1", 1500),
        build_command("refund.create", tenant, {"payment_id": "pay1", "amount": 100}),
        _visa(tenant, "pay1", 900),
    ]


async def _unlisted_currency_then_charged(h: Harness, tenant: str) -> list[CloudEvent]:
    eur = {"payment_id": "pay1", "amount": 100, "currency": "EUR",
           "payment_method_token": "pm_card_visa"}  # fmt: skip
    return [build_command("payment.create", tenant, eur), _visa(tenant, "pay2", 500)]


async def _rate_limited_resend_of_a_charge(h: Harness, tenant: str) -> list[CloudEvent]:
    first = _visa(tenant, "pay1", 500)
    resend = build_command(
        "payment.create", tenant, data(first), idempotency_key=first.get_id()
    )  # another command id, the same request under the same key
    return [
        first,
        resend,
        build_command("refund.create", tenant, {"payment_id": "pay1", "amount": 100}),
        build_command("refund.create", tenant, {"payment_id": "pay1"}),
    ]


RATE = {"commands_per_second": 1}
NAMED: dict[str, Named] = {
    "over_the_largest_then_charged": Named(
        {"max_payment_amount": {"USD": 1000}},
        _over_the_largest_then_charged,
        ["command.rejected:quota_exceeded", "payment.succeeded"],
    ),
    "over_the_largest_then_refund_not_found": Named(
        {"max_payment_amount": {"USD": 1000}},
        _over_the_largest_then_refund_not_found,
        ["command.rejected:quota_exceeded", "command.rejected:not_found", "payment.succeeded"],
    ),
    "charged_then_over_the_day": Named(
        {"daily_payment_volume": {"USD": 1500}},
        _charged_then_over_the_day,
        ["payment.succeeded", "command.rejected:quota_exceeded", "refund.succeeded"],
    ),
    "declined_releases_its_hold": Named(
        {"daily_payment_volume": {"USD": 1500}},
        _declined_releases_its_hold,
        ["payment.failed", "payment.succeeded", "command.rejected:quota_exceeded"],
    ),
    "updates_past_the_burst": Named(
        {**RATE, "burst": 3},
        _updates_past_the_burst,
        ["customer.updated", "customer.updated", "command.rejected:rate_limited"],
    ),
    "charge_then_detach_rate_limited": Named(
        {**RATE, "burst": 3},
        _charge_then_detach_rate_limited,
        ["payment.succeeded", "command.rejected:rate_limited"],
    ),
    "detach_then_charge_rate_limited": Named(
        {**RATE, "burst": 3},
        _detach_then_charge_rate_limited,
        ["payment_method.detached", "command.rejected:rate_limited"],
    ),
    "over_quota_then_delete_customer": Named(
        {"max_payment_amount": {"USD": 500}},
        _over_quota_then_delete_customer,
        ["command.rejected:quota_exceeded", "customer.deleted"],
    ),
    "capture_then_over_the_day": Named(
        {**RATE, "burst": 3, "daily_payment_volume": {"USD": 1600}},
        _capture_then_over_the_day,
        ["payment.succeeded", "payment.succeeded", "command.rejected:rate_limited"],
    ),
    "capture_then_over_the_day_by_volume": Named(
        {"daily_payment_volume": {"USD": 1600}},
        _capture_then_over_the_day,
        ["payment.succeeded", "payment.succeeded", "command.rejected:quota_exceeded"],
    ),
    "awaiting_3ds_holds_the_day": Named(
        {"daily_payment_volume": {"USD": 1500}},
        _awaiting_3ds_holds_the_day,
        ["payment.requires_action", "payment.requires_action", "command.rejected:quota_exceeded"],
    ),
    "unlisted_currency_then_charged": Named(
        {"daily_payment_volume": {"USD": 1500}, "only_listed_currencies": True},
        _unlisted_currency_then_charged,
        ["command.rejected:quota_exceeded", "payment.succeeded"],
    ),
    "rate_limited_resend_of_a_charge": Named(
        {**RATE, "burst": 2, "daily_payment_volume": {"USD": 1500}},
        _rate_limited_resend_of_a_charge,
        [
            "payment.succeeded",
            "payment.succeeded",
            "refund.succeeded",
            "command.rejected:rate_limited",
        ],
    ),
}


@pytest.mark.parametrize("name", sorted(NAMED))
async def test_a_limited_batch_redelivered_after_any_crash_is_answered_as_it_was(
    harness: Harness, name: str
) -> None:
    case = NAMED[name]
    answers = await _every_crash(harness, case.limits, case.make, name)
    assert answers == case.answers
    assert CRASHES_TRIED[name] >= 2
    if name == "over_the_largest_then_refund_not_found":
        assert name in KEPT_IN_SHARDS


# ---- random batches --------------------------------------------------------------------

SETUP_COMMANDS = 4  # of _customer_method_and_payments
SEEDS = range(100)


async def _customer_method_and_payments(h: Harness, tenant: str) -> None:
    """cus1 with pm1; pay0 authorised with them, payS a succeeded card payment (USD 2000
    of the day's volume counted)."""
    await _customer_with_method(h, tenant)
    await _sent(h, tenant, "payment.create", {"payment_id": "pay0", "amount": 1000,
                "currency": "USD", "customer_id": "cus1", "payment_method_id": "pm1",
                "capture": "manual"})  # fmt: skip
    await _sent(h, tenant, "payment.create", {"payment_id": "payS", "amount": 1000,
                "currency": "USD", "payment_method_token": "pm_card_visa"})  # fmt: skip


def _random_limited_command(rng: random.Random, tenant: str) -> CloudEvent:
    """One of the batch test's random commands, or a payment over the largest amount."""
    if rng.random() < 0.15:
        return _visa(tenant, rng.choice(["payN", "payM"]), 1200)
    return _random_command(rng, tenant)


def _random_limits(seed: int) -> dict[str, Any]:
    """A rate the batch may spend 1 to 3 commands of; USD 1000 a payment, USD 3000 a
    day (USD 1000 left after the setup: a new payment of 900 passes, then 500 does not)."""
    rng = random.Random(f"limits {seed}")
    return {
        "commands_per_second": 1,
        "burst": SETUP_COMMANDS + rng.choice([1, 2, 3, 3]),
        "max_payment_amount": {"USD": 1000},
        "daily_payment_volume": {"USD": 3000},
    }


@pytest.mark.parametrize("seed", SEEDS)
async def test_a_random_limited_batch_of_three_redelivered_after_any_crash(
    harness: Harness, seed: int
) -> None:
    async def make(h: Harness, tenant: str) -> list[CloudEvent]:
        await _customer_method_and_payments(h, tenant)
        rng = random.Random(seed)  # (the same batch for every crash)
        return [_random_limited_command(rng, tenant) for _ in range(3)]

    await _every_crash(harness, _random_limits(seed), make, f"seed {seed}")


async def test_the_random_batches_are_refused_by_limits_and_let_through() -> None:
    """(Run after the seeds, when they all ran: the limits both refused and let through
    commands of the batches, so rejections were kept and admissions counted, and other
    rejections were kept in the partition's shards.)"""
    ran = [FIRST_ANSWERS[f"seed {s}"] for s in SEEDS if f"seed {s}" in FIRST_ANSWERS]
    if len(ran) < len(SEEDS):
        pytest.skip("only with every seed run")
    answers = [a for batch in ran for a in batch]
    for limit in ("rate_limited", "quota_exceeded"):
        assert sum(a.endswith(f":{limit}") for a in answers) >= 10, answers
    assert sum(not a.startswith("command.rejected") for a in answers) >= len(SEEDS), answers
    assert len(KEPT_IN_SHARDS & {f"seed {s}" for s in SEEDS}) >= 10
