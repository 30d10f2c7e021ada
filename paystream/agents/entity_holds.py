"""Entities a parked command still needs, held against the retention sweep (review h68p).

A command let through to its provider and then parked (its answer lost, the provider
down) may have acted there: a refund made. Its re-drive (`paystream dlq replay`) is
answered from the provider's key, but only if the entities it reads are still in the
tables: a payment that reached its retention age while the refund waited was swept, and
every re-drive was parked ``not_found``, the refund never recorded. So the park marks
them (tables/retention.HOLD_FIELD) until the provider's key window, plus a margin, has
passed since the command was first let through: past it a re-drive is parked stale for
a person anyway (dlq.stale_after_ms). Its idempotency record names what it holds, and
its finish (any answer written over that record) takes the marks off again.

The mark is bookkeeping: written to the entity's table (so its changelog keeps it over a
crash) without an outcome, a version or an ``applied`` entry, so the entity's last
change, what the ledger and the views see, stays as it was. It is keyed by the command's
idempotency key (a retry under it finishes the same request). A command's write of the
entity drops every mark (records are written from their models, which do not know it):
that write is a change, after which the entity stays a retention (30 days at least),
far past any mark.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any

from paystream.agents.handlers import Tables, entity_key
from paystream.dlq import PROVIDER_KEY_WINDOW_MS
from paystream.tables.retention import HOLD_FIELD, settled

__all__ = [
    "HOLDS_FIELD",
    "HOLD_MARGIN_SECONDS",
    "hold",
    "hold_until",
    "needed",
    "release",
    "rewrite",
]

# A day past the provider's key window: a re-drive sent near the window's end, itself
# retried and parked again, still finds its entities.
HOLD_MARGIN_SECONDS = 86_400.0

# The idempotency record's field naming what its parked command holds ("type:id").
HOLDS_FIELD = "holds"

# Command data fields naming an entity the retention sweep may remove, and its type.
# (Not a tax rate or a connected account: the sweep never removes those.)
_NAMED = {
    "customer_id": "customer",
    "payment_method_id": "payment_method",
    "payment_id": "payment",
    "refund_id": "refund",
    "dispute_id": "dispute",
    "subscription_id": "subscription",
    "payout_id": "payout",
    "invoice_id": "invoice",
    "transfer_id": "transfer",
    "tax_calculation_id": "tax_calculation",
}

# What a held entity's own record names that the command reads too: a payment method's
# customer (a payment through it, the sweep judges it with its owner), an invoice's
# saved payment method (invoice.pay charges it, detached or not once let through) and
# its subscription (its owner).
_FOLLOWED = {
    "payment_method": ("customer_id",),
    "invoice": ("payment_method_id", "subscription_id"),
}


def hold_until(first_attempt_ms: int) -> float:
    """Until when a command first let through at ``first_attempt_ms`` holds its entities."""
    return first_attempt_ms / 1000 + PROVIDER_KEY_WINDOW_MS / 1000 + HOLD_MARGIN_SECONDS


def needed(tables: Tables, tenant_id: str, data: Any, chosen: str | None) -> list[str]:
    """The entities (``"type:id"``) the command of ``data`` reads that the sweep may
    remove, as the tables have them now: those its fields name (but ``chosen``, the id
    a create makes) and what they name in turn (_FOLLOWED). Only those there now: a
    command about an entity already gone is answered not_found anyway."""
    found: list[str] = []
    for field, kind in _named(data, chosen):
        _add(tables, tenant_id, kind, field, found)
    return found


def _named(data: Any, chosen: str | None) -> Iterator[tuple[str, str]]:
    for field, kind in _NAMED.items():
        if field == chosen:
            continue
        value = getattr(data, field, None)
        if isinstance(value, str) and value:
            yield value, kind


def _add(tables: Tables, tenant_id: str, kind: str, entity_id: str, found: list[str]) -> None:
    name = f"{kind}:{entity_id}"
    if name in found:
        return
    record = tables.by_type(kind).get(entity_key(tenant_id, entity_id))
    if not isinstance(record, dict):
        return
    found.append(name)
    for field in _FOLLOWED.get(kind, ()):
        owned = record.get(field)
        if isinstance(owned, str) and owned:
            _add(tables, tenant_id, _NAMED[field], owned, found)


def hold(
    tables: Tables, tenant_id: str, names: list[str], mark: str, until: float, now: float
) -> int:
    """Mark each entity of ``names`` as held by ``mark`` until ``until`` (a later mark
    kept); how many records were written. A mark already there is not written again (a
    redelivered park writes nothing), nor is one on an entity that could never expire
    (see _may_settle: a write is a changelog record). Marks of others ended by ``now``
    are dropped with a write."""
    written = 0
    for name in names:
        table, key, record = _read(tables, tenant_id, name)
        if record is None or not _may_settle(tables, tenant_id, record):
            continue
        marks = record.get(HOLD_FIELD)
        marks = dict(marks) if isinstance(marks, dict) else {}
        kept = marks.get(mark)
        if isinstance(kept, int | float) and kept >= until:
            continue
        marks = {m: t for m, t in marks.items() if not _ended(t, now)}
        marks[mark] = until
        table[key] = {**record, HOLD_FIELD: marks}
        written += 1
    return written


def _ended(until: Any, now: float) -> bool:
    return isinstance(until, int | float) and not isinstance(until, bool) and until <= now


def _may_settle(tables: Tables, tenant_id: str, record: dict[str, Any]) -> bool:
    """Could the sweep remove it before the mark ends? Only one settled now (see
    retention.settled), a paid or void invoice (judged with its subscription), or a
    payment method whose customer is deleted or erased (judged with them): one that
    settles later (a customer deleted or erased, a card detached, a subscription
    canceled, an invoice paid) does so by a write, its last change then, and stays a
    retention (30 days at least) past the mark. (A live customer's card marked, every
    payment through it parked in an outage wrote it again, one mark more each; review
    h82rc.)"""
    if settled(record):
        return True
    kind = record.get("entity_type")
    if kind == "invoice":
        return record.get("status") in ("paid", "void")
    if kind == "payment_method":
        owner_id = str(record.get("customer_id") or "")
        owner = tables.by_type("customer").get(entity_key(tenant_id, owner_id))
        return isinstance(owner, dict) and bool(owner.get("deleted") or owner.get("erased"))
    return False


def release(tables: Tables, tenant_id: str, names: Any, mark: str) -> None:
    """Take ``mark`` off the entities ``names`` (a finished command holds nothing)."""
    if not isinstance(names, list):
        return
    for name in names:
        if not isinstance(name, str):
            continue
        table, key, record = _read(tables, tenant_id, name)
        marks = None if record is None else record.get(HOLD_FIELD)
        if record is None or not isinstance(marks, dict) or mark not in marks:
            continue
        rest = {m: t for m, t in marks.items() if m != mark}
        kept = {k: v for k, v in record.items() if k != HOLD_FIELD}
        table[key] = {**kept, HOLD_FIELD: rest} if rest else kept


def rewrite(tables: Tables, tenant_id: str, names: Any, mark: str) -> None:
    """Write again, as they are, the entities of ``names`` that carry ``mark`` (a
    redelivered park: see CommandProcessor._rewrite_holds)."""
    if not isinstance(names, list):
        return
    for name in names:
        if not isinstance(name, str):
            continue
        table, key, record = _read(tables, tenant_id, name)
        marks = None if record is None else record.get(HOLD_FIELD)
        if isinstance(marks, dict) and mark in marks:
            table[key] = record


def _read(
    tables: Tables, tenant_id: str, name: str
) -> tuple[MutableMapping[str, Any], str, dict[str, Any] | None]:
    kind, _, entity_id = name.partition(":")
    try:
        table = tables.by_type(kind)
    except (KeyError, AttributeError):
        return {}, "", None
    key = entity_key(tenant_id, entity_id)
    record = table.get(key)
    return table, key, record if isinstance(record, dict) else None
