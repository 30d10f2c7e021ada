"""Forgeries the keyed audit chain must catch, by what the forger holds, and the false
alarms it must not raise.

From reviews: an earlier design let the ledger's own next (keyed) row, a seal or a
rotation "vouch" for rows nobody with the key wrote, and a leaked retired key extend any
chain no seal covered. Each test is one forger, or one legitimate operation.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from paystream.ledger import tenant_session, verify_audit, write_events
from paystream.ledger.audit import audit_key
from paystream.ledger.keys import rotate_master_key
from paystream.tenancy.crypto import MasterKey, MasterKeyring
from tests.ledger.factories import EventFactory, insert_audit_row
from tests.ledger.test_audit import _history, _retire, _rewrite_chain_from


async def _append_forged(
    app: AsyncEngine, tenant: str, key: bytes | None, key_id: str | None
) -> None:
    """What the application role can do with no master key (or a leaked retired one):
    insert an audit row chained onto the head and move the head forward (both granted)."""
    async with tenant_session(app, tenant) as s:
        head = (
            await s.execute(
                text("SELECT seq, hash FROM audit_heads WHERE tenant_id = :t"), {"t": tenant}
            )
        ).one()
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
        forged = await insert_audit_row(s, tenant, seq, prev, row, key, key_id)
        await s.execute(
            text("UPDATE audit_heads SET seq = :s, hash = :h WHERE tenant_id = :t"),
            {"s": seq, "h": forged, "t": tenant},
        )


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


async def test_a_leaked_retired_key_cannot_extend_a_chain_after_the_rotation(
    app_engine: AsyncEngine, owner_engine: AsyncEngine, make_event: EventFactory
) -> None:
    """Whether the chain had begun at the rotation (fg4a), had not (fg4b: registered, no
    event yet), or began after it unrecorded (fg4c): rows under the old key written
    after the rotation are reported, whatever the ledger writes after them."""
    old = MasterKeyring(MasterKey.generate())
    await write_events(app_engine, [make_event.payment("fg4a", "pay_1")], keyring=old)
    rotated = old.rotated_to(MasterKey.generate())
    await _retire(owner_engine, ["fg4a", "fg4b"], rotated)
    for tenant in ("fg4a", "fg4b", "fg4c"):
        await write_events(app_engine, [make_event.payment(tenant, "pay_2")], keyring=rotated)
        await _append_forged(app_engine, tenant, audit_key(old.current), old.current.key_id)
        await write_events(app_engine, [make_event.payment(tenant, "pay_3")], keyring=rotated)
        problems = (await verify_audit(app_engine, tenant, rotated)).problems
        assert len(problems) == 1 and problems[0].startswith(
            f"1 row(s) under retired master key {old.current.key_id!r}"
        ), (tenant, problems)


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


async def test_the_app_role_cannot_start_a_chain_with_unkeyed_rows(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    """Unkeyed rows are accepted only up to where migration 0004 found a chain standing;
    a chain begun since has no such record, and the application role cannot write one."""
    async with tenant_session(app_engine, "fg6") as s:
        await s.execute(text("INSERT INTO tenants (tenant_id) VALUES ('fg6')"))
        await s.execute(
            text("INSERT INTO audit_heads (tenant_id, seq, hash) VALUES ('fg6', 0, :g)"),
            {"g": bytes(32)},
        )
    await _append_forged(app_engine, "fg6", None, None)
    await write_events(app_engine, [make_event.payment("fg6", "pay_1")], keyring=keyring)
    problems = (await verify_audit(app_engine, "fg6", keyring)).problems
    assert len(problems) == 1 and problems[0].startswith("1 row(s) not keyed (seq 1)")
    with pytest.raises(DBAPIError, match="permission denied"):
        async with tenant_session(app_engine, "fg6") as s:
            await s.execute(
                text("INSERT INTO audit_legacy VALUES ('fg6', 1, 9, :h)"),
                {"h": bytes(32)},
            )
    with pytest.raises(DBAPIError, match="permission denied"):
        async with tenant_session(app_engine, "fg6") as s:
            await s.execute(
                text(
                    "INSERT INTO audit_key_retirements (tenant_id, key_id, through_seq) "
                    "VALUES ('fg6', 'mk-x', 99)"
                )
            )


async def test_rolling_back_to_the_previous_master_key_raises_no_alarm(
    app_engine: AsyncEngine, owner_engine: AsyncEngine, make_event: EventFactory
) -> None:
    """K1 → K2 (retirement of K1 recorded), then back to K1 (a bad deploy of K2): K1 is
    current again, its new rows are not taken for a retired key's."""
    k1 = MasterKeyring(MasterKey.generate())
    await write_events(app_engine, [make_event.payment("fg7", "pay_1")], keyring=k1)
    k2 = k1.rotated_to(MasterKey.generate())
    await _retire(owner_engine, ["fg7"], k2)
    await write_events(app_engine, [make_event.payment("fg7", "pay_2")], keyring=k2)
    back = k2.rotated_to(k1.current)
    await _retire(owner_engine, ["fg7"], back)
    await write_events(app_engine, [make_event.payment("fg7", "pay_3")], keyring=back)
    result = await verify_audit(app_engine, "fg7", back)
    assert result.ok, result.problems


async def test_a_later_rotation_does_not_accept_rows_forged_under_a_key_retired_before(
    app_engine: AsyncEngine, owner_engine: AsyncEngine, ledger_db: Any, make_event: EventFactory
) -> None:
    """K1 retired while fg8 did not exist; a forger starts fg8 (or adds to it) under K1.
    A later run of `keys rotate` (the same rotation again, or K2 → K3 with K1 still kept
    for verification) must not record K1 at fg8's head: it never had a genuine K1 row."""
    from paystream.tenancy.rotation import record_audit_retirements

    k1 = MasterKeyring(MasterKey.generate())
    await write_events(app_engine, [make_event.payment("fg8_old", "pay_1")], keyring=k1)
    k2 = k1.rotated_to(MasterKey.generate())
    await record_audit_retirements(ledger_db.owner_url, k2, ["fg8_old"])
    await write_events(app_engine, [make_event.payment("fg8", "pay_1")], keyring=k2)
    await _append_forged(app_engine, "fg8", audit_key(k1.current), k1.current.key_id)
    assert not (await verify_audit(app_engine, "fg8", k2)).ok
    await record_audit_retirements(ledger_db.owner_url, k2, ["fg8_old"])  # run again
    assert not (await verify_audit(app_engine, "fg8", k2)).ok
    k3 = k2.rotated_to(MasterKey.generate())  # K1 and K2 retired
    await record_audit_retirements(ledger_db.owner_url, k3, [])
    problems = (await verify_audit(app_engine, "fg8", k3)).problems
    assert (
        len(problems) == 1
        and f"master key {k1.current.key_id!r} (seq 2) past seq 0" in (problems[0])
    )
    assert (await verify_audit(app_engine, "fg8_old", k3)).ok


async def test_rolling_back_then_rotating_again_raises_no_alarm(
    app_engine: AsyncEngine, owner_engine: AsyncEngine, make_event: EventFactory
) -> None:
    """K1 → K2, back to K1 (its rows since are genuine), then K1 → K3: K1's retirement is
    recorded afresh, not kept from before the rollback."""
    k1 = MasterKeyring(MasterKey.generate())
    await write_events(app_engine, [make_event.payment("fg9", "pay_1")], keyring=k1)
    k2 = MasterKeyring(MasterKey.generate(), (k1.current,))
    await _retire(owner_engine, ["fg9"], k2)
    await write_events(app_engine, [make_event.payment("fg9", "pay_2")], keyring=k2)
    back = MasterKeyring(k1.current, (k2.current,))
    await _retire(owner_engine, ["fg9"], back)
    await write_events(app_engine, [make_event.payment("fg9", "pay_3")], keyring=back)
    assert (await verify_audit(app_engine, "fg9", back)).ok
    k3 = MasterKeyring(MasterKey.generate(), (k1.current, k2.current))
    await _retire(owner_engine, ["fg9"], k3)
    await write_events(app_engine, [make_event.payment("fg9", "pay_4")], keyring=k3)
    result = await verify_audit(app_engine, "fg9", k3)
    assert result.ok, result.problems


async def test_retirements_are_recorded_for_many_tenants(
    ledger_db: Any, keyring: MasterKeyring
) -> None:
    """One statement for all of them passed PostgreSQL's bind parameter limit (32,767)
    past about 11,000 tenants, after the data keys were re-wrapped."""
    from paystream.tenancy.rotation import record_audit_retirements

    rotated = keyring.rotated_to(MasterKey.generate())
    tenants = [f"many_{i}" for i in range(11_000)]
    assert await record_audit_retirements(ledger_db.owner_url, rotated, tenants) >= 11_000


async def test_a_key_first_retired_before_any_chain_is_still_retired_on_a_later_run(
    ledger_database_url: str,
) -> None:
    """The first `keys rotate` found no chain at all (a new install): the key's
    retirement is marked all the same, so a chain a forger starts under it is recorded
    at 0 by a later run, not at the forger's head."""
    from paystream.ledger import create_engine
    from paystream.ledger.migrate import app_database_url, upgrade
    from paystream.tenancy.rotation import record_audit_retirements
    from tests.fixtures.postgres import fresh_database

    url = await fresh_database(ledger_database_url, prefix="empty")
    await upgrade(url, app_password="empty-pw")
    app = create_engine(app_database_url(url, "empty-pw"))
    try:
        k1 = MasterKeyring(MasterKey.generate())
        k2 = k1.rotated_to(MasterKey.generate())
        assert await record_audit_retirements(url, k2, []) == 0  # no chain anywhere
        # (The forger's keyring holds the new key too: this version's writer begins no
        # chain under the old key alone once `keys rotate` recorded the new one.)
        forger = MasterKeyring(k1.current, (k2.current,))
        await write_events(app, [EventFactory().payment("fg10", "pay_1")], keyring=forger)
        await record_audit_retirements(url, k2, [])  # `keys rotate` again
        problems = (await verify_audit(app, "fg10", k2)).problems
        assert len(problems) == 1 and "(seq 1) past seq 0" in problems[0], problems
    finally:
        await app.dispose()
