"""A ledger holding one tenant, its rotation recorded before migration 0012 (so no `*`
row: the backfill saw only the tenant's own rows under the old key): a worker on a wrong
key must not extend the tenant's chain past the retired key. "A ledger that has seen no
key" was taken as "no other tenant's row", and that write, once in, had the trigger
record the wrong key, which then began new tenants' chains (review h71k)."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from paystream.ledger import write_events
from paystream.ledger.audit import record_retirements
from paystream.ledger.sink import FailureKind, classify_failure
from paystream.tenancy.crypto import MasterKey, MasterKeyring
from tests.ledger.factories import EventFactory
from tests.ledger.test_wrong_master_key import Ledger, fresh_ledger  # noqa: F401


async def test_a_one_tenant_ledger_rotated_before_0012_refuses_a_wrong_key(
    fresh_ledger: Ledger,  # noqa: F811
) -> None:
    make = EventFactory()
    old, new = MasterKey.generate(), MasterKey.generate()
    await write_events(
        fresh_ledger.app, [make.payment("solo", "pay_1")], keyring=MasterKeyring(old)
    )
    async with AsyncSession(fresh_ledger.owner) as session, session.begin():
        await record_retirements(session, ["solo"], MasterKeyring(new, (old,)))
        # As a rotation recorded before 0012: its backfill found the tenant's rows only.
        await session.execute(text("DELETE FROM master_keys_seen WHERE tenant_id = '*'"))
    wrong = MasterKeyring(MasterKey.generate())
    with pytest.raises(Exception) as refused:
        await write_events(fresh_ledger.app, [make.payment("solo", "pay_2")], keyring=wrong)
    assert classify_failure(refused.value) == FailureKind.CONFIG
