"""`customer.export` finds a customer's records through an index (tables/owners.py), not
by reading three whole tables per export. The index is built on first use, kept by the
command agent's writes, built again after a rebalance, and not trusted while one is
under way; its stale entries (a record gone, or its owner changed) are checked away. An
export must hold exactly what a read of the whole tables finds."""

from __future__ import annotations

import random
from typing import Any

import pytest

from paystream.tables.owners import OwnerIndex
from tests.agents.harness import Harness, data, kind
from tests.agents.test_pipeline import _customer_with_card

pytestmark = pytest.mark.asyncio


@pytest.fixture
def harness(harness: Harness) -> Harness:
    """The index built at the first export (it waits for a few, by default)."""
    harness.tables.owners = OwnerIndex(scans_before_build=0)
    return harness


def _by_scan(h: Harness, tenant: str, customer: str) -> dict[str, list[str]]:
    """The export's ids as reading the whole tables finds them."""

    def ids(table: dict[str, Any], field: str, owners: set[str]) -> list[str]:
        return sorted(
            raw["id"]
            for key, raw in table.items()
            if key.startswith(f"{tenant}:") and raw is not None and raw.get(field) in owners
        )

    payments = ids(h.tables.payments, "customer_id", {customer})  # type: ignore[arg-type]
    return {
        "payment_methods": ids(h.tables.payment_methods, "customer_id", {customer}),  # type: ignore[arg-type]
        "payments": payments,
        "refunds": ids(h.tables.refunds, "payment_id", set(payments)),  # type: ignore[arg-type]
    }


async def _exported(h: Harness, tenant: str, customer: str) -> dict[str, list[str]]:
    out = await h.send("customer.export", tenant, {"customer_id": customer})
    assert kind(out) == "customer.exported", data(out)
    export = data(out)["export"]
    return {name: [row["id"] for row in export[name]] for name in _by_scan(h, tenant, customer)}


async def _pay(h: Harness, tenant: str, customer: str, method: str) -> str:
    body = {"amount": 800, "currency": "USD", "customer_id": customer, "payment_method_id": method}
    out = await h.send("payment.create", tenant, body)
    assert kind(out) == "payment.succeeded", data(out)
    return str(data(out)["entity_id"])


async def test_records_written_after_the_first_export_are_in_the_next(harness: Harness) -> None:
    t = harness.add_tenant()
    cid, pm1 = await _customer_with_card(harness, t)
    first = await _exported(harness, t, cid)  # (the index built here)
    assert first == {"payment_methods": [pm1], "payments": [], "refunds": []}
    pay = await _pay(harness, t, cid, pm1)
    await harness.send("refund.create", t, {"payment_id": pay, "amount": 100})
    pm2 = data(
        await harness.send(
            "payment_method.attach", t, {"customer_id": cid, "token": "pm_card_visa"}
        )
    )["entity_id"]
    again = await _exported(harness, t, cid)
    assert again == _by_scan(harness, t, cid)
    assert again["payment_methods"] == sorted([pm1, pm2]) and again["payments"] == [pay]
    assert len(again["refunds"]) == 1


async def test_a_record_gone_from_the_table_is_not_exported(harness: Harness) -> None:
    """An index entry outlives its record (a retention purge, a crash's lost write): the
    record is read, found gone, and left out."""
    t = harness.add_tenant()
    cid, pm1 = await _customer_with_card(harness, t)
    pay = await _pay(harness, t, cid, pm1)
    assert (await _exported(harness, t, cid))["payments"] == [pay]
    del harness.tables.payments[f"{t}:{pay}"]
    assert await _exported(harness, t, cid) == _by_scan(harness, t, cid)
    assert (await _exported(harness, t, cid))["payments"] == []


async def test_a_record_whose_owner_changed_is_not_exported_as_the_old_owners(
    harness: Harness,
) -> None:
    """Keys are never taken out of the index: a record now another customer's (written
    as recovery or a repair would, without the index seeing it) is read and left out."""
    t = harness.add_tenant()
    cid, pm1 = await _customer_with_card(harness, t)
    other = data(await harness.send("customer.create", t, {}))["entity_id"]
    pay = await _pay(harness, t, cid, pm1)
    assert (await _exported(harness, t, cid))["payments"] == [pay]
    record = harness.tables.payments[f"{t}:{pay}"]
    harness.tables.payments[f"{t}:{pay}"] = {**record, "customer_id": other}
    assert (await _exported(harness, t, cid))["payments"] == []


async def test_after_a_rebalance_records_recovered_meanwhile_are_exported(
    harness: Harness,
) -> None:
    """Recovery writes a table's store directly, not through the agent: the index is
    built again for a new consumer generation, and while a rebalance is under way
    (tables not yet recovered) the export reads the tables whole."""
    generation, settled = [1], [True]
    harness.tables.owners = OwnerIndex(
        generation=lambda: generation[0], settled=lambda: settled[0], scans_before_build=0
    )
    t = harness.add_tenant()
    cid, pm1 = await _customer_with_card(harness, t)
    pay = await _pay(harness, t, cid, pm1)
    await _exported(harness, t, cid)
    # A record of the customer arrives as recovery writes it (another worker's).
    recovered = {**harness.tables.payments[f"{t}:{pay}"], "id": "pay_recovered"}
    harness.tables.payments[f"{t}:pay_recovered"] = recovered
    generation[0], settled[0] = 2, False  # the rebalance, under way
    assert (await _exported(harness, t, cid))["payments"] == sorted([pay, "pay_recovered"])
    settled[0] = True
    assert (await _exported(harness, t, cid))["payments"] == sorted([pay, "pay_recovered"])


async def test_an_unsettled_index_asks_for_a_scan_and_builds_once_settled() -> None:
    settled = [False]
    index = OwnerIndex(generation=lambda: 7, settled=lambda: settled[0], scans_before_build=0)
    table = {"t1:pm1": {"customer_id": "cus1"}, "t2:pm2": {"customer_id": "cus1"}}
    assert index.keys_of("payment_method", table, "t1", {"cus1"}) is None
    settled[0] = True
    assert index.keys_of("payment_method", table, "t1", {"cus1"}) == ["t1:pm1"]
    index.note("payment_method", "t1:pm3", {"customer_id": "cus1"})
    index.note("payment_method", "t1:pm4", {"customer_id": "cus2"})
    assert index.keys_of("payment_method", table, "t1", {"cus1"}) == ["t1:pm1", "t1:pm3"]
    assert index.keys_of("payment_method", table, "t2", {"cus2"}) == []  # (tenants apart)


@pytest.mark.parametrize("seed", range(8))
async def test_random_histories_export_what_a_scan_finds(harness: Harness, seed: int) -> None:
    """Two tenants, two customers each (the same ids in both), attaches, detaches,
    payments, refunds and deletes in random order, exports among them: every export
    holds exactly the records a read of the whole tables finds."""
    rng = random.Random(seed)
    tenants = [harness.add_tenant(), harness.add_tenant()]
    people: dict[str, list[str]] = {}
    methods: dict[tuple[str, str], list[str]] = {}
    payments: dict[str, list[str]] = {}
    for t in tenants:
        for customer in ("cus_a", "cus_b"):
            await harness.send("customer.create", t, {"customer_id": customer})
            people.setdefault(t, []).append(customer)
    exports = 0
    for _ in range(60):
        t = rng.choice(tenants)
        customer = rng.choice(people[t])
        mine = methods.setdefault((t, customer), [])
        step = rng.random()
        if step < 0.25 or not mine:
            body = {"customer_id": customer, "token": "pm_card_visa"}
            out = await harness.send("payment_method.attach", t, body)
            if kind(out) == "payment_method.attached":
                mine.append(data(out)["entity_id"])
        elif step < 0.35:
            await harness.send("payment_method.detach", t, {"payment_method_id": mine.pop()})
        elif step < 0.6:
            body = {"amount": 500, "currency": "USD", "customer_id": customer,
                    "payment_method_id": rng.choice(mine)}  # fmt: skip
            out = await harness.send("payment.create", t, body)
            if kind(out) == "payment.succeeded":
                payments.setdefault(t, []).append(data(out)["entity_id"])
        elif step < 0.75 and payments.get(t):
            body = {"payment_id": rng.choice(payments[t]), "amount": 50}
            await harness.send("refund.create", t, body)
        elif step < 0.77:
            await harness.send("customer.delete", t, {"customer_id": customer})
        else:
            out = await harness.send("customer.export", t, {"customer_id": customer})
            if kind(out) == "customer.exported":
                exports += 1
                export = data(out)["export"]
                got = {name: [row["id"] for row in export[name]] for name in _by_scan(
                    harness, t, customer)}  # fmt: skip
                assert got == _by_scan(harness, t, customer)
    assert exports >= 3


async def test_a_generation_scans_for_its_first_exports_then_builds() -> None:
    """A build costs several scans (it hashes every owner id): rare exports scan."""
    generation = [1]
    index = OwnerIndex(generation=lambda: generation[0], scans_before_build=2)
    table = {"t1:pay1": {"customer_id": "cus1"}}
    assert index.keys_of("payment", table, "t1", {"cus1"}) is None
    assert index.keys_of("payment", table, "t1", {"cus1"}) is None
    assert index.keys_of("payment", table, "t1", {"cus1"}) == ["t1:pay1"]
    index.note("payment", "t1:pay2", {"customer_id": "cus1"})
    assert index.keys_of("payment", table, "t1", {"cus1"}) == ["t1:pay1", "t1:pay2"]
    generation[0] = 2  # a rebalance: scans again, then builds again
    assert index.keys_of("payment", table, "t1", {"cus1"}) is None
    index.note("payment", "t1:pay3", {"customer_id": "cus1"})  # (not kept: not built)
    assert index.keys_of("payment", table, "t1", {"cus1"}) is None
    assert index.keys_of("payment", table, "t1", {"cus1"}) == ["t1:pay1"]


async def test_a_built_index_is_let_go_while_a_rebalance_is_under_way() -> None:
    """A rejoin may keep the consumer generation while recovery writes the tables: a
    built index is not used during a rebalance, and is built again after (review)."""
    settled = [True]
    index = OwnerIndex(generation=lambda: 5, settled=lambda: settled[0], scans_before_build=0)
    table = {"t1:pay1": {"customer_id": "cus1"}}
    assert index.keys_of("payment", table, "t1", {"cus1"}) == ["t1:pay1"]
    settled[0] = False  # a rebalance begins; the rejoin keeps generation 5
    table["t1:pay2"] = {"customer_id": "cus1"}  # as recovery writes the store (no note)
    assert index.keys_of("payment", table, "t1", {"cus1"}) is None
    settled[0] = True
    assert index.keys_of("payment", table, "t1", {"cus1"}) == ["t1:pay1", "t1:pay2"]


async def test_an_export_during_a_same_generation_rebalance_holds_what_a_scan_finds(
    harness: Harness,
) -> None:
    settled = [True]
    harness.tables.owners = OwnerIndex(
        generation=lambda: 5, settled=lambda: settled[0], scans_before_build=0
    )
    t = harness.add_tenant()
    cid, pm1 = await _customer_with_card(harness, t)
    pay = await _pay(harness, t, cid, pm1)
    await _exported(harness, t, cid)  # the index built for generation 5
    settled[0] = False
    recovered = {**harness.tables.payments[f"{t}:{pay}"], "id": "pay_recovered"}
    harness.tables.payments[f"{t}:pay_recovered"] = recovered
    assert await _exported(harness, t, cid) == _by_scan(harness, t, cid)
    settled[0] = True
    assert await _exported(harness, t, cid) == _by_scan(harness, t, cid)
