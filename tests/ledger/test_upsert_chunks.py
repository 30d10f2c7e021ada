"""The entity upsert's RETURNING across executemany calls: every applied id comes back
once, no stale one does, whichever call it is in (review h63b: test_bulk_writes writes
only new rows)."""

from __future__ import annotations

import uuid

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from paystream.ledger.audit import verify_audit
from paystream.ledger.sink import LedgerSink
from paystream.tenancy.crypto import MasterKeyring
from tests.ledger.factories import EventFactory


async def test_applied_and_stale_rows_across_chunks(
    app_engine: AsyncEngine,
    owner_engine: AsyncEngine,
    keyring: MasterKeyring,
    make_event: EventFactory,
) -> None:
    tenant = f"t{uuid.uuid4().hex[:8]}"
    sink = LedgerSink(app_engine, keyring)
    first = await sink.write_batch(
        [make_event.payment(tenant, f"pay_{i}", 2) for i in range(2_500)]
    )
    assert first.written.entities_applied == 2_500 and not first.dead_letters
    # Odd payments stale (version 1 < 2), even ones applied (3): 3 chunks of the upsert.
    second = await sink.write_batch(
        [make_event.payment(tenant, f"pay_{i}", 1 if i % 2 else 3) for i in range(2_500)]
    )
    assert not second.dead_letters
    assert (second.written.entities_applied, second.written.entities_stale) == (1_250, 1_250)
    async with owner_engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT entity_id, count(*) FROM audit_log WHERE tenant_id = :t GROUP BY entity_id"
            ),
            {"t": tenant},
        )
        per_entity = {r[0]: r[1] for r in rows}
        versions = dict(
            (
                await conn.execute(
                    text("SELECT payment_id, version FROM payments WHERE tenant_id = :t"),
                    {"t": tenant},
                )
            ).all()
        )
    assert all(per_entity[f"pay_{i}"] == (1 if i % 2 else 2) for i in range(2_500))
    assert all(versions[f"pay_{i}"] == (2 if i % 2 else 3) for i in range(2_500))
    verified = await verify_audit(app_engine, tenant, keyring)
    assert verified.ok, verified.problems
