"""Data keys under review h60k: one key no key of the keyring opens (damaged, or under
a master key it lacks) no longer stops `keys rotate` for every key after it, and is
named; a customer's key deleted outside an erasure stays reported by `audit verify`
after the writer makes it again, and customers whose only sealed data is in events
(description, metadata, phone) have their keys checked too."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import delete, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from paystream.ledger import (
    export_customer,
    rotate_master_key,
    tenant_session,
    verify_audit,
    write_events,
)
from paystream.ledger.models import DataKey
from paystream.ledger.writer import _write_tenant
from paystream.tenancy.crypto import CryptoError, MasterKey, MasterKeyring


async def _master_ids(engine: AsyncEngine, tenant: str) -> dict[str, str]:
    async with tenant_session(engine, tenant) as s:
        rows = await s.execute(select(DataKey.key_ref, DataKey.master_key_id))
        return {r.key_ref: r.master_key_id for r in rows}


async def test_one_damaged_data_key_does_not_stop_every_other_key_s_rotation(
    app_engine: AsyncEngine, owner_engine: AsyncEngine, make_event: Any
) -> None:
    """The README's "damaged key" (the app role has full DML on data_keys; the sink
    parks that customer's events and goes on). `keys rotate` should likewise re-wrap
    every other key and name the damaged one, as reseal_registry_secrets does for a
    secret no key opens."""
    old = MasterKeyring(MasterKey.generate())
    events = [make_event.customer(t, f"cus_{i}") for t in ("rk1", "rk2") for i in range(3)]
    await write_events(app_engine, events, keyring=old)
    async with tenant_session(app_engine, "rk1") as s:  # one byte of one key flipped
        blob = (
            await s.scalars(select(DataKey.wrapped_key).where(DataKey.key_ref == "customer/cus_0"))
        ).one()
        await s.execute(
            update(DataKey)
            .where(DataKey.key_ref == "customer/cus_0")
            .values(wrapped_key=blob[:-1] + bytes([blob[-1] ^ 1]))
        )
    new = MasterKey.generate()
    rotating = old.rotated_to(new)
    unopenable: list[str] = []
    await rotate_master_key(app_engine, rotating, ["rk1", "rk2"], unopenable)
    assert [p.split(":")[0] for p in unopenable] == ["rk1/customer/cus_0"], unopenable
    left_rk2 = [r for r, mk in (await _master_ids(app_engine, "rk2")).items() if mk != new.key_id]
    left_rk1 = [r for r, mk in (await _master_ids(app_engine, "rk1")).items() if mk != new.key_id]
    assert left_rk2 == [], f"rk2's healthy keys not re-wrapped: {left_rk2}"
    assert left_rk1 == ["customer/cus_0"], f"rk1 keys left under the old key: {left_rk1}"


async def test_a_customer_key_deleted_outside_an_erasure_stays_reported(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: Any
) -> None:
    """README: the app role can delete a customer's key ("an unaudited crypto-shred");
    `audit verify` names the customer. The next outcome of that customer silently makes
    a fresh key, after which verify is clean while the customer's older sealed events
    no longer open under any key (export fails for good)."""
    t = "mk1"
    await write_events(app_engine, [make_event.customer(t, "cus_1", version=1)], keyring=keyring)
    async with tenant_session(app_engine, t) as s:
        await s.execute(delete(DataKey).where(DataKey.key_ref == "customer/cus_1"))
    before = await verify_audit(app_engine, t, keyring)
    assert any("cus_1" in p for p in before.problems), before.problems  # named: good
    await write_events(app_engine, [make_event.customer(t, "cus_1", version=2)], keyring=keyring)
    after = await verify_audit(app_engine, t, keyring)
    try:
        await export_customer(app_engine, keyring, t, "cus_1")
        exported = "ok"
    except CryptoError as exc:
        exported = f"export fails: {exc}"
    assert exported.startswith("export fails"), exported  # its older events: lost
    assert not after.ok, f"the unaudited shred is no longer reported ({exported})"
    assert any("cus_1" in p and "made again" in p for p in after.problems), after.problems


async def test_a_key_sealing_only_event_fields_is_checked_too(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: Any
) -> None:
    """description, metadata and phone are sealed in events only (no column): a customer
    holding just those has no column ciphertext, so key_check never looks at its key;
    deleting (or damaging) it is never reported."""
    t = "mk2"
    event = make_event.customer(
        t,
        "cus_1",
        email=None,
        name=None,
        description="VIP, allergic to nuts",
        metadata={"passport": "X123"},
    )
    await write_events(app_engine, [event], keyring=keyring)
    async with tenant_session(app_engine, t) as s:
        await s.execute(delete(DataKey).where(DataKey.key_ref == "customer/cus_1"))
    result = await verify_audit(app_engine, t, keyring)
    assert not result.ok, "an unaudited crypto-shred of sealed event data is not reported"
    assert any("cus_1" in p and "no data key" in p for p in result.problems), result.problems


async def test_one_key_under_an_unknown_master_key_does_not_stop_other_tenants(
    app_engine: AsyncEngine, make_event: Any
) -> None:
    """A worker once run with a wrong PAYSTREAM_MASTER_KEY wrapped one tenant's key under
    it: rotation aborts there (UnknownMasterKeyError), later tenants untouched."""
    old = MasterKeyring(MasterKey.generate())
    await write_events(app_engine, [make_event.customer("uk2", "cus_y")], keyring=old)
    # (Holding the right key as retired too: this version's writer begins no chain under
    # a key the ledger has not seen; an older version's did.)
    stray = MasterKeyring(MasterKey.generate(), (old.current,))
    await write_events(app_engine, [make_event.customer("uk1", "cus_x")], keyring=stray)
    new = MasterKey.generate()
    unopenable: list[str] = []
    await rotate_master_key(app_engine, old.rotated_to(new), ["uk1", "uk2"], unopenable)
    assert [p.split(":")[0] for p in unopenable] == ["uk1/customer/cus_x"], unopenable
    assert set((await _master_ids(app_engine, "uk2")).values()) == {new.key_id}


# ---- review h60l: the check opens the earliest sealed event, trusting no timestamp


async def test_remade_key_hidden_by_app_role_backdating_created_at(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: Any
) -> None:
    """The check defends against the app role (full DML on data_keys). That same role
    may UPDATE data_keys.created_at: delete the key, let the writer remake it, move its
    created_at back, and verify is clean while the customer's older sealed data is lost."""
    t = "hl1"
    await write_events(app_engine, [make_event.customer(t, "cus_1", version=1)], keyring=keyring)
    async with tenant_session(app_engine, t) as s:
        await s.execute(delete(DataKey).where(DataKey.key_ref == "customer/cus_1"))
    await write_events(app_engine, [make_event.customer(t, "cus_1", version=2)], keyring=keyring)
    assert not (await verify_audit(app_engine, t, keyring)).ok  # named "made again": good
    async with tenant_session(app_engine, t) as s:  # as the app role, unaudited
        await s.execute(
            update(DataKey)
            .where(DataKey.key_ref == "customer/cus_1")
            .values(created_at=text("created_at - interval '1 day'"))
        )
    try:
        await export_customer(app_engine, keyring, t, "cus_1")
        exported = "ok"
    except CryptoError as exc:
        exported = f"export fails: {exc}"
    assert exported.startswith("export fails")  # the older sealed event: lost
    result = await verify_audit(app_engine, t, keyring)
    assert not result.ok, f"lost PII unreported after a created_at update ({exported})"


async def test_no_remade_key_when_a_writer_began_before_the_key_maker(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: Any
) -> None:
    """now() is the transaction's start: a write of the tenant that began (BEGIN +
    set_config) before another took the tenant lock and made a customer's first key,
    then records that customer's next event with an earlier recorded_at than the key.
    Two writers of one tenant: a Faust rebalance's old and new owner of the partition."""
    t = "hl2"
    async with tenant_session(app_engine, t) as early:  # began first (now() fixed here)
        await early.execute(text("SELECT 1"))
        await asyncio.sleep(0.05)
        # Another writer takes the lock first and records cus_1's first event + its key.
        await write_events(
            app_engine, [make_event.customer(t, "cus_1", version=1)], keyring=keyring
        )
        # The early transaction now gets the lock and records cus_1's next outcome.
        await _write_tenant(early, keyring, t, [make_event.customer(t, "cus_1", version=2)])
    exported = await export_customer(app_engine, keyring, t, "cus_1")  # nothing was lost
    assert exported["customer"]["email"] == "cus_1@example.com"
    result = await verify_audit(app_engine, t, keyring)
    assert not any("made again" in p for p in result.problems), result.problems
