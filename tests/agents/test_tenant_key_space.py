"""Table keys are "<tenant>:<...>", and no tenant id holds ":" (TENANT_ID_PATTERN): a
command naming such a tenant is refused before any table is read (review finding)."""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest

from paystream.agents.pipeline import Inbound
from paystream.client import build_command
from paystream.settings import CloudEventsMode
from paystream.streams.codec import encode_event
from tests.agents.harness import Harness, data, kind, new_tenant_id, outcome_of

pytestmark = pytest.mark.asyncio
_offsets = itertools.count(1000)


def _command(tenant: str, command_type: str, body: dict[str, Any], cid: str, key: str) -> Inbound:
    event = build_command(command_type, tenant, body, command_id=cid, idempotency_key=key)
    rec = encode_event(event, tenant.encode(), CloudEventsMode.BINARY)
    return Inbound(rec.key, rec.value, dict(rec.headers), int(time.time() * 1000),
                   "paystream.commands", 0, next(_offsets))  # fmt: skip


async def test_a_tenant_id_spelling_another_tenants_key_space_reads_nothing(
    harness: Harness,
) -> None:
    """acme exports cus1 under key "export:cus1"; "acme:export" under key "cus1" read
    acme's record of that key and got its export (email, name) as its own answer."""
    h = harness
    acme = new_tenant_id()
    h.add_tenant(acme)
    customer = {"customer_id": "cus1", "email": "alice@example.com", "name": "Alice"}
    await h.processor.process(_command(acme, "customer.create", customer, "c1", "order:1"))
    export = {"customer_id": "cus1"}
    mine = await h.processor.process(_command(acme, "customer.export", export, "c2", "export:cus1"))
    assert kind(outcome_of(h.settings, mine)) == "customer.exported"
    before = (dict(h.idempotency), {k: dict(v) for k, v in h.tables.customers.items()})
    other = await h.processor.process(
        _command(f"{acme}:export", "customer.export", export, "a1", "cus1")
    )
    out = outcome_of(h.settings, other)
    assert out is not None and kind(out) == "command.rejected"
    assert data(out)["reason"] == "unknown_tenant"
    assert "alice" not in str(data(out)).lower()
    assert (dict(h.idempotency), {k: dict(v) for k, v in h.tables.customers.items()}) == before
