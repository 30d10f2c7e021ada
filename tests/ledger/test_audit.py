"""Audit trail: append-only in the database, and the hash chain catches tampering."""

from __future__ import annotations

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from paystream.ledger import tenant_session, verify_audit, write_events
from paystream.ledger.models import AuditLog
from paystream.tenancy.crypto import MasterKeyring
from tests.ledger.factories import EventFactory


async def _history(
    engine: AsyncEngine, keyring: MasterKeyring, make: EventFactory, tenant: str
) -> None:
    events = [make.payment(tenant, f"pay_{i}") for i in range(3)]
    events.append(make.payment(tenant, "pay_0", 2, status="refunded"))
    await write_events(engine, events[:2], keyring=keyring)
    await write_events(engine, events[2:], keyring=keyring)


async def test_entries_record_actor_action_and_before_after(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    await _history(app_engine, keyring, make_event, "au1")
    async with tenant_session(app_engine, "au1") as s:
        rows = (await s.scalars(select(AuditLog).order_by(AuditLog.seq))).all()
    assert [r.seq for r in rows] == [1, 2, 3, 4]
    last = rows[-1]
    assert (last.actor, last.action, last.entity_type, last.entity_id) == (
        "system:ledger-sink",
        "com.paystream.payment.succeeded",
        "payment",
        "pay_0",
    )
    assert last.before is not None and last.after is not None
    assert (last.before["status"], last.after["status"]) == ("succeeded", "refunded")
    assert (last.before["version"], last.after["version"]) == (1, 2)
    assert rows[0].before is None
    assert rows[1].prev_hash == rows[0].hash


async def test_untouched_chain_verifies(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    await _history(app_engine, keyring, make_event, "au2")
    result = await verify_audit(app_engine, "au2")
    assert (result.ok, result.checked, result.problems) == (True, 4, [])
    empty = await verify_audit(app_engine, "nobody")
    assert (empty.ok, empty.checked) == (True, 0)


async def test_a_batch_committed_while_verifying_is_not_taken_for_tampering(
    app_engine: AsyncEngine,
    keyring: MasterKeyring,
    make_event: EventFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The head and the rows are read in one snapshot: a sink batch committing between
    the two reads made the head look out of step with its chain."""
    await _history(app_engine, keyring, make_event, "au3")
    stream = AsyncSession.stream

    async def append_then_stream(self: AsyncSession, *args: object, **kwargs: object) -> object:
        monkeypatch.setattr(AsyncSession, "stream", stream)
        await write_events(app_engine, [make_event.payment("au3", "pay_9")], keyring=keyring)
        return await stream(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(AsyncSession, "stream", append_then_stream)
    during = await verify_audit(app_engine, "au3")
    assert (during.ok, during.checked, during.problems) == (True, 4, [])
    after = await verify_audit(app_engine, "au3")
    assert (after.ok, after.checked) == (True, 5)


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_log SET actor = 'mallory'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
    ],
)
async def test_database_refuses_changes_to_history(
    app_engine: AsyncEngine,
    owner_engine: AsyncEngine,
    keyring: MasterKeyring,
    make_event: EventFactory,
    statement: str,
) -> None:
    await _history(app_engine, keyring, make_event, "au3")
    with pytest.raises(DBAPIError, match="permission denied"):
        async with tenant_session(app_engine, "au3") as s:
            await s.execute(text(statement))
    # even the owner (a superuser here) is stopped by the trigger
    with pytest.raises(DBAPIError, match="append-only"):
        async with owner_engine.begin() as conn:
            await conn.execute(text(statement))


async def _as_owner_without_trigger(owner: AsyncEngine, statement: str) -> None:
    async with owner.begin() as conn:
        await conn.execute(text("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only"))
        await conn.execute(text(statement))
        await conn.execute(text("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only"))


async def test_altered_row_is_detected(
    app_engine: AsyncEngine,
    owner_engine: AsyncEngine,
    keyring: MasterKeyring,
    make_event: EventFactory,
) -> None:
    await _history(app_engine, keyring, make_event, "au4")
    await _as_owner_without_trigger(
        owner_engine,
        "UPDATE audit_log SET after = jsonb_set(after, '{amount}', '1') "
        "WHERE tenant_id = 'au4' AND seq = 2",
    )
    result = await verify_audit(app_engine, "au4")
    assert not result.ok
    assert result.problems == ["seq 2: contents do not match its hash (altered)"]


async def test_altered_row_with_recomputed_hash_breaks_the_link(
    app_engine: AsyncEngine,
    owner_engine: AsyncEngine,
    keyring: MasterKeyring,
    make_event: EventFactory,
) -> None:
    await _history(app_engine, keyring, make_event, "au5")
    # a forger who rewrites one row's hash still cannot fix the next row's prev_hash
    await _as_owner_without_trigger(
        owner_engine,
        "UPDATE audit_log SET actor = 'mallory', hash = sha256(hash) "
        "WHERE tenant_id = 'au5' AND seq = 2",
    )
    problems = (await verify_audit(app_engine, "au5")).problems
    assert "seq 2: contents do not match its hash (altered)" in problems
    assert "seq 3: prev_hash does not link to the previous row" in problems


@pytest.mark.parametrize(
    ("seq", "expected"),
    [(2, "rows 2..2 are missing"), (4, "rows 4..4 are missing (head is at 4)")],
)
async def test_deleted_row_is_detected(
    app_engine: AsyncEngine,
    owner_engine: AsyncEngine,
    keyring: MasterKeyring,
    make_event: EventFactory,
    seq: int,
    expected: str,
) -> None:
    tenant = f"au6-{seq}"
    await _history(app_engine, keyring, make_event, tenant)
    await _as_owner_without_trigger(
        owner_engine, f"DELETE FROM audit_log WHERE tenant_id = '{tenant}' AND seq = {seq}"
    )
    result = await verify_audit(app_engine, tenant)
    assert not result.ok
    assert expected in result.problems
