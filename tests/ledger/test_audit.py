"""Audit trail: append-only in the database, and the hash chain catches tampering."""

from __future__ import annotations

import hashlib
import json

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from paystream.ledger import tenant_session, verify_audit, write_events
from paystream.ledger.audit import audit_key, chain_hash, record_retirements
from paystream.ledger.models import AuditLog
from paystream.tenancy.crypto import MasterKey, MasterKeyring
from tests.ledger.factories import EventFactory, wipe_audit_chain


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
    result = await verify_audit(app_engine, "au2", keyring)
    assert (result.ok, result.checked, result.problems) == (True, 4, [])
    empty = await verify_audit(app_engine, "nobody", keyring)
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
    during = await verify_audit(app_engine, "au3", keyring)
    assert (during.ok, during.checked, during.problems) == (True, 4, [])
    after = await verify_audit(app_engine, "au3", keyring)
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
    result = await verify_audit(app_engine, "au4", keyring)
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
    problems = (await verify_audit(app_engine, "au5", keyring)).problems
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
    result = await verify_audit(app_engine, tenant, keyring)
    assert not result.ok
    assert expected in result.problems


async def _rewrite_chain_from(
    owner: AsyncEngine,
    tenant: str,
    seq: int,
    key: bytes | None,
    *,
    drop_key_id: bool,
    edit: bool = True,
) -> None:
    """A forger with the owner's rights: change row ``seq``'s amount (unless not
    ``edit``) and recompute every hash from it on (with ``key``: the wrong one, or none
    at all), head included."""
    async with owner.begin() as conn:
        await conn.execute(text("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only"))
        await conn.execute(text("ALTER TABLE audit_heads DISABLE TRIGGER audit_heads_forward_only"))
        rows = (
            (
                await conn.execute(
                    text("SELECT * FROM audit_log WHERE tenant_id = :t ORDER BY seq"), {"t": tenant}
                )
            )
            .mappings()
            .all()
        )
        prev = bytes(rows[seq - 2]["hash"]) if seq > 1 else bytes(32)
        for r in rows[seq - 1 :]:
            row = dict(r)
            if edit and row["seq"] == seq:
                row["after"] = {**row["after"], "amount": 1}
            new_hash = chain_hash(prev, tenant, row["seq"], row, key)
            await conn.execute(
                text(
                    "UPDATE audit_log SET after = CAST(:after AS jsonb), prev_hash = :p, "
                    "hash = :h, key_id = CASE WHEN :drop THEN NULL ELSE key_id END "
                    "WHERE tenant_id = :t AND seq = :s"
                ),
                {
                    "after": json.dumps(row["after"]),
                    "p": prev,
                    "h": new_hash,
                    "drop": drop_key_id,
                    "t": tenant,
                    "s": row["seq"],
                },
            )
            prev = new_hash
        await conn.execute(
            text("UPDATE audit_heads SET hash = :h WHERE tenant_id = :t"), {"h": prev, "t": tenant}
        )
        await conn.execute(text("ALTER TABLE audit_heads ENABLE TRIGGER audit_heads_forward_only"))
        await conn.execute(text("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only"))


@pytest.mark.parametrize("forgery", ["plain hash", "plain hash, key id dropped", "another key"])
async def test_a_row_rewritten_with_the_chain_recomputed_is_detected(
    app_engine: AsyncEngine,
    owner_engine: AsyncEngine,
    keyring: MasterKeyring,
    make_event: EventFactory,
    forgery: str,
) -> None:
    """The database never sees the chain's key: whoever can write the tables can
    recompute a plain hash chain after an edit, not a keyed one."""
    tenant = f"au7-{len(forgery)}"
    await _history(app_engine, keyring, make_event, tenant)
    assert (await verify_audit(app_engine, tenant, keyring)).ok
    key = audit_key(MasterKey.generate()) if forgery == "another key" else None
    await _rewrite_chain_from(owner_engine, tenant, 2, key, drop_key_id="dropped" in forgery)
    result = await verify_audit(app_engine, tenant, keyring)
    assert not result.ok
    if "dropped" in forgery:  # unkeyed rows the migration did not record: never accepted
        assert result.problems == [
            "3 row(s) not keyed (seq 2, 3, 4), outside what the version before keyed chains "
            "wrote (as migration 0004 recorded): written by someone without the key"
        ]
        # ... nor vouched for by whatever the ledger writes after them.
        await write_events(app_engine, [make_event.payment(tenant, "pay_n")], keyring=keyring)
        assert (await verify_audit(app_engine, tenant, keyring)).problems == result.problems
    else:
        assert result.problems == [
            f"seq {n}: contents do not match its hash (altered)" for n in (2, 3, 4)
        ]


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_heads SET seq = 1 WHERE tenant_id = 'au8'",
        "UPDATE audit_heads SET hash = sha256(hash) WHERE tenant_id = 'au8'",
        "DELETE FROM audit_heads WHERE tenant_id = 'au8'",
        "TRUNCATE audit_heads CASCADE",
    ],
)
async def test_the_head_only_moves_forward(
    app_engine: AsyncEngine,
    owner_engine: AsyncEngine,
    keyring: MasterKeyring,
    make_event: EventFactory,
    statement: str,
) -> None:
    """Cutting the newest entries and moving the head back to the last one kept passed
    verification: now the owner too must disable a trigger to do it."""
    await _history(app_engine, keyring, make_event, "au8")
    with pytest.raises(DBAPIError, match="audit_heads only move forward"):
        async with owner_engine.begin() as conn:
            await conn.execute(text(statement))
    assert (await verify_audit(app_engine, "au8", keyring)).ok


async def test_rows_under_a_retired_master_key_verify_while_it_is_in_the_keyring(
    app_engine: AsyncEngine, owner_engine: AsyncEngine, make_event: EventFactory
) -> None:
    """... up to where `keys rotate` recorded its retirement for the tenant."""
    old = MasterKeyring(MasterKey.generate())
    await write_events(app_engine, [make_event.payment("au9", "pay_1")], keyring=old)
    rotated = old.rotated_to(MasterKey.generate())
    await write_events(app_engine, [make_event.payment("au9", "pay_2")], keyring=rotated)
    unrecorded = (await verify_audit(app_engine, "au9", rotated)).problems
    assert unrecorded == [
        f"1 row(s) under retired master key {old.current.key_id!r} (seq 1) and `paystream "
        "keys rotate` has recorded none under it for this tenant: a worker still on that key "
        "after the rotation, or whoever holds it"
    ]
    assert await _retire(owner_engine, ["au9"], rotated) == 1
    assert (await verify_audit(app_engine, "au9", rotated)).ok
    without_old = MasterKeyring(rotated.current)
    problems = (await verify_audit(app_engine, "au9", without_old)).problems
    assert problems == [
        f"seq 1: keyed under master key {old.current.key_id!r}, which is not in the keyring "
        "(PAYSTREAM_RETIRED_MASTER_KEYS): not verifiable"
    ]


async def test_the_app_role_cannot_delete_money_rows(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    """No code path deletes them (the writer upserts, erasure updates): a compromised
    worker or an injected statement must not be able to, unaudited."""
    await write_events(app_engine, [make_event.payment("au10", "pay_1")], keyring=keyring)
    for table in ("payments", "refunds", "disputes", "customers", "payment_methods"):
        with pytest.raises(DBAPIError, match="permission denied"):
            async with tenant_session(app_engine, "au10") as s:
                await s.execute(text(f"DELETE FROM {table}"))


async def test_a_chain_deleted_whole_is_detected(
    app_engine: AsyncEngine,
    owner_engine: AsyncEngine,
    keyring: MasterKeyring,
    make_event: EventFactory,
) -> None:
    """Log and head both gone read as a tenant with no entries; its stored events say
    otherwise."""
    await _history(app_engine, keyring, make_event, "au11")
    async with owner_engine.begin() as conn:
        await wipe_audit_chain(conn, "au11")
    result = await verify_audit(app_engine, "au11", keyring)
    assert result.problems == ["events are recorded for this tenant but its audit chain is empty"]


async def test_a_leaked_retired_key_cannot_extend_a_chain_past_its_retirement(
    app_engine: AsyncEngine, owner_engine: AsyncEngine, make_event: EventFactory
) -> None:
    """A key rotated out because it leaked: its holder rewrites the rows written since
    the rotation under it (or appends more): past its recorded retirement, reported."""
    old = MasterKeyring(MasterKey.generate())
    await write_events(app_engine, [make_event.payment("au14", "pay_1")], keyring=old)
    rotated = old.rotated_to(MasterKey.generate())
    await _retire(owner_engine, ["au14"], rotated)
    for pay in ("pay_2", "pay_3"):
        await write_events(app_engine, [make_event.payment("au14", pay)], keyring=rotated)
    assert (await verify_audit(app_engine, "au14", rotated)).ok
    # The forger rewrites rows 2.. under the old key (key ids too).
    await _rewrite_chain_from(owner_engine, "au14", 2, audit_key(old.current), drop_key_id=False)
    async with owner_engine.begin() as conn:
        await conn.execute(text("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only"))
        await conn.execute(
            text("UPDATE audit_log SET key_id = :k WHERE tenant_id = 'au14' AND seq >= 2"),
            {"k": old.current.key_id},
        )
        await conn.execute(text("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only"))
    problems = (await verify_audit(app_engine, "au14", rotated)).problems
    assert problems == [
        f"2 row(s) under retired master key {old.current.key_id!r} (seq 2, 3) past seq 1, "
        "where `paystream keys rotate` recorded its retirement for this tenant: a worker "
        "still on that key after the rotation, or whoever holds it"
    ]


async def _retire(owner: AsyncEngine, tenants: list[str], keyring: MasterKeyring) -> int:
    """What `paystream keys rotate` records, as the owner."""
    async with AsyncSession(owner) as session, session.begin():
        return await record_retirements(session, tenants, keyring)


async def test_every_version_written_in_one_batch_is_audited(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    """authorised, captured, refunded in one sink batch: three entries, each from the one
    before, as three batches would give (the trail must not depend on batching)."""
    batch = [
        make_event.payment("au15", "pay_1", 1, status="requires_capture", amount_captured=0),
        make_event.payment("au15", "pay_1", 3, status="refunded", amount_refunded=1000),
        make_event.payment("au15", "pay_1", 2, status="succeeded", amount_captured=1000),
    ]
    result = await write_events(app_engine, batch, keyring=keyring)
    assert (result.entities_applied, result.entities_stale) == (1, 0)
    async with tenant_session(app_engine, "au15") as s:
        rows = (await s.scalars(select(AuditLog).order_by(AuditLog.seq))).all()
    assert [r.after["status"] for r in rows] == ["requires_capture", "succeeded", "refunded"]
    assert [r.before and r.before["status"] for r in rows] == [
        None,
        "requires_capture",
        "succeeded",
    ]
    # Already stored at v1: a batch of v2 and v3 audits those two only.
    more = [
        make_event.payment("au15", "pay_2", 1, status="requires_capture", amount_captured=0),
    ]
    await write_events(app_engine, more, keyring=keyring)
    await write_events(
        app_engine,
        [
            make_event.payment("au15", "pay_2", 2, status="succeeded", amount_captured=1000),
            make_event.payment("au15", "pay_2", 3, status="refunded", amount_refunded=1000),
        ],
        keyring=keyring,
    )
    async with tenant_session(app_engine, "au15") as s:
        two = (
            await s.scalars(
                select(AuditLog).where(AuditLog.entity_id == "pay_2").order_by(AuditLog.seq)
            )
        ).all()
    assert [(r.before and r.before["version"], r.after["version"]) for r in two] == [
        (None, 1),
        (1, 2),
        (2, 3),
    ]
    assert (await verify_audit(app_engine, "au15", keyring)).ok


@pytest.mark.parametrize(
    "change",
    [
        "occurred_at = occurred_at + interval '1 second'",
        "actor = 'mallory'",
        "action = 'refund.succeeded'",
        "entity_type = 'refund'",
        "entity_id = 'pay_other'",
        "before = '{}'::jsonb",
        "after = jsonb_set(after, '{amount}', '1')",
    ],
)
async def test_every_column_of_a_row_is_covered_by_its_hash(
    app_engine: AsyncEngine,
    owner_engine: AsyncEngine,
    keyring: MasterKeyring,
    make_event: EventFactory,
    change: str,
) -> None:
    """A row moved to another entity, or dated otherwise, is as altered as one whose
    amount changed (mutation testing: the entity id was not checked by any test)."""
    tenant = "auc" + hashlib.sha256(change.encode()).hexdigest()[:8]
    await _history(app_engine, keyring, make_event, tenant)
    await _as_owner_without_trigger(
        owner_engine, f"UPDATE audit_log SET {change} WHERE tenant_id = '{tenant}' AND seq = 2"
    )
    result = await verify_audit(app_engine, tenant, keyring)
    assert result.problems == ["seq 2: contents do not match its hash (altered)"], change


async def test_a_head_whose_hash_is_not_the_last_rows_is_reported(
    app_engine: AsyncEngine,
    owner_engine: AsyncEngine,
    keyring: MasterKeyring,
    make_event: EventFactory,
) -> None:
    """The head vouches for the newest row by its hash as well as its number (mutation
    testing: a head with the right number and another hash passed)."""
    await _history(app_engine, keyring, make_event, "au_head")
    async with owner_engine.begin() as conn:
        await conn.execute(text("ALTER TABLE audit_heads DISABLE TRIGGER audit_heads_forward_only"))
        await conn.execute(
            text("UPDATE audit_heads SET hash = sha256(hash) WHERE tenant_id = 'au_head'")
        )
        await conn.execute(text("ALTER TABLE audit_heads ENABLE TRIGGER audit_heads_forward_only"))
    result = await verify_audit(app_engine, "au_head", keyring)
    assert result.problems == ["head's hash does not match the last row's (seq 4)"]


@pytest.mark.parametrize(
    "statement",
    [
        # the last bigint: every later append overflowed, and the sink dead-lettered
        # the tenant's every outcome and skipped its erasures (review finding)
        "UPDATE audit_heads SET seq = 9223372036854775807, hash = sha256(hash)",
        "UPDATE audit_heads SET seq = seq + 1",  # a head ahead of its chain
    ],
)
async def test_the_head_names_its_chains_newest_row(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory, statement: str
) -> None:
    """The application role moves the head, but only onto a row of its chain."""
    await _history(app_engine, keyring, make_event, "au20")
    with pytest.raises(DBAPIError, match="audit_heads name their chain's newest row"):
        async with tenant_session(app_engine, "au20") as s:
            await s.execute(text(statement))
    more = [make_event.payment("au20", f"pay_{i}", 1) for i in range(5, 8)]
    await write_events(app_engine, more, keyring=keyring)  # and the writer goes on
    assert (await verify_audit(app_engine, "au20", keyring)).ok


async def test_a_new_tenants_head_starts_at_its_chains_beginning(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    await write_events(app_engine, [make_event.payment("au21", "pay_0")], keyring=keyring)
    with pytest.raises(DBAPIError, match="audit_heads name their chain's newest row"):
        async with tenant_session(app_engine, "au22") as s:
            await s.execute(
                text("INSERT INTO tenants (tenant_id) VALUES ('au22') ON CONFLICT DO NOTHING")
            )
            await s.execute(
                text(
                    "INSERT INTO audit_heads (tenant_id, seq, hash) "
                    "VALUES ('au22', 9223372036854775807, sha256('x'))"
                )
            )


async def test_a_row_planted_at_the_last_bigint_extends_no_chain(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    """Inserted by the app role (it may insert rows), then named by the head: every
    later append overflowed all the same (review of the head's trigger)."""
    await _history(app_engine, keyring, make_event, "au23")
    with pytest.raises(DBAPIError, match="audit_log rows extend their chain"):
        async with tenant_session(app_engine, "au23") as s:
            await s.execute(
                text(
                    "INSERT INTO audit_log (tenant_id, seq, occurred_at, actor, action, "
                    "entity_type, entity_id, prev_hash, hash) VALUES ('au23', "
                    "9223372036854775807, now(), 'x', 'x', 'x', 'x', sha256('a'), sha256('b'))"
                )
            )
    more = [make_event.payment("au23", f"pay_{i}", 1) for i in range(5, 7)]
    await write_events(app_engine, more, keyring=keyring)
    assert (await verify_audit(app_engine, "au23", keyring)).ok
