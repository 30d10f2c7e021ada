"""After a master key rotation, a worker on the wrong PAYSTREAM_MASTER_KEY (another
environment's) must not write a tenant idle since the rotation, whose chain ends under the
retired key (review h71i). Let past that chain end with any keyring, it wrapped the
tenant's new customers' data keys under the wrong key, and, the trigger of migration 0012
recording that key as seen, began new tenants' chains under it from then on."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from paystream.ledger import create_engine, rotate_master_key, tenant_session, write_events
from paystream.ledger.audit import record_retirements
from paystream.ledger.migrate import app_database_url, upgrade
from paystream.ledger.sink import FailureKind, classify_failure
from paystream.tenancy.crypto import MasterKey, MasterKeyring
from tests.fixtures.postgres import fresh_database
from tests.ledger.factories import EventFactory, LedgerDb


@dataclass
class Rotated:
    app: AsyncEngine
    owner: AsyncEngine
    old: MasterKey
    new: MasterKey


@pytest_asyncio.fixture
async def rotated(ledger_database_url: str, ledger_db: LedgerDb) -> AsyncIterator[Rotated]:
    """A ledger of its own: tenants 'idle' and 'busy' written under the old key, then the
    documented rotation (new key current + old retired, `keys rotate`: re-wrap and
    retirements recorded); 'busy' written since under the new key alone (step 3)."""
    url = await fresh_database(ledger_database_url, prefix="h71i")
    password = make_url(ledger_db.app_url).password or ""
    await upgrade(url, app_password=password)
    app, owner = create_engine(app_database_url(url, password)), create_engine(url)
    make = EventFactory()
    old, new = MasterKey.generate(), MasterKey.generate()
    try:
        for tenant in ("idle", "busy"):
            await write_events(
                app,
                [make.customer(tenant, "cus_1"), make.payment(tenant, "pay_1")],
                keyring=MasterKeyring(old),
            )
        step1 = MasterKeyring(new, (old,))
        await rotate_master_key(app, step1, ["idle", "busy"])
        async with AsyncSession(owner) as session, session.begin():
            await record_retirements(session, ["idle", "busy"], step1)
        await write_events(app, [make.payment("busy", "pay_2")], keyring=MasterKeyring(new))
        yield Rotated(app, owner, old, new)
    finally:
        await app.dispose()
        await owner.dispose()


async def _refused(engine: AsyncEngine, events: list, keyring: MasterKeyring) -> None:  # type: ignore[type-arg]
    with pytest.raises(Exception) as refused:
        await write_events(engine, events, keyring=keyring)
    assert classify_failure(refused.value) == FailureKind.CONFIG, refused.value


async def _keys_of(engine: AsyncEngine, tenant: str) -> tuple[set[str], set[str]]:
    async with tenant_session(engine, tenant) as s:
        audit = set((await s.scalars(text("SELECT DISTINCT key_id FROM audit_log"))).all())
        data = set((await s.scalars(text("SELECT DISTINCT master_key_id FROM data_keys"))).all())
    return audit, data


async def test_a_wrong_key_does_not_extend_a_chain_ending_under_a_retired_key(
    rotated: Rotated,
) -> None:
    """'idle' has not been written since the rotation: its chain ends under the retired
    old key. A worker on a key the ledger has never seen writes it (a new customer: its
    PII data key wrapped under that key) instead of stalling as `config`."""
    make = EventFactory()
    wrong = MasterKeyring(MasterKey.generate())  # another environment's key
    batch = [make.customer("idle", "cus_2"), make.payment("idle", "pay_2")]
    await _refused(rotated.app, batch, wrong)
    audit, data = await _keys_of(rotated.app, "idle")
    assert wrong.current.key_id not in audit | data


async def test_that_write_does_not_let_the_wrong_key_begin_new_tenants_chains(
    rotated: Rotated,
) -> None:
    """6a32200's promise: a keyring holding no key the ledger has seen is refused a new
    tenant's chain. After the wrong key's write above got in, the trigger recorded it as
    'seen', and it begins every new tenant's chain."""
    make = EventFactory()
    wrong = MasterKeyring(MasterKey.generate())
    # First, a new tenant is refused (as 6a32200 means).
    await _refused(rotated.app, [make.payment("newco", "pay_1")], wrong)
    # The same worker's batch for the idle tenant (whatever becomes of it) ...
    with contextlib.suppress(Exception):
        await write_events(rotated.app, [make.payment("idle", "pay_3")], keyring=wrong)
    # ... must not change that.
    await _refused(rotated.app, [make.customer("newco", "cus_1")], wrong)
    audit, data = await _keys_of(rotated.app, "newco")
    assert not audit and not data


async def test_the_new_key_alone_still_writes_the_idle_tenant_and_new_ones(
    rotated: Rotated,
) -> None:
    """Guard for the fix: step 3 of the documented rotation (new key alone) goes on."""
    make = EventFactory()
    new_only = MasterKeyring(rotated.new)
    await write_events(rotated.app, [make.payment("idle", "pay_4")], keyring=new_only)
    await write_events(rotated.app, [make.payment("newco2", "pay_1")], keyring=new_only)
