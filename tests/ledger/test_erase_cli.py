"""`paystream erase`: an erasure the database refused can be made again (review finding:
the sink logged "erase them again once the cause is fixed", but nothing could, as the
pipeline refuses a second `customer.erase`, and the data key stayed for good)."""

from __future__ import annotations

import asyncio
import base64
import uuid
from typing import Any

from click.testing import CliRunner
from sqlalchemy import select
from sqlalchemy.engine import make_url

from paystream.ledger import (
    create_engine,
    export_customer,
    tenant_session,
    verify_audit,
    write_events,
)
from paystream.ledger.cli import erase_command
from paystream.ledger.models import Customer, DataKey
from paystream.tenancy.crypto import MasterKeyring
from tests.ledger.factories import EventFactory, LedgerDb


def _as_app(ledger_db: LedgerDb, work: Any) -> Any:
    async def run() -> Any:
        engine = create_engine(ledger_db.app_url)
        try:
            return await work(engine)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def test_an_operator_erases_a_customer_in_the_ledger(
    ledger_db: LedgerDb, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    t = f"t{uuid.uuid4().hex[:8]}"
    customer = make_event.customer(t, "cus_1", email="ann@example.com")
    _as_app(ledger_db, lambda e: write_events(e, [customer], keyring=keyring))

    def exported() -> str:
        return str(_as_app(ledger_db, lambda e: export_customer(e, keyring, t, "cus_1")))

    async def keys(engine: Any) -> list[Any]:
        async with tenant_session(engine, t) as session:
            return list((await session.execute(select(DataKey))).all())

    env = {
        "DATABASE_URL": ledger_db.owner_url,
        "PAYSTREAM_DB_APP_PASSWORD": make_url(ledger_db.app_url).password,
        "PAYSTREAM_MASTER_KEY": base64.b64encode(keyring.current.key).decode(),
    }
    runner = CliRunner()
    args = ["--tenant", t, "--customer", "cus_1"]
    asked = runner.invoke(erase_command, args, env=env, input="n\n")
    assert asked.exit_code == 1 and "cannot be read again" in asked.output
    assert "ann@example.com" in exported()
    done = runner.invoke(erase_command, [*args, "--yes"], env=env)
    assert done.exit_code == 0 and "erased (data key deleted)" in done.output, done.output
    assert _as_app(ledger_db, keys) == []
    assert "ann@example.com" not in exported()
    again = runner.invoke(erase_command, [*args, "--yes"], env=env)
    assert again.exit_code == 0 and "already erased" in again.output
    assert _as_app(ledger_db, lambda e: verify_audit(e, t, keyring)).ok


def test_a_mistyped_customer_or_tenant_is_refused(
    ledger_db: LedgerDb, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    """It left a tombstone under the mistyped id for good, a chain under a mistyped
    tenant, and the customer meant as it was, exiting 0 (review finding)."""
    t = f"t{uuid.uuid4().hex[:8]}"
    customer = make_event.customer(t, "cus_1", email="ann@example.com")
    _as_app(ledger_db, lambda e: write_events(e, [customer], keyring=keyring))
    env = {
        "DATABASE_URL": ledger_db.owner_url,
        "PAYSTREAM_DB_APP_PASSWORD": make_url(ledger_db.app_url).password,
        "PAYSTREAM_MASTER_KEY": base64.b64encode(keyring.current.key).decode(),
    }
    for tenant, customer_id in ((t, "cus_l"), ("typo-tenant", "cus_1")):
        args = ["--tenant", tenant, "--customer", customer_id, "--yes"]
        refused = CliRunner().invoke(erase_command, args, env=env)
        assert refused.exit_code == 1 and "nothing erased" in refused.output, refused.output

    async def customers(engine: Any) -> list[Any]:
        async with tenant_session(engine, t) as session:
            return list((await session.execute(select(Customer.customer_id))).scalars())

    assert _as_app(ledger_db, customers) == ["cus_1"]
    # Ahead of the customer's events (the sink behind): on purpose, a tombstone.
    args = ["--tenant", t, "--customer", "cus_2", "--yes", "--ahead"]
    ahead = CliRunner().invoke(erase_command, args, env=env)
    assert ahead.exit_code == 0 and "erased" in ahead.output, ahead.output
    assert _as_app(ledger_db, customers) == ["cus_1", "cus_2"]
    assert "ann@example.com" in str(
        _as_app(ledger_db, lambda e: export_customer(e, keyring, t, "cus_1"))
    )
