"""`paystream doctor` against a deployment: it checks what the ledger sink needs on its
first batch, which it would otherwise only find out there (and stall)."""

from __future__ import annotations

import base64

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from paystream.doctor import CheckFailed, check_ledger_ready
from paystream.ledger import write_events
from paystream.settings import load_settings
from paystream.tenancy.crypto import MasterKey, MasterKeyring
from tests.ledger.factories import EventFactory, LedgerDb

KEY = base64.b64encode(bytes(range(32))).decode()


async def test_a_ready_ledger_passes(ledger_db: LedgerDb) -> None:
    password = make_url(ledger_db.app_url).password or ""
    settings = load_settings(
        database_url=ledger_db.owner_url, db_app_password=password, master_key=KEY
    )
    figure = await check_ledger_ready(settings)
    assert "paystream_app logs in under RLS" in figure


async def test_workers_given_only_the_app_role_s_url_pass(ledger_db: LedgerDb) -> None:
    """No owner credentials: the revision is read as paystream_app (granted since 0005);
    the data keys' master keys, which RLS shows it one tenant at a time, are not checked."""
    settings = load_settings(database_url=ledger_db.app_url, db_app_password=None, master_key=KEY)
    figure = await check_ledger_ready(settings)
    assert "paystream_app logs in under RLS" in figure and "not checked" in figure


async def test_an_owner_url_without_the_app_password_is_refused(ledger_db: LedgerDb) -> None:
    from paystream.errors import ConfigurationError
    from paystream.ledger.migrate import worker_database_url

    with pytest.raises(ConfigurationError, match="PAYSTREAM_DB_APP_PASSWORD"):
        worker_database_url(ledger_db.owner_url, None)
    assert worker_database_url(ledger_db.app_url, None) == ledger_db.app_url
    derived = make_url(worker_database_url(ledger_db.owner_url, "pw"))
    assert (derived.username, derived.password) == ("paystream_app", "pw")


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        ({"db_app_password": None}, "or give the owner's with PAYSTREAM_DB_APP_PASSWORD"),
        ({"db_app_password": "wrong"}, "as paystream_app"),
        ({"master_key": None}, "PAYSTREAM_MASTER_KEY"),
    ],
)
async def test_what_would_stall_the_sink_fails_the_check(
    ledger_db: LedgerDb, overrides: dict[str, object], says: str
) -> None:
    password = make_url(ledger_db.app_url).password or ""
    values: dict[str, object] = {
        "database_url": ledger_db.owner_url,
        "db_app_password": password,
        "master_key": KEY,
        **overrides,
    }
    with pytest.raises(CheckFailed, match=says):
        await check_ledger_ready(load_settings(**values))


async def test_a_ledger_key_wrapped_under_a_master_key_not_held_fails_the_check(
    ledger_db: LedgerDb, app_engine: AsyncEngine, make_event: EventFactory
) -> None:
    """The sink could not unwrap that tenant's data keys and would retry its first batch
    for ever. (Last in this module: it leaves such a key behind.)"""
    gone = MasterKey.generate()
    await write_events(
        app_engine, [make_event.customer("dk", "cus_1")], keyring=MasterKeyring(gone)
    )
    password = make_url(ledger_db.app_url).password or ""
    settings = load_settings(
        database_url=ledger_db.owner_url, db_app_password=password, master_key=KEY
    )
    with pytest.raises(CheckFailed, match=gone.key_id):
        await check_ledger_ready(settings)
