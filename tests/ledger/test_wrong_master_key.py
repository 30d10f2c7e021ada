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
"""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from paystream.ledger import tenant_session, verify_audit, write_events
from paystream.ledger.sink import FailureKind, classify_failure
from paystream.tenancy.crypto import MasterKey, MasterKeyring
from tests.ledger.factories import EventFactory


async def test_a_keyring_that_cannot_verify_the_chain_does_not_extend_it(
    app_engine: AsyncEngine, make_event: EventFactory
) -> None:
    right = MasterKeyring(MasterKey.generate())
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


async def test_a_worker_on_the_new_key_alone_writes_on_after_a_recorded_rotation(
    app_engine: AsyncEngine, owner_engine: AsyncEngine, make_event: EventFactory
) -> None:
    """The documented procedure (README "Keys"): new key current, old one retired, `keys
    rotate` (recording the old key's retirement), then the old key dropped from the
    workers. A tenant not written since still has its newest row under the old key: a
    worker holding the new key alone must still write it (passes today; a fix for the
    test above must keep it so)."""
    from tests.ledger.test_audit import _retire

    old = MasterKeyring(MasterKey.generate())
    await write_events(app_engine, [make_event.payment("wk2", "pay_1")], keyring=old)
    rotated = old.rotated_to(MasterKey.generate())
    await _retire(owner_engine, ["wk2"], rotated)
    new_only = MasterKeyring(rotated.current)
    await write_events(app_engine, [make_event.payment("wk2", "pay_2")], keyring=new_only)
    assert (await verify_audit(app_engine, "wk2", rotated)).ok
