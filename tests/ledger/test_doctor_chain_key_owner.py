"""Doctor's check of audit chains ending under a master key the workers neither hold nor
retired (review h67t of h67n): an owner held to the tenant policy saw no audit_log row,
and another tenant's retirement (or `keys rotate`'s marker) counted for every tenant."""

from __future__ import annotations

import base64
import secrets

import pytest

from paystream.doctor import CheckFailed, check_ledger_ready
from paystream.ledger import create_engine, write_events
from paystream.ledger.migrate import app_database_url, upgrade
from paystream.settings import load_settings
from paystream.tenancy.crypto import (
    MasterKey,
    MasterKeyring,
    UnknownMasterKeyError,
    keyring_from_settings,
)
from paystream.tenancy.rotation import record_audit_retirements
from tests.fixtures.postgres import fresh_database
from tests.ledger.factories import EventFactory
from tests.ledger.test_owner_checks import ordinary_owner  # noqa: F401 (fixture)

KEY = base64.b64encode(bytes(range(32))).decode()


async def test_doctor_names_the_chain_when_the_owner_is_an_ordinary_role(
    ordinary_owner: str,  # noqa: F811
) -> None:
    """Managed PostgreSQL: the schema owner is neither superuser nor BYPASSRLS (what
    migrations 0003/0004 add owner policies for). audit_log is FORCE ROW LEVEL SECURITY
    with only the tenant policy, so the owner's `audit_heads JOIN audit_log` returns no
    row at all: doctor passes while the sink stalls on the tenant."""
    password = secrets.token_hex(12)
    await upgrade(ordinary_owner, app_password=password)
    app = create_engine(app_database_url(ordinary_owner, password))
    make = EventFactory()
    try:
        gone = MasterKeyring(MasterKey.generate())
        await write_events(app, [make.payment("po", "pay_1")], keyring=gone)
        settings = load_settings(
            database_url=ordinary_owner, db_app_password=password, master_key=KEY
        )
        with pytest.raises(UnknownMasterKeyError):  # the sink's next batch of the tenant
            await write_events(
                app, [make.payment("po", "pay_2")], keyring=keyring_from_settings(settings)
            )
        with pytest.raises(CheckFailed, match=gone.current.key_id):
            await check_ledger_ready(settings)
    finally:
        await app.dispose()


async def test_doctor_holds_each_chain_to_its_own_tenants_retirement(
    ledger_database_url: str,
) -> None:
    """`keys rotate` retires K: a marker row (tenant "*") and one row per tenant it saw.
    A tenant first written under K after that (a worker still on the old key during the
    roll-out) has no retirement of its own; K then dropped, the sink refuses its chain
    (it reads retirements under the tenant's RLS: only its own rows). doctor's NOT EXISTS
    matches any tenant's row for K, the marker included, and passes."""
    url = await fresh_database(ledger_database_url, prefix="h67t")
    password = secrets.token_hex(12)
    await upgrade(url, app_password=password)
    app = create_engine(app_database_url(url, password))
    make = EventFactory()
    try:
        old = MasterKeyring(MasterKey.generate())
        new = MasterKey.from_base64(KEY)
        await write_events(app, [make.payment("early", "pay_1")], keyring=old)
        # `paystream keys rotate` (new current, old retired): its audit records.
        await record_audit_retirements(url, old.rotated_to(new), [])
        # A straggler worker, still on the old key, writes a new tenant's first rows.
        await write_events(app, [make.payment("late", "pay_1")], keyring=old)
        # The old key dropped from the workers.
        settings = load_settings(database_url=url, db_app_password=password, master_key=KEY)
        held = keyring_from_settings(settings)
        await write_events(app, [make.payment("early", "pay_2")], keyring=held)  # (retired: ok)
        with pytest.raises(UnknownMasterKeyError):
            await write_events(app, [make.payment("late", "pay_2")], keyring=held)
        with pytest.raises(CheckFailed, match=old.current.key_id):
            await check_ledger_ready(settings)
    finally:
        await app.dispose()
