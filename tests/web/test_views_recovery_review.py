"""The operator dashboard's views (/v1/stats, entity lookups) as the on-call operator reads
them, with no broker: the views' own handlers, unwrapped from their guards (review h68d). A
lookup mid-recovery answered a half-replayed row; the stats did not say they counted tables
still recovering; past 1,000 tenants, registered tenants were listed as "unknown"."""

from __future__ import annotations

import inspect
import json
from typing import Any

import pytest
from aiohttp import web

from paystream.tenancy.models import Tenant
from paystream.web import views as v
from paystream.web.tenant_rows import TENANTS_SHOWN_MAX


class StandInView:
    def json(self, body: Any, *, status: int = 200, headers: Any = None) -> web.Response:
        return web.json_response(body, status=status, headers=headers)


def _payment(status: str, captured: int = 0, refunded: int = 0) -> dict[str, Any]:
    return {
        "entity_type": "payment",
        "tenant_id": "acme",
        "id": "pay_1",
        "version": 1,
        "provider": "simulator",
        "created_by": "cmd_1",
        "applied": {},
        "status": status,
        "amount": 2500,
        "currency": "USD",
        "capture_method": "manual",
        "amount_captured": captured,
        "amount_refunded": refunded,
        "provider_payment_id": "sim_pi_1",
    }


async def test_a_lookup_while_tables_recover_is_not_answered_from_a_half_replayed_row(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Mid-recovery the table holds what the changelog replayed so far: the payment's
    first record (authorized), not yet its capture and refund. A miss is answered 503
    (missing_entity: "not found would be a guess"), and the webhooks refuse to read the
    tables at all then (webhooks._row); a hit was answered 200 with the stale row, so
    the operator read "authorized, nothing captured" for a payment captured and refunded."""
    get = inspect.unwrap(v.EntityView.get)
    half_replayed = {"acme:pay_1": _payment("authorized")}
    monkeypatch.setitem(v._ENTITY_TABLES, "payments", half_replayed)
    monkeypatch.setattr(v.app, "rebalancing", True)  # (Faust: until recovery ends)
    monkeypatch.setattr(v.app, "in_recovery", True, raising=False)
    answer = await get(StandInView(), None, tenant="acme", kind="payments", entity_id="pay_1")
    assert (answer.status, answer.headers.get("Retry-After")) == (503, "1"), answer.text


async def _stats(monkeypatch: pytest.MonkeyPatch, **patch: Any) -> dict[str, Any]:
    get = inspect.unwrap(v.StatsView.get)
    monkeypatch.setattr(v, "_assigned", lambda: [0])
    monkeypatch.setattr(v, "_summaries", v.SummaryCache())
    monkeypatch.setattr(v, "_tenant_rows", type(v._tenant_rows)())
    for name, value in patch.items():
        monkeypatch.setattr(v.t, name, value)
    answer = await get(StandInView(), None)
    assert answer.status == 200
    return json.loads(answer.text)


async def test_stats_say_when_the_figures_are_those_of_tables_still_recovering(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While tables recover, the summaries (payments by status, captured and refunded
    volumes) are those of the records replayed so far, and the page says "live": the
    on-call operator reads a tenant's volume collapse. The stats must say they are
    partial (as /readyz says "table recovery") so that the page can."""
    monkeypatch.setattr(v.app, "rebalancing", True)
    monkeypatch.setattr(v.app, "in_recovery", True, raising=False)
    stats = await _stats(monkeypatch, payments={"acme:pay_1": _payment("authorized")})
    settling = {k: val for k, val in stats["worker"].items() if "recover" in k or "settl" in k}
    assert settling and any(settling.values()), stats["worker"]


async def test_every_registered_tenant_the_page_lists_has_its_registry_row(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The page lists the union of ``tenants`` and ``activity.by_tenant``. ``tenants``
    holds at most TENANTS_SHOWN_MAX rows, ``by_tenant`` every registered tenant this
    worker ran a command for since it started (no cap): past a thousand, the page lists
    registered, active tenants with status "unknown" and no gateway or limits (what it
    shows for a made-up tenant id), under "N more registered tenants not listed"."""
    n = TENANTS_SHOWN_MAX + 5
    tenants = {f"t{i:05d}": Tenant(tenant_id=f"t{i:05d}") for i in range(n)}
    monkeypatch.setattr(v.registry, "tenants", tenants)
    monkeypatch.setattr(type(v.registry), "changes", property(lambda self: 1))
    activity = v.runner.activity
    monkeypatch.setattr(activity, "by_tenant", type(activity.by_tenant)(dict.fromkeys(tenants, 1)))
    stats = await _stats(monkeypatch, payments={})
    listed = set(stats["tenants"]) | set(stats["activity"]["by_tenant"])
    rows = stats["tenants"]
    without_row = sorted(name for name in listed if name in tenants and name not in rows)
    assert without_row == [], f"{len(without_row)} registered tenants shown as 'unknown'"
