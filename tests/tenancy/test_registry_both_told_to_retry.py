"""Two operators change one tenant at once (both read it, both write, each then looks at
what landed; review h67u). The later writer puts the earlier one's record back on top, as
designed, but the earlier writer, seeing a newer record than its own, said "their change
was kept, not this one: run it again" though its change is the one that stands."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiokafka import TopicPartition

from paystream.settings import load_settings
from paystream.tenancy import registry as reg
from paystream.tenancy.ingress_keys import new_key
from paystream.tenancy.mirror import RegistryMirror
from paystream.tenancy.models import Tenant

pytestmark = pytest.mark.asyncio

TP = TopicPartition("paystream.tenants", 0)


_BOTH_TOLD = pytest.mark.xfail(
    strict=True,
    reason="known gap: both operators are told to run it again; saying 'yours stands' when "
    "the newest record is ours again (tried, review h67v) silently undid a suspension a third "
    "operator was told had landed",
)


@_BOTH_TOLD
async def test_the_writer_whose_change_stands_is_not_told_it_was_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = load_settings(kafka_broker_url="kafka://127.0.0.1:9")
    base = Tenant(tenant_id="acme")
    log: list[tuple[bytes, bytes | None]] = [
        (b'"acme"', json.dumps(reg.tenant_record(base)).encode())
    ]
    both_read, both_wrote = asyncio.Barrier(2), asyncio.Barrier(2)
    first_write: set[int] = set()

    async def read(settings: Any) -> tuple[RegistryMirror, dict[TopicPartition, int]]:
        mirror = RegistryMirror(settings)
        for key, value in log:
            mirror.apply(key, value)
        ends = {TP: len(log)}
        await both_read.wait()
        return mirror, ends

    async def put(settings: Any, records: list[tuple[str, bytes | None]]) -> dict[str, Any]:
        written = {}
        for tid, value in records:
            log.append((json.dumps(tid).encode(), value))
            written[tid] = (0, len(log) - 1)
        task = id(asyncio.current_task())
        if task not in first_write:  # (a restore is no first write)
            first_write.add(task)
            await both_wrote.wait()
        return written

    async def since(settings: Any, ends: dict[TopicPartition, int]) -> list[Any]:
        start = ends.get(TP, 0)
        return [(TP, n, k, v) for n, (k, v) in enumerate(log) if n >= start]

    monkeypatch.setattr(reg, "_read_registry_with_ends", read)
    monkeypatch.setattr(reg, "_put_records", put)
    monkeypatch.setattr(reg, "_records_since", since)

    key_id, _, kept = new_key("checkout")
    with_key = base.model_copy(update={"ingress_keys": {key_id: kept}})
    renamed = base.model_copy(update={"name": "Acme Ltd"})
    results = await asyncio.gather(
        reg.put_tenant_unless_changed(settings, base, with_key),  # operator A: api-key create
        reg.put_tenant_unless_changed(settings, base, renamed),  # operator B: a rename
        return_exceptions=True,
    )
    standing = Tenant.model_validate_json(log[-1][1] or b"")
    assert standing in (with_key, renamed)  # one operator's change is what stands
    stood = 0 if standing == with_key else 1
    # ... and that operator must not be told it was dropped ("run it again": for
    # api-key create, a second key while the first, never shown, stays registered)
    assert not isinstance(results[stood], reg.RegistryChanged), results
