"""registry._restore_overwritten when a suspension under another spelling of the key and
another operator's record of the tenant both land in a write's window: the record that
stands (theirs before ours: theirs; theirs after ours: theirs, as it is) is the one kept
suspended (review h64k: ours was put back on top of theirs, suspended, and a removal
after ours was undone)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiokafka.structs import TopicPartition

from paystream.tenancy import registry as registry_module
from paystream.tenancy.mirror import RegistryState
from paystream.tenancy.models import Tenant, TenantStatus
from paystream.tenancy.registry import tenant_record

KEY = b'"acme"'
FOREIGN = b' "acme"'  # a tool's kill switch, another spelling of the key


def _value(tenant: Tenant) -> bytes:
    return json.dumps(tenant_record(tenant), sort_keys=True).encode()


@pytest.mark.asyncio
async def test_a_foreign_suspension_in_the_window_does_not_put_ours_over_another_operators_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = Tenant(tenant_id="acme", name="Acme")
    theirs = base.model_copy(update={"gateway_options": {"rotated": "by operator Y"}})
    ours = base.model_copy(update={"name": "Acme Inc"})
    suspension = _value(base.model_copy(update={"status": TenantStatus.SUSPENDED}))
    # Operator Y wrote (offset 9) and was told it stood; then a tool's suspension landed
    # under ' "acme"'; then ours (offset 10). Both since our read.
    since = {TopicPartition("tenants", 0): 5, TopicPartition("tenants", 1): 0}
    landed = [
        (TopicPartition("tenants", 0), 9, KEY, _value(theirs)),
        (TopicPartition("tenants", 1), 0, FOREIGN, suspension),
    ]
    put: list[tuple[str, bytes | None]] = []

    async def records_since(settings: Any, since: Any) -> Any:
        return landed

    async def put_records(settings: Any, records: Any) -> Any:
        put.extend(records)
        return {tid: (0, 11 + i) for i, (tid, _) in enumerate(records)}

    monkeypatch.setattr(registry_module, "_records_since", records_since)
    monkeypatch.setattr(registry_module, "_put_records", put_records)
    changed = await registry_module._restore_overwritten(
        None,
        since,
        {"acme": (0, 10)},
        {"acme": _value(ours)},  # type: ignore[arg-type]
    )
    assert changed == ["acme"]  # we are told: "their change was kept, not this one"

    # What every worker's mirror makes of the log, in order.
    state = RegistryState()
    for key, value in [
        (KEY, _value(base)),
        (KEY, _value(theirs)),
        (FOREIGN, suspension),
        (KEY, _value(ours)),
        *[(json.dumps(tid).encode(), value) for tid, value in put],
    ]:
        state.apply(key, value)
    acme = state.tenants["acme"]
    assert acme.status is TenantStatus.SUSPENDED  # the kill switch stands (3197c0a)
    # Operator Y's acknowledged change must stand too, as it did before 3197c0a (their
    # record was put back on top); it is replaced by ours.
    assert acme.gateway_options == {"rotated": "by operator Y"}, acme
    assert acme.name == "Acme", acme


@pytest.mark.asyncio
async def test_a_foreign_suspension_in_the_window_does_not_bring_back_a_removed_tenant(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same when Y's record is a tombstone landed after ours: the tenant is gone for
    every worker, and our re-put brought it back (suspended)."""
    base = Tenant(tenant_id="acme", name="Acme")
    ours = base.model_copy(update={"name": "Acme Inc"})
    suspension = _value(base.model_copy(update={"status": TenantStatus.SUSPENDED}))
    since = {TopicPartition("tenants", 0): 5, TopicPartition("tenants", 1): 0}
    landed = [
        (TopicPartition("tenants", 1), 0, FOREIGN, suspension),
        (TopicPartition("tenants", 0), 11, KEY, None),  # after ours (offset 10)
    ]
    put: list[tuple[str, bytes | None]] = []

    async def records_since(settings: Any, since: Any) -> Any:
        return landed

    async def put_records(settings: Any, records: Any) -> Any:
        put.extend(records)
        return {tid: (0, 12 + i) for i, (tid, _) in enumerate(records)}

    monkeypatch.setattr(registry_module, "_records_since", records_since)
    monkeypatch.setattr(registry_module, "_put_records", put_records)
    await registry_module._restore_overwritten(
        None,
        since,
        {"acme": (0, 10)},
        {"acme": _value(ours)},  # type: ignore[arg-type]
    )
    # A record of theirs landed after ours: nothing of ours goes on top of it.
    assert put == [], put
