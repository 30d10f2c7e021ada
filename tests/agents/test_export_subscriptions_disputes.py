"""`customer.export` (right of access, GDPR Art. 15/20) lists a customer's subscriptions,
their invoices (renewals' included) and their payments' disputes, under the same rules as
its other rows: the tenant's and the customer's only, as published (closed row schemas),
sorted by id, within the byte budget (`truncated` gives the full counts), and found
through the owner index (tables/owners.py) as a whole-table read finds them. Before this,
the export listed payment methods, payments and refunds alone (h73n's report)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from paystream.agents import handlers
from paystream.tables.owners import OWNER_FIELDS, OwnerIndex
from tests.agents.harness import Harness, data, kind
from tests.agents.test_subscriptions import DAY, _gateway

pytestmark = pytest.mark.asyncio
WEEKLY = {"amount": 700, "currency": "EUR", "interval": "week"}


async def _customer(h: Harness, t: str, cid: str, token: str = "pm_card_visa") -> str:
    made = await h.send("customer.create", t, {"customer_id": cid, "email": f"{cid}@example.com"})
    assert kind(made) == "customer.created", data(made)
    body = {"customer_id": cid, "token": token, "payment_method_id": f"{cid}-card"}
    saved = await h.send("payment_method.attach", t, body)
    assert kind(saved) == "payment_method.attached", data(saved)
    return f"{cid}-card"


async def _subscribe(h: Harness, t: str, cid: str, sid: str) -> dict[str, Any]:
    body = {"subscription_id": sid, "customer_id": cid, "payment_method_id": f"{cid}-card"}
    out = await h.send("subscription.create", t, {**body, **WEEKLY})
    assert kind(out) == "subscription.created", data(out)
    return data(out)


async def _renewed(h: Harness, t: str, sid: str) -> list[str]:
    """Two weeks on: the refresh records both renewals' invoices."""
    await _gateway(h, t).advance_clock(2 * 7 * DAY + 60)
    out = await h.send("subscription.refresh", t, {"subscription_id": sid})
    assert kind(out) == "subscription.updated", data(out)
    return [r["entity_id"] for r in data(out)["related"] if r["entity_type"] == "invoice"]


async def _disputed_payment(h: Harness, t: str, cid: str, pid: str) -> tuple[str, str]:
    """A payment of the customer's that its bank disputes: (payment id, dispute id)."""
    body = {"payment_id": pid, "amount": 900, "currency": "USD", "customer_id": cid,
            "payment_method_id": f"{cid}-dispute-card"}  # fmt: skip
    attach = {"customer_id": cid, "token": "pm_card_createDispute",
              "payment_method_id": f"{cid}-dispute-card"}  # fmt: skip
    assert kind(await h.send("payment_method.attach", t, attach)) == "payment_method.attached"
    paid = await h.send("payment.create", t, body)
    assert kind(paid) == "payment.succeeded", data(paid)
    dispute_id = data(paid)["object"]["dispute_id"]
    assert dispute_id
    return pid, str(dispute_id)


async def _export(h: Harness, t: str, cid: str) -> dict[str, Any]:
    out = await h.send("customer.export", t, {"customer_id": cid})
    assert kind(out) == "customer.exported", data(out)
    export: dict[str, Any] = data(out)["export"]
    return export


def _ids(export: dict[str, Any], name: str) -> list[str]:
    return [row["id"] for row in export.get(name, [])]


async def _two_customers_two_tenants(h: Harness) -> dict[str, Any]:
    """Tenant t: Ada (a subscription renewed twice, a disputed payment) and Bob (the
    same, his own); tenant u: an "ada" of its own with the same ids throughout."""
    t, u = h.add_tenant(), h.add_tenant()
    made: dict[str, Any] = {"t": t, "u": u}
    for tenant in (t, u):
        for cid in ("ada", "bob"):
            await _customer(h, tenant, cid)
            first = await _subscribe(h, tenant, cid, f"{cid}-pro")
            first_invoice = [r["entity_id"] for r in first["related"]]
            renewals = await _renewed(h, tenant, f"{cid}-pro")
            pay, dispute = await _disputed_payment(h, tenant, cid, f"{cid}-pay")
            made[f"{tenant}:{cid}"] = {
                "invoices": sorted(first_invoice + renewals),
                "payment": pay,
                "dispute": dispute,
            }
    return made


async def test_an_export_lists_the_customers_subscriptions_invoices_and_disputes(
    harness: Harness,
) -> None:
    made = await _two_customers_two_tenants(harness)
    t, u = made["t"], made["u"]
    ada = made[f"{t}:ada"]
    assert len(ada["invoices"]) == 3  # the first invoice and two renewals
    export = await _export(harness, t, "ada")
    assert _ids(export, "subscriptions") == ["ada-pro"]
    assert _ids(export, "invoices") == ada["invoices"]
    assert _ids(export, "disputes") == [ada["dispute"]]
    assert [row["payment_id"] for row in export["disputes"]] == [ada["payment"]]
    # Bob's, of the same tenant, are not Ada's; tenant u's "ada" (same ids) never.
    bob, their_ada = made[f"{t}:bob"], made[f"{u}:ada"]
    assert not set(_ids(export, "invoices")) & set(bob["invoices"] + their_ada["invoices"])
    assert bob["dispute"] not in _ids(export, "disputes")
    assert their_ada["dispute"] not in _ids(export, "disputes")
    assert all(
        row["tenant_id"] == t and row.get("customer_id", "ada") == "ada"
        for name in ("subscriptions", "invoices", "disputes")
        for row in export[name]
    )
    # As published: no bookkeeping, no entity view tag.
    assert all(
        "applied" not in row and "entity_type" not in row
        for name in ("subscriptions", "invoices", "disputes")
        for row in export[name]
    )
    # Tenant u's own export holds its ada's, not tenant t's.
    theirs = await _export(harness, u, "ada")
    assert _ids(theirs, "invoices") == their_ada["invoices"]
    assert _ids(theirs, "disputes") == [their_ada["dispute"]]
    assert all(
        row["tenant_id"] == u
        for name in ("subscriptions", "invoices", "disputes")
        for row in theirs[name]
    )


@pytest.mark.parametrize("scans_before_build", [0, 100])
async def test_the_owner_index_serves_them_as_a_whole_table_read_finds_them(
    harness: Harness, scans_before_build: int
) -> None:
    """Built (0) or scanning (100): the same rows; records written after the index was
    built (a new subscription, its invoices, a later dispute) are in the next export."""
    harness.tables.owners = OwnerIndex(scans_before_build=scans_before_build)
    assert {"subscription", "invoice", "dispute"} <= set(OWNER_FIELDS)
    t = harness.add_tenant()
    await _customer(harness, t, "ada")
    first = await _export(harness, t, "ada")  # (built here, at 0)
    assert (first["subscriptions"], first["invoices"], first["disputes"]) == ([], [], [])
    made = await _subscribe(harness, t, "ada", "ada-pro")
    invoices = [r["entity_id"] for r in made["related"]] + await _renewed(harness, t, "ada-pro")
    _, dispute = await _disputed_payment(harness, t, "ada", "ada-pay")
    again = await _export(harness, t, "ada")
    assert _ids(again, "subscriptions") == ["ada-pro"]
    assert _ids(again, "invoices") == sorted(invoices)
    assert _ids(again, "disputes") == [dispute]


async def test_the_new_lists_share_the_byte_budget_and_say_what_they_left_out(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = harness.add_tenant()
    await _customer(harness, t, "ada")
    await _subscribe(harness, t, "ada", "ada-pro")
    await _renewed(harness, t, "ada-pro")
    everything = await _export(harness, t, "ada")
    assert "truncated" not in everything
    before_invoices = sum(
        len(orjson.dumps(row))
        for name in ("payment_methods", "payments", "refunds", "disputes", "subscriptions")
        for row in everything[name]
    )
    first_invoice = len(orjson.dumps(everything["invoices"][0]))
    monkeypatch.setattr(handlers, "EXPORT_MAX_BYTES", before_invoices + first_invoice)
    cut = await _export(harness, t, "ada")
    assert _ids(cut, "subscriptions") == ["ada-pro"]
    assert _ids(cut, "invoices") == _ids(everything, "invoices")[:1]
    assert cut["truncated"] == {"invoices": 3}


async def test_an_erased_customers_subscriptions_are_canceled_and_still_exported(
    harness: Harness,
) -> None:
    """Erasure deletes the customer at the provider, which cancels their subscriptions
    there (Stripe's rule, the simulator's): no renewal is billed after it, a refresh
    reads it canceled; the records stay (ids, amounts, periods: as payments do) and a
    later export lists them."""
    t = harness.add_tenant()
    await _customer(harness, t, "ada")
    await _subscribe(harness, t, "ada", "ada-pro")
    erased = await harness.send("customer.erase", t, {"customer_id": "ada"})
    assert kind(erased) == "customer.erased", data(erased)
    assert data(erased)["provider_deletion"] == "deleted"
    charges = [e for e in await _gateway(harness, t).effects() if e.kind == "charge"]
    await _gateway(harness, t).advance_clock(3 * 7 * DAY + 60)
    read = await harness.send("subscription.refresh", t, {"subscription_id": "ada-pro"})
    assert kind(read) == "subscription.canceled", data(read)
    after = [e for e in await _gateway(harness, t).effects() if e.kind == "charge"]
    assert after == charges, "a renewal billed to an erased customer"
    export = await _export(harness, t, "ada")
    assert export["customer"]["erased"] is True and export["customer"]["email"] is None
    assert [row["status"] for row in export["subscriptions"]] == ["canceled"]
    assert len(export["invoices"]) == 1
