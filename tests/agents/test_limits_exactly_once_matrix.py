"""A payment's money counts exactly once toward the day: every subset of a batch's writes
a crash may lose (idempotency record done / in flight / gone; the entity; the limits
record kept, left at the admission, or lost), at the charging record, at a re-drive,
at the resend that made the payment, past the idempotency window, for a suspended
tenant, and for records of versions before id salts."""

from __future__ import annotations

import copy
import itertools
from typing import Any

import pytest

from paystream.agents.pipeline import Inbound
from tests.agents.harness import Harness, data, kind, new_tenant_id
from tests.agents.test_let_through import _answer, _charges, _record
from tests.agents.test_limits_exactly_once import LIMITS, holds, in_flight, limited_tenant, used

pytestmark = pytest.mark.asyncio


async def crash_run(
    h: Harness,
    t: str,
    rec: Inbound,
    idem: str,
    entity: bool,
    limits: str,
    idem_key: str = "c1",
) -> Any:
    """Process ``rec``, then undo the writes a crash lost: idem in {done, in_flight, none},
    entity kept or not, limits in {kept, admit, lost}."""
    ik, pk, lk = f"{t}:{idem_key}", f"{t}:p1", f"{t}:limits"
    table = h.processor.limits.table
    b_idem, b_ent, b_lim = (
        copy.deepcopy(x.get(k))
        for x, k in ((h.idempotency, ik), (h.tables.payments, pk), (table, lk))
    )
    snap: dict[str, Any] = {}
    orig = h.processor.limits.settle

    def spy(adm: Any, ot: str) -> None:
        snap["s"] = copy.deepcopy(table.get(lk))
        orig(adm, ot)

    h.processor.limits.settle = spy  # type: ignore[method-assign]
    try:
        out = await h.processor.process(rec)
    finally:
        h.processor.limits.settle = orig  # type: ignore[method-assign]

    def restore(m: Any, k: str, v: Any) -> None:
        if v is None:
            m.pop(k, None)
        else:
            m[k] = v

    if idem == "in_flight" and h.idempotency.get(ik, {}).get("state") == "done":
        h.idempotency[ik] = in_flight(h.idempotency[ik])
    elif idem == "none":
        restore(h.idempotency, ik, b_idem)
    if not entity:
        restore(h.tables.payments, pk, b_ent)
    if limits == "lost":
        restore(table, lk, b_lim)
    elif limits == "admit" and "s" in snap:
        restore(table, lk, snap["s"])
    return out


SUBSETS = list(itertools.product(["done", "in_flight", "none"], [True, False],
                                 ["kept", "admit", "lost"]))  # fmt: skip


@pytest.mark.parametrize(("idem", "entity", "limits"), SUBSETS)
async def test_V1_crash_redelivery_of_the_charging_record(
    harness: Harness, idem: str, entity: bool, limits: str
) -> None:
    h = harness
    t = limited_tenant(h)
    o1 = _record(t)
    await crash_run(h, t, o1, idem, entity, limits)
    out = await _answer(h, o1)
    assert kind(out) == "payment.succeeded", data(out)
    assert used(h, t) == 5000 and holds(h, t) == {}
    assert await _charges(h, t, h.tenants[t]) == 1


@pytest.mark.parametrize(("idem", "entity", "limits"), SUBSETS)
async def test_V2_parked_then_redriven_with_crash_at_the_redrive(
    harness: Harness, idem: str, entity: bool, limits: str
) -> None:
    h = harness
    t = new_tenant_id()
    h.add_tenant(
        t, limits=LIMITS, gateway_options={"lose_response_first": {f"pse:{t}:payment:p1": 3}}
    )
    emits = await h.processor.process(_record(t))
    assert [e.topic for e in emits] == [h.settings.retry_topic]
    assert len(holds(h, t)) == 1 and used(h, t) == 0
    o2 = _record(t)
    await crash_run(h, t, o2, idem, entity, limits)
    out = await _answer(h, o2)
    assert kind(out) == "payment.succeeded", data(out)
    assert used(h, t) == 5000 and holds(h, t) == {}
    assert await _charges(h, t, h.tenants[t]) == 1


@pytest.mark.parametrize(
    ("idem", "limits"),
    list(itertools.product(["done", "in_flight", "none"], ["kept", "admit", "lost"])),
)
async def test_V3_answered_by_another_with_crash_at_the_redrive(
    harness: Harness, idem: str, limits: str
) -> None:
    h = harness
    t = new_tenant_id()
    h.add_tenant(
        t, limits=LIMITS, gateway_options={"lose_response_first": {f"pse:{t}:payment:p1": 3}}
    )
    await h.processor.process(_record(t))  # c1 parked
    made = await _answer(h, _record(t, "c2"))
    assert kind(made) == "payment.succeeded" and used(h, t) == 5000
    o2 = _record(t)
    await crash_run(h, t, o2, idem, True, limits)
    out = await _answer(h, o2)
    assert data(out)["answered_by"] == "c2"
    assert used(h, t) == 5000 and holds(h, t) == {}


@pytest.mark.parametrize(("idem", "entity", "limits"), SUBSETS)
async def test_V3b_the_resend_that_made_it_crashes(
    harness: Harness, idem: str, entity: bool, limits: str
) -> None:
    h = harness
    t = new_tenant_id()
    h.add_tenant(
        t, limits=LIMITS, gateway_options={"lose_response_first": {f"pse:{t}:payment:p1": 3}}
    )
    await h.processor.process(_record(t))  # c1 parked
    oc2 = _record(t, "c2")
    await crash_run(h, t, oc2, idem, entity, limits, idem_key="c2")
    made = await _answer(h, oc2)
    assert kind(made) == "payment.succeeded"
    out = await _answer(h, _record(t))  # c1 re-driven
    assert kind(out) == "payment.succeeded"
    assert used(h, t) == 5000 and holds(h, t) == {}
    assert await _charges(h, t, h.tenants[t]) == 1


@pytest.mark.parametrize(
    ("entity", "limits"), list(itertools.product([True, False], ["kept", "lost"]))
)
async def test_V4_resend_past_window_crash_with_both_idempotency_writes_lost(
    harness: Harness, entity: bool, limits: str
) -> None:
    h = harness
    t = limited_tenant(h)
    await _answer(h, _record(t))
    del h.idempotency[f"{t}:c1"]
    resend = _record(t)
    await crash_run(h, t, resend, "none", entity, limits)
    out = await _answer(h, resend)
    assert kind(out) == "payment.succeeded"
    assert used(h, t) == 5000 and holds(h, t) == {}


@pytest.mark.parametrize("limits", ["kept", "admit", "lost"])
async def test_V5_suspended_tenants_redelivery(harness: Harness, limits: str) -> None:
    h = harness
    t = limited_tenant(h)
    o1 = _record(t)
    await crash_run(h, t, o1, "done", True, limits)
    h.tenants[t] = {**h.tenants[t], "status": "suspended"}
    out = await _answer(h, o1)
    assert kind(out) == "payment.succeeded"
    assert used(h, t) == 5000 and holds(h, t) == {}


@pytest.mark.parametrize("limits", ["kept", "admit", "lost"])
async def test_V6_older_version_records_without_salt_redelivered(
    harness: Harness, limits: str
) -> None:
    h = harness
    t = limited_tenant(h)
    o1 = _record(t)
    await crash_run(h, t, o1, "done", True, limits)
    raw = h.idempotency[f"{t}:c1"]
    h.idempotency[f"{t}:c1"] = {k: v for k, v in raw.items() if k not in ("id_salt",)}
    out = await _answer(h, o1)
    assert kind(out) == "payment.succeeded"
    assert used(h, t) == 5000 and holds(h, t) == {}


@pytest.mark.parametrize("limits", ["kept", "admit", "lost"])
async def test_V6b_older_entity_without_salt_redelivered_in_flight(
    harness: Harness, limits: str
) -> None:
    h = harness
    t = limited_tenant(h)
    o1 = _record(t)
    await crash_run(h, t, o1, "in_flight", True, limits)
    pay = h.tables.payments[f"{t}:p1"]
    h.tables.payments[f"{t}:p1"] = {
        **pay,
        "applied": {
            k: {kk: vv for kk, vv in v.items() if kk != "salt"} for k, v in pay["applied"].items()
        },
    }
    out = await _answer(h, o1)
    assert kind(out) == "payment.succeeded"
    assert used(h, t) == 5000 and holds(h, t) == {}
