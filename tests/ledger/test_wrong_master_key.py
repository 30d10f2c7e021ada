"""A worker started with the wrong PAYSTREAM_MASTER_KEY (another
environment's, a mistyped secret, a rollback without the key rotated to) must not go on
writing the ledger under it (review h67l).

The sink stalled (``config``) only when a batch meets a data key wrapped under a master
key its keyring lacks: an existing customer's. Every other batch (payments, refunds,
disputes, payment methods, a new customer) is stored, and its audit entries are keyed
under the wrong key, extending chains whose earlier rows that keyring cannot verify;
new customers' data keys are wrapped under it too. Nothing says so until someone runs
`audit verify`, and by then the rows under the wrong key verify only while that key is
kept (it is the one the operator throws away), and are reported exactly as rows a forger
wrote under a key nobody holds.

A tenant with no chain yet (its first ledger write) gave the worker nothing to check:
the ledger now records the master keys it has seen (migration 0012, by key id), and a
chain is begun only under a keyring holding one of them, or on a ledger that has seen
none (review h71f).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from paystream.ledger import (
    create_engine,
    erase_customer,
    rotate_master_key,
    tenant_session,
    verify_audit,
    write_events,
)
from paystream.ledger.audit import record_retirements
from paystream.ledger.migrate import app_database_url, upgrade
from paystream.ledger.sink import FailureKind, classify_failure
from paystream.tenancy.crypto import MasterKey, MasterKeyring
from tests.fixtures.postgres import fresh_database
from tests.ledger.factories import EventFactory, LedgerDb

# The key this module's ledger was first written under (its tests share the database).
RIGHT = MasterKey.generate()


async def test_a_keyring_that_cannot_verify_the_chain_does_not_extend_it(
    app_engine: AsyncEngine, make_event: EventFactory
) -> None:
    right = MasterKeyring(RIGHT)
    await write_events(app_engine, [make_event.payment("wk1", "pay_1")], keyring=right)
    assert (await verify_audit(app_engine, "wk1", right)).ok

    wrong = MasterKeyring(MasterKey.generate())  # the worker restarted with another key
    with pytest.raises(Exception) as refused:  # (whichever error says so)
        await write_events(app_engine, [make_event.payment("wk1", "pay_2")], keyring=wrong)
    # ... and waits for the operator (config), as it does for a data key it cannot open,
    # rather than dead-lettering the outcome.
    assert classify_failure(refused.value) == FailureKind.CONFIG

    async with tenant_session(app_engine, "wk1") as s:
        keys = (await s.scalars(text("SELECT DISTINCT key_id FROM audit_log"))).all()
    assert keys == [right.current.key_id]
    assert (await verify_audit(app_engine, "wk1", right)).ok


@dataclass
class Ledger:
    app: AsyncEngine
    owner: AsyncEngine


@pytest_asyncio.fixture
async def fresh_ledger(ledger_database_url: str, ledger_db: LedgerDb) -> AsyncIterator[Ledger]:
    """A ledger of its own, migrated, that no key has written yet (paystream_app's
    password kept as the module's: the role is the whole server's)."""
    url = await fresh_database(ledger_database_url, prefix="wmk")
    password = make_url(ledger_db.app_url).password or ""
    await upgrade(url, app_password=password)
    ledger = Ledger(create_engine(app_database_url(url, password)), create_engine(url))
    try:
        yield ledger
    finally:
        await ledger.app.dispose()
        await ledger.owner.dispose()


async def _retire(owner: AsyncEngine, tenants: list[str], keyring: MasterKeyring) -> None:
    """What `paystream keys rotate` records, as the owner."""
    async with AsyncSession(owner) as session, session.begin():
        await record_retirements(session, tenants, keyring)


async def _refused(engine: AsyncEngine, events: list, keyring: MasterKeyring) -> None:  # type: ignore[type-arg]
    with pytest.raises(Exception) as refused:
        await write_events(engine, events, keyring=keyring)
    assert classify_failure(refused.value) == FailureKind.CONFIG, refused.value
    assert "is PAYSTREAM_MASTER_KEY the right key?" in str(refused.value)


async def _stored(engine: AsyncEngine, tenant: str) -> tuple[int, ...]:
    """The tenant's audit rows, data keys, events and head (0 when none)."""
    async with tenant_session(engine, tenant) as s:
        return tuple(
            [
                await s.scalar(text(f"SELECT count(*) FROM {table}"))
                for table in ("audit_log", "data_keys", "events")
            ]
            + [await s.scalar(text("SELECT coalesce(max(seq), 0) FROM audit_heads"))]
        )


async def test_a_wrong_keyring_cannot_begin_a_new_tenants_chain(
    app_engine: AsyncEngine, make_event: EventFactory
) -> None:
    """Nothing of the new tenant is stored under the wrong key: no audit row, no data key
    wrapped under it, no event; the sink waits for the operator (config). The same
    batch under the right key goes in."""
    right = MasterKeyring(RIGHT)
    await write_events(app_engine, [make_event.payment("wk3", "pay_1")], keyring=right)
    wrong = MasterKeyring(MasterKey.generate())
    batch = [make_event.customer("wk4", "cus_1"), make_event.payment("wk4", "pay_1")]
    await _refused(app_engine, batch, wrong)
    assert await _stored(app_engine, "wk4") == (0, 0, 0, 0)
    # A key retired with it does not help: neither is the ledger's.
    await _refused(app_engine, batch, wrong.rotated_to(MasterKey.generate()))
    # An erasure begins a chain too (a customer erased before their first event).
    with pytest.raises(Exception) as refused:
        await erase_customer(app_engine, "wk4", "cus_9", keyring=wrong)
    assert classify_failure(refused.value) == FailureKind.CONFIG
    assert await _stored(app_engine, "wk4") == (0, 0, 0, 0)

    await write_events(app_engine, batch, keyring=right)
    assert await _stored(app_engine, "wk4") == (2, 1, 2, 2)
    assert (await verify_audit(app_engine, "wk4", right)).ok


async def test_the_right_key_begins_new_chains(
    app_engine: AsyncEngine, make_event: EventFactory
) -> None:
    right = MasterKeyring(RIGHT)
    for tenant in ("wk5", "wk6"):
        await write_events(
            app_engine,
            [make_event.customer(tenant, "cus_1"), make_event.payment(tenant, "pay_1")],
            keyring=right,
        )
        assert (await verify_audit(app_engine, tenant, right)).ok
    # Beside another key, as current or retired: one of them is the ledger's.
    other = MasterKey.generate()
    for keyring in (MasterKeyring(RIGHT, (other,)), MasterKeyring(other, (RIGHT,))):
        tenant = f"wk7{keyring.current.key_id[-4:]}"
        await write_events(app_engine, [make_event.payment(tenant, "pay_1")], keyring=keyring)
        assert (await verify_audit(app_engine, tenant, keyring)).ok


async def test_a_chain_ending_unkeyed_is_extended_only_under_a_key_the_ledger_knows(
    app_engine: AsyncEngine, owner_engine: AsyncEngine, make_event: EventFactory
) -> None:
    """A chain whose newest row is unkeyed (the version before keyed chains wrote it)
    names no key to check against: the ledger's record of keys is asked, as for a chain
    not begun."""
    from tests.ledger.test_migrations import _write_unkeyed

    right = MasterKeyring(RIGHT)
    await write_events(app_engine, [make_event.payment("wk8a", "pay_1")], keyring=right)
    await _write_unkeyed(owner_engine, "wk8", 1)
    await _refused(
        app_engine, [make_event.payment("wk8", "pay_1")], MasterKeyring(MasterKey.generate())
    )
    await write_events(
        app_engine, [make_event.payment("wk8", "pay_1")], keyring=MasterKeyring(RIGHT)
    )


async def test_a_fresh_ledger_takes_the_first_key_and_refuses_another(
    fresh_ledger: Ledger, make_event: EventFactory
) -> None:
    first, other = MasterKeyring(MasterKey.generate()), MasterKeyring(MasterKey.generate())
    await write_events(fresh_ledger.app, [make_event.payment("f1", "pay_1")], keyring=first)
    await _refused(fresh_ledger.app, [make_event.payment("f2", "pay_1")], other)
    await write_events(fresh_ledger.app, [make_event.payment("f2", "pay_1")], keyring=first)
    assert (await verify_audit(fresh_ledger.app, "f2", first)).ok


async def test_a_worker_on_the_new_key_alone_writes_on_after_a_recorded_rotation(
    app_engine: AsyncEngine, owner_engine: AsyncEngine, make_event: EventFactory
) -> None:
    """The documented procedure (README "Keys"): new key current, old one retired, `keys
    rotate` (recording the old key's retirement), then the old key dropped from the
    workers. A tenant not written since still has its newest row under the old key: a
    worker holding the new key alone must still write it (passes today; a fix for the
    test above must keep it so)."""
    old = MasterKeyring(RIGHT)
    await write_events(app_engine, [make_event.payment("wk2", "pay_1")], keyring=old)
    rotated = old.rotated_to(MasterKey.generate())
    await _retire(owner_engine, ["wk2"], rotated)
    new_only = MasterKeyring(rotated.current)
    await write_events(app_engine, [make_event.payment("wk2", "pay_2")], keyring=new_only)
    assert (await verify_audit(app_engine, "wk2", rotated)).ok
    # ... and begins new tenants' chains.
    await write_events(app_engine, [make_event.payment("wk9", "pay_1")], keyring=new_only)
    assert (await verify_audit(app_engine, "wk9", new_only)).ok


@pytest.mark.parametrize("customers", [True, False], ids=["with-data-keys", "no-data-keys"])
async def test_every_step_of_the_documented_rotation_begins_new_chains(
    fresh_ledger: Ledger, make_event: EventFactory, customers: bool
) -> None:
    """README "Rotating the master key", a new tenant at each step: 0. old key current,
    new one retired; 1. new key current, old one retired; 2. `keys rotate` (data keys
    re-wrapped, retirements recorded); 3. the new key alone. With no customer (no data
    key to re-wrap) and no write between 1 and 3, only `keys rotate`'s record makes the
    new key one the ledger has seen."""
    old, new = MasterKey.generate(), MasterKey.generate()

    def batch(tenant: str) -> list:  # type: ignore[type-arg]
        events = [make_event.payment(tenant, "pay_1")]
        return [make_event.customer(tenant, "cus_1"), *events] if customers else events

    await write_events(fresh_ledger.app, batch("r0"), keyring=MasterKeyring(old))
    step0 = MasterKeyring(old, (new,))
    await write_events(fresh_ledger.app, batch("r1"), keyring=step0)
    step1 = MasterKeyring(new, (old,))
    if customers:
        await write_events(fresh_ledger.app, batch("r2"), keyring=step1)
    tenants = ["r0", "r1", "r2"] if customers else ["r0", "r1"]
    await rotate_master_key(fresh_ledger.app, step1, tenants)
    await _retire(fresh_ledger.owner, tenants, step1)
    step3 = MasterKeyring(new)
    await write_events(fresh_ledger.app, batch("r3"), keyring=step3)
    for tenant in (*tenants, "r3"):
        result = await verify_audit(fresh_ledger.app, tenant, step1)
        assert result.ok, (tenant, result.problems)
    # The old key alone is still one the ledger has seen (a rollback), another is not.
    await write_events(fresh_ledger.app, batch("r4"), keyring=MasterKeyring(old))
    await _refused(fresh_ledger.app, batch("r5"), MasterKeyring(MasterKey.generate()))


async def test_rewrapped_data_keys_make_the_new_key_known(
    fresh_ledger: Ledger, make_event: EventFactory
) -> None:
    """The re-wrap alone (before `keys rotate` records anything) makes the new key one the
    ledger has seen: the data keys are under it."""
    old, new = MasterKey.generate(), MasterKey.generate()
    await write_events(
        fresh_ledger.app, [make_event.customer("rw1", "cus_1")], keyring=MasterKeyring(old)
    )
    assert await rotate_master_key(fresh_ledger.app, MasterKeyring(new, (old,)), ["rw1"]) == 1
    await write_events(
        fresh_ledger.app, [make_event.payment("rw2", "pay_1")], keyring=MasterKeyring(new)
    )
    async with fresh_ledger.owner.connect() as conn:
        seen = (
            await conn.execute(text("SELECT tenant_id, key_id FROM master_keys_seen ORDER BY 1, 2"))
        ).all()
    assert sorted(seen) == sorted([("rw1", old.key_id), ("rw1", new.key_id), ("rw2", new.key_id)])


async def test_the_app_role_reads_its_tenants_keys_seen_and_writes_none(
    app_engine: AsyncEngine, make_event: EventFactory
) -> None:
    """It may ask the owner's function, read its own tenant's rows, and nothing else:
    recording a key would let a worker on the wrong key vouch for it."""
    right = MasterKeyring(RIGHT)
    await write_events(app_engine, [make_event.payment("wk10", "pay_1")], keyring=right)
    async with tenant_session(app_engine, "wk10") as s:
        rows = (await s.execute(text("SELECT tenant_id, key_id FROM master_keys_seen"))).all()
        assert [tuple(r) for r in rows] == [("wk10", RIGHT.key_id)]
    for statement in (
        "INSERT INTO master_keys_seen (tenant_id, key_id) VALUES ('wk10', 'mk-0000000000000000')",
        "UPDATE master_keys_seen SET key_id = 'mk-0000000000000000'",
        "DELETE FROM master_keys_seen",
    ):
        with pytest.raises(Exception, match="permission denied"):
            async with tenant_session(app_engine, "wk10") as s:
                await s.execute(text(statement))
    async with tenant_session(app_engine, "wk10") as s:
        may = await s.execute(
            text(
                "SELECT has_function_privilege('master_keys_seen_record()', 'EXECUTE'), "
                "has_function_privilege("
                "'ledger_master_key_known(text, text[], boolean)', 'EXECUTE')"
            )
        )
        assert tuple(may.one()) == (False, True)
