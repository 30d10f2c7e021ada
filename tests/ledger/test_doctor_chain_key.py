"""`paystream doctor` names a tenant's audit chain the sink will refuse to extend under the
master keys it holds (review h67n of h67l's `audit._chain_key_held`)."""

from __future__ import annotations

import base64

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from paystream.doctor import CheckFailed, check_ledger_ready
from paystream.ledger import write_events
from paystream.settings import Settings, load_settings
from paystream.tenancy.crypto import (
    MasterKey,
    MasterKeyring,
    UnknownMasterKeyError,
    keyring_from_settings,
)
from tests.ledger.factories import EventFactory, LedgerDb

KEY = base64.b64encode(bytes(range(32))).decode()


async def test_doctor_names_a_chain_the_sink_will_refuse_to_extend(
    ledger_db: LedgerDb, app_engine: AsyncEngine, make_event: EventFactory
) -> None:
    """A tenant with payments and no customers (no data key) whose chain ends under a key
    the workers do not hold: the sink stalls on its next batch (config, for ever), and
    `paystream doctor`, which looked only at the data keys' master keys, passed."""
    gone = MasterKeyring(MasterKey.generate())
    await write_events(app_engine, [make_event.payment("po", "pay_1")], keyring=gone)
    password = make_url(ledger_db.app_url).password or ""
    settings = load_settings(
        database_url=ledger_db.owner_url, db_app_password=password, master_key=KEY
    )
    held = keyring_from_settings(settings)
    with pytest.raises(UnknownMasterKeyError):  # the sink's next batch of the tenant
        await write_events(app_engine, [make_event.payment("po", "pay_2")], keyring=held)
    with pytest.raises(CheckFailed, match=gone.current.key_id):
        await check_ledger_ready(settings)


async def test_doctor_names_a_keyring_the_ledger_has_never_seen(
    ledger_db: LedgerDb, app_engine: AsyncEngine, make_event: EventFactory
) -> None:
    """A worker on another environment's key, given the application role's URL alone (as
    the chart's workers are: the owner's checks of data keys and chain ends cannot run):
    every chain it would begin (a new tenant) or extend past a retired key stalls the
    sink (`config`, review h71f). Doctor says so before the first such batch."""
    right = MasterKeyring(MasterKey.generate())
    await write_events(app_engine, [make_event.payment("seen", "pay_1")], keyring=right)

    def settings(key: MasterKey) -> Settings:
        encoded = base64.b64encode(key.key).decode()
        return load_settings(database_url=ledger_db.app_url, master_key=encoded)

    wrong = settings(MasterKey.generate())
    with pytest.raises(UnknownMasterKeyError):  # the sink's first batch of a new tenant
        await write_events(
            app_engine, [make_event.payment("new", "pay_1")], keyring=keyring_from_settings(wrong)
        )
    with pytest.raises(CheckFailed, match="has seen none of this keyring's master keys"):
        await check_ledger_ready(wrong)
    assert "not checked" in await check_ledger_ready(settings(right.current))
