"""Forgeries the keyed audit chain must catch, by what the forger holds.

From a review: the first keyed chain let the ledger's own next (keyed) row, a seal or a
rotation "vouch" for rows nobody with the key wrote. Each test is one forger.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from paystream.ledger import tenant_session, verify_audit, write_events
from paystream.ledger.audit import audit_key, chain_hash
from paystream.ledger.keys import rotate_master_key
from paystream.tenancy.crypto import MasterKey, MasterKeyring
from tests.ledger.factories import EventFactory
from tests.ledger.test_audit import _history, _rewrite_chain_from


async def _append_forged(
    app: AsyncEngine, tenant: str, key: bytes | None, key_id: str | None
) -> None:
    """What the application role can do with no master key (or a leaked retired one):
    insert an audit row chained onto the head and move the head forward (both granted)."""
    async with tenant_session(app, tenant) as s:
        head = (await s.execute(text("SELECT seq, hash FROM audit_heads"))).one()
        seq, prev = head.seq + 1, bytes(head.hash)
        row: dict[str, Any] = {
            "occurred_at": datetime(2025, 1, 2, tzinfo=UTC),
            "actor": "admin:alice",
            "action": "com.paystream.payment.refunded",
            "entity_type": "payment",
            "entity_id": "pay_0",
            "before": None,
            "after": {"note": "forged"},
        }
        forged = chain_hash(prev, tenant, seq, row, key)
        await s.execute(
            text(
                "INSERT INTO audit_log (tenant_id, seq, occurred_at, actor, action, "
                "entity_type, entity_id, before, after, prev_hash, hash, key_id) VALUES "
                "(:t, :s, :o, :a, :ac, :et, :ei, NULL, CAST(:af AS jsonb), :p, :h, :k)"
            ),
            {"t": tenant, "s": seq, "o": row["occurred_at"], "a": row["actor"],
             "ac": row["action"], "et": row["entity_type"], "ei": row["entity_id"],
             "af": '{"note": "forged"}', "p": prev, "h": forged, "k": key_id},
        )  # fmt: skip
        await s.execute(text("UPDATE audit_heads SET seq = :s, hash = :h"), {"s": seq, "h": forged})


async def test_an_owner_rewrite_without_the_key_is_not_vouched_for_by_the_next_write(
    app_engine: AsyncEngine,
    owner_engine: AsyncEngine,
    keyring: MasterKeyring,
    make_event: EventFactory,
) -> None:
    await _history(app_engine, keyring, make_event, "fg1")
    await _rewrite_chain_from(owner_engine, "fg1", 2, None, drop_key_id=True)
    await write_events(app_engine, [make_event.payment("fg1", "pay_next")], keyring=keyring)
    assert not (await verify_audit(app_engine, "fg1", keyring)).ok


async def test_rows_the_app_role_appends_without_a_key_stay_reported(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    await _history(app_engine, keyring, make_event, "fg2")
    await _append_forged(app_engine, "fg2", None, None)  # no trigger disabled, no key
    await write_events(app_engine, [make_event.payment("fg2", "pay_next")], keyring=keyring)
    problems = (await verify_audit(app_engine, "fg2", keyring)).problems
    assert problems and problems[0].startswith("1 row(s) not keyed (seq 5)")
    forged_key = MasterKey.generate()  # a key id nobody holds
    await _append_forged(app_engine, "fg2", audit_key(forged_key), forged_key.key_id)
    problems = (await verify_audit(app_engine, "fg2", keyring)).problems
    assert f"keyed under master key {forged_key.key_id!r}" in " ".join(problems)


async def test_a_rotation_does_not_vouch_for_a_forged_row(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    await _history(app_engine, keyring, make_event, "fg3")
    await _append_forged(app_engine, "fg3", None, None)
    rotated = keyring.rotated_to(MasterKey.generate())
    await rotate_master_key(app_engine, rotated, ["fg3"])
    assert not (await verify_audit(app_engine, "fg3", rotated)).ok


async def test_a_leaked_retired_key_cannot_extend_the_chain_after_the_rotation(
    app_engine: AsyncEngine, make_event: EventFactory
) -> None:
    old = MasterKeyring(MasterKey.generate())
    await write_events(app_engine, [make_event.payment("fg4", "pay_1")], keyring=old)
    rotated = old.rotated_to(MasterKey.generate())
    await write_events(app_engine, [make_event.payment("fg4", "pay_2")], keyring=rotated)
    await rotate_master_key(app_engine, rotated, ["fg4"])  # seals, naming the old key
    assert (await verify_audit(app_engine, "fg4", rotated)).ok
    await _append_forged(app_engine, "fg4", audit_key(old.current), old.current.key_id)
    await write_events(app_engine, [make_event.payment("fg4", "pay_3")], keyring=rotated)
    problems = (await verify_audit(app_engine, "fg4", rotated)).problems
    assert problems == [
        f"seq 4: under master key {old.current.key_id!r}, which the seal at seq 3 retired"
    ]


async def test_one_tenants_broken_chain_does_not_stop_the_rotation_of_others(
    app_engine: AsyncEngine, make_event: EventFactory
) -> None:
    old = MasterKeyring(MasterKey.generate())
    for t in ("fg5a", "fg5b"):
        await write_events(app_engine, [make_event.customer(t, "cus_1")], keyring=old)
    async with tenant_session(app_engine, "fg5a") as s:  # a stray row past the head
        await s.execute(
            text(
                "INSERT INTO audit_log (tenant_id, seq, occurred_at, actor, action, "
                "entity_type, entity_id, prev_hash, hash) SELECT tenant_id, seq + 1, now(), "
                "'x', 'x', 'x', 'x', hash, hash FROM audit_heads"
            )
        )
    rotated = old.rotated_to(MasterKey.generate())
    assert await rotate_master_key(app_engine, rotated, ["fg5a", "fg5b"]) == 2
    assert (await verify_audit(app_engine, "fg5b", rotated)).ok


async def test_a_rotation_and_an_erasure_take_their_locks_in_one_order(
    app_engine: AsyncEngine, make_event: EventFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rotation locked the data keys, then the audit head; erasure the head, then the data
    key: forced to interleave, they deadlocked."""
    from paystream.ledger import keys as keys_mod
    from paystream.ledger.privacy import erase_customer

    old = MasterKeyring(MasterKey.generate())
    await write_events(app_engine, [make_event.customer("fg6", "cus_1")], keyring=old)
    rotated = old.rotated_to(MasterKey.generate())
    real_seal = keys_mod.seal_chain
    rewrapped = asyncio.Event()

    async def seal_after_erasure_started(session: Any, tenant_id: str, keyring: Any) -> bool:
        rewrapped.set()
        await asyncio.sleep(0.5)  # the erasure now waits on a lock the rotation holds
        return await real_seal(session, tenant_id, keyring)

    monkeypatch.setattr(keys_mod, "seal_chain", seal_after_erasure_started)

    async def erase() -> bool:
        await rewrapped.wait()
        return await erase_customer(app_engine, "fg6", "cus_1", keyring=rotated)

    results = await asyncio.gather(
        keys_mod.rotate_master_key(app_engine, rotated, ["fg6"]), erase(), return_exceptions=True
    )
    assert not any(isinstance(r, BaseException) for r in results), results
    assert (await verify_audit(app_engine, "fg6", rotated)).ok
