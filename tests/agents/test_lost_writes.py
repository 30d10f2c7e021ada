"""A crash may persist any subset of a command's table writes; the replay must converge.

One command writes several changelog partitions (the idempotency record, the entity,
related entities) and a SIGKILL can land between any of them. For each command that
writes more than one record, every subset of its writes is rolled back to what it was
before the command, the command is redelivered, and the tables must end exactly as
after one clean run: same outcome bytes, same entities, each provider effect once.
"""

from __future__ import annotations

import itertools
import pickle
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from cloudevents.core.v1.event import CloudEvent

from paystream.client import build_command
from paystream.gateways.simulator import SimulatorGateway
from paystream.tenancy.models import Tenant
from tests.agents.harness import Harness, data, kind

pytestmark = pytest.mark.asyncio

WHEN_MS = 1_700_000_000_000
TABLES = ("customers", "payment_methods", "payments", "refunds", "disputes")

Setup = Callable[[Harness, str], Awaitable[CloudEvent]]


async def _refund_after_partial_refund(h: Harness, t: str) -> CloudEvent:
    pay = await h.send(
        "payment.create",
        t,
        {
            "payment_id": "pay_r",
            "amount": 1000,
            "currency": "USD",
            "payment_method_token": "pm_card_visa",
        },
    )
    assert kind(pay) == "payment.succeeded", data(pay)
    first = await h.send("refund.create", t, {"payment_id": "pay_r", "amount": 300})
    assert kind(first) == "refund.succeeded", data(first)
    return build_command("refund.create", t, {"payment_id": "pay_r", "amount": 200})


async def _capture(h: Harness, t: str) -> CloudEvent:
    auth = await h.send(
        "payment.create",
        t,
        {
            "payment_id": "pay_c",
            "amount": 700,
            "currency": "EUR",
            "payment_method_token": "pm_card_visa",
            "capture": "manual",
        },
    )
    assert kind(auth) == "payment.authorized", data(auth)
    return build_command("payment.capture", t, {"payment_id": "pay_c"})


async def _charge_that_is_disputed(h: Harness, t: str) -> CloudEvent:
    return build_command(
        "payment.create",
        t,
        {
            "payment_id": "pay_d",
            "amount": 500,
            "currency": "USD",
            "payment_method_token": "pm_card_createDispute",
        },
    )


async def _attach(h: Harness, t: str) -> CloudEvent:
    cus = await h.send("customer.create", t, {"customer_id": "cus_a", "email": "a@example.com"})
    assert kind(cus) == "customer.created"
    return build_command(
        "payment_method.attach", t, {"customer_id": "cus_a", "token": "pm_card_visa"}
    )


SCENARIOS: dict[str, Setup] = {
    "second_partial_refund": _refund_after_partial_refund,
    "capture": _capture,
    "charge_with_dispute": _charge_that_is_disputed,
    "attach": _attach,
}


T = TypeVar("T")


def snapshot(value: T) -> T:
    """A deep copy of table contents (plain data), as ``copy.deepcopy`` makes one, by
    pickling: a few times faster, and these tests copy every table before and after
    each of hundreds of crashes (deepcopy was a third of their time)."""
    copied: T = pickle.loads(pickle.dumps(value, pickle.HIGHEST_PROTOCOL))
    return copied


def _state(h: Harness) -> dict[str, dict[str, Any]]:
    state = {name: snapshot(dict(getattr(h.tables, name))) for name in TABLES}
    # expires_at is wall-clock based and rewritten by a replay (a re-run of a command let
    # through, its entity lost), and so is when an entity applied a command ("at");
    # everything else must match
    for records in state.values():
        for record in records.values():
            for entry in (record.get("applied") or {}).values():
                entry.pop("at", None)
    state["idempotency"] = {
        k: {**v, "expires_at": None} for k, v in snapshot(h.idempotency).items()
    }
    return state


def _changed(
    before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]
) -> list[tuple[str, str]]:
    return sorted(
        (table, key)
        for table in after
        for key in after[table].keys() | before[table].keys()
        if after[table].get(key) != before[table].get(key)
    )


def _mapping(h: Harness, table: str) -> Any:
    return h.idempotency if table == "idempotency" else getattr(h.tables, table)


async def _effects(h: Harness, t: str) -> list[tuple[str, str]]:
    gateway = h.pool.get(Tenant.model_validate(h.tenants[t]))
    assert isinstance(gateway, SimulatorGateway)
    return sorted((e.kind, e.idempotency_key) for e in await gateway.effects())


async def _writes_of(h: Harness, setup: Setup) -> tuple[str, CloudEvent, list[tuple[str, str]]]:
    probe_tenant = h.add_tenant()
    command = await setup(h, probe_tenant)
    before = _state(h)
    await h.send_event(command, timestamp_ms=WHEN_MS)
    return probe_tenant, command, _changed(before, _state(h))


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
@pytest.mark.parametrize("idempotency_lost_as", ["absent", "in_flight"])
async def test_replay_converges_whatever_subset_of_writes_was_lost(
    harness: Harness, scenario: str, idempotency_lost_as: str
) -> None:
    setup = SCENARIOS[scenario]
    _, _, writes = await _writes_of(harness, setup)
    assert len(writes) >= 2 and any(t == "idempotency" for t, _ in writes), writes
    positions = range(len(writes))
    subsets = [s for n in range(1, len(writes) + 1) for s in itertools.combinations(positions, n)]
    for subset in subsets:
        t = harness.add_tenant()
        command = await setup(harness, t)
        before = _state(harness)
        emits, first = await harness.send_event(command, timestamp_ms=WHEN_MS)
        assert first is not None
        after = _state(harness)
        effects = await _effects(harness, t)
        lost = [_changed(before, after)[i] for i in subset]
        for table, key in lost:
            mapping = _mapping(harness, table)
            previous = before[table].get(key)
            if table == "idempotency" and idempotency_lost_as == "in_flight":
                done = after[table][key]
                written = {k: v for k, v in done.items() if k != "counted"}  # as written then
                mapping[key] = {**written, "state": "in_flight", "outcome": None, "expires_at": 2e9}
            elif previous is None:
                del mapping[key]
            else:
                mapping[key] = snapshot(previous)

        replay_emits, replay = await harness.send_event(command, timestamp_ms=WHEN_MS)

        label = f"{scenario}: lost {lost}"
        assert replay is not None, label
        assert [e.record for e in replay_emits] == [e.record for e in emits], label
        assert _state(harness) == after, label
        assert await _effects(harness, t) == effects, label
