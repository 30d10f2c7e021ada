"""The ledger's operator commands (`keys rotate`, `audit verify`, `erase`, `migrate`)
stopped by Ctrl-C or SIGTERM at an awkward moment say so and exit 130, and run again
finish the job (review h61d: Click's "Aborted!" and exit 1, which `audit verify` uses for
a broken chain, or death by SIGTERM without a word)."""

from __future__ import annotations

import asyncio
import base64
import signal
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from paystream.ledger import export_customer, tenant_session, write_events
from paystream.ledger.models import Customer, DataKey
from paystream.tenancy.crypto import MasterKey, MasterKeyring
from paystream.tenancy.models import Tenant
from tests.cli_signals import Cli, run
from tests.fixtures.postgres import fresh_database
from tests.ledger.factories import EventFactory, LedgerDb, forget_master_keys

pytestmark = [pytest.mark.asyncio(loop_scope="session")]

SIGS = [signal.SIGINT, signal.SIGTERM]


def _b64(key: MasterKey) -> str:
    return base64.b64encode(key.key).decode()


def _slow(module: str, name: str, marker: str, seconds: float = 0.3) -> str:
    """A prelude slowing ``module.name`` (sync), saying ``marker`` on stderr each call."""
    return f"""
import sys, time, {module} as _m
_orig = _m.{name}
def _slowed(*a, **k):
    sys.stderr.write("{marker}\\n"); sys.stderr.flush(); time.sleep({seconds})
    return _orig(*a, **k)
_m.{name} = _slowed
"""


def _slow_async(module: str, obj: str, name: str, marker: str, seconds: float = 3) -> str:
    """A prelude: ``module.obj.name`` (async) runs, then says ``marker`` and waits."""
    return f"""
import sys, asyncio, {module} as _m
_orig = _m.{obj}.{name}
async def _slowed(*a, **k):
    r = await _orig(*a, **k)
    sys.stderr.write("{marker}\\n"); sys.stderr.flush(); await asyncio.sleep({seconds})
    return r
_m.{obj}.{name} = _slowed
"""


def _ledger_env(ledger_db: LedgerDb, key: MasterKey) -> dict[str, str]:
    """The CLI's environment: the owner's URL, the app role's password, the master key."""
    return {
        "PAYSTREAM_MASTER_KEY": _b64(key),
        "DATABASE_URL": ledger_db.owner_url,
        "PAYSTREAM_DB_APP_PASSWORD": make_url(ledger_db.app_url).password or "",
    }


async def _stopped_at(cli: Cli, marker: str, sig: int) -> int:
    """``cli``'s exit status, sent ``sig`` once its output shows ``marker``."""
    await asyncio.to_thread(cli.wait_for, marker)
    cli.signal(sig)
    return await asyncio.to_thread(cli.finish)


async def _key_ids(engine: AsyncEngine, tenant: str) -> set[str]:
    async with tenant_session(engine, tenant) as s:
        return {k.master_key_id for k in await s.scalars(select(DataKey))}


@pytest.mark.parametrize("sig", SIGS)
async def test_keys_rotate_interrupted_mid_ledger(
    deployment_factory: Any,
    ledger_db: LedgerDb,
    app_engine: AsyncEngine,
    make_event: EventFactory,
    sig: int,
) -> None:
    dep = await deployment_factory()
    old, new = MasterKey.generate(), MasterKey.generate()
    tenants = [f"kr{sig}_{i}" for i in range(3)]
    await dep.add_tenants(*(Tenant(tenant_id=t) for t in tenants))
    for t in tenants:
        await write_events(
            app_engine,
            [make_event.customer(t, f"cus_{i}") for i in range(2)],
            keyring=MasterKeyring(old),
        )
    env = {
        **dep.env,
        "PAYSTREAM_MASTER_KEY": _b64(new),
        "PAYSTREAM_RETIRED_MASTER_KEYS": _b64(old),
        "DATABASE_URL": ledger_db.owner_url,
        "PAYSTREAM_DB_APP_PASSWORD": make_url(ledger_db.app_url).password or "",
    }
    prelude = _slow("paystream.ledger.keys", "rewrap_data_key", "REWRAP")
    cli = Cli(env, "keys", "rotate", prelude=prelude)
    await asyncio.to_thread(cli.wait_for, "REWRAP\nREWRAP\nREWRAP")  # mid second tenant
    cli.signal(sig)
    status = await asyncio.to_thread(cli.finish)
    states = {t: await _key_ids(app_engine, t) for t in tenants}
    for t, ids in states.items():
        assert len(ids) == 1, f"{t} half re-wrapped: {ids}"
    again = run(env, "keys", "rotate")
    assert not any(t in again.stdout + again.stderr for t in tenants), again.stderr
    for t in tenants:
        assert await _key_ids(app_engine, t) == {new.key_id}
        assert "cus_0@example.com" in str(
            await export_customer(app_engine, MasterKeyring(new), t, "cus_0")
        )
    assert "Traceback" not in cli.text
    assert status == 130, cli.text


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def verified_chains(ledger_db: LedgerDb, app_engine: AsyncEngine) -> dict[str, str]:
    """For each of SIGS a tenant ``av<sig>`` with five events, its audit chain verified
    whole by one `audit verify` (an interrupted check below cannot read as the broken
    chain exit 1 means); and the CLI's environment."""
    key, make_event = MasterKey.generate(), EventFactory()
    tenants = [f"av{sig}" for sig in SIGS]
    # A key of its own: the ledger must have seen none yet. conftest's autouse fixture
    # forgets them before each test, but after this module-scoped one: keys rotate's
    # cases, earlier in the module, left theirs (the writer refused this key).
    await forget_master_keys(ledger_db.owner_url)
    for tenant in tenants:
        await write_events(
            app_engine,
            [make_event.customer(tenant, f"cus_{i}") for i in range(5)],
            keyring=MasterKeyring(key),
        )
    env = _ledger_env(ledger_db, key)
    ok = run(env, "audit", "verify", *(a for t in tenants for a in ("--tenant", t)))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    return env


@pytest.mark.parametrize("sig", SIGS)
async def test_audit_verify_interrupted(verified_chains: dict[str, str], sig: int) -> None:
    tenant = f"av{sig}"
    prelude = _slow("paystream.ledger.audit", "chain_hash", "HASH")
    cli = Cli(verified_chains, "audit", "verify", "--tenant", tenant, prelude=prelude)
    status = await _stopped_at(cli, "HASH\nHASH", sig)
    assert "Traceback" not in cli.text
    # Exit 1 is documented as "a row is missing or altered": an interrupted check must
    # not read as a broken chain to the script that runs it.
    assert status == 130, cli.text


@pytest.mark.parametrize("sig", SIGS)
async def test_erase_interrupted_inside_its_transaction(
    ledger_db: LedgerDb, app_engine: AsyncEngine, make_event: EventFactory, sig: int
) -> None:
    key = MasterKey.generate()
    tenant = f"er{sig}"
    await write_events(
        app_engine, [make_event.customer(tenant, "cus_x")], keyring=MasterKeyring(key)
    )
    env = _ledger_env(ledger_db, key)
    # Stopped after the data key's deletion, before the row and audit entry.
    prelude = _slow_async("paystream.ledger.privacy", "SqlKeyStore", "delete", "DELETED")
    cli = Cli(env, "erase", "--tenant", tenant, "--customer", "cus_x", "--yes", prelude=prelude)
    status = await _stopped_at(cli, "DELETED", sig)
    async with tenant_session(app_engine, tenant) as s:
        erased = await s.scalar(select(Customer.erased_at).where(Customer.customer_id == "cus_x"))
        keys = (await s.scalars(select(DataKey.key_ref))).all()
    assert (erased is None) == ("customer/cus_x" in keys), "key gone, row not erased (or so)"
    again = run(env, "erase", "--tenant", tenant, "--customer", "cus_x", "--yes")
    assert again.returncode == 0
    verify = run(env, "audit", "verify", "--tenant", tenant)
    assert verify.returncode == 0
    assert "Traceback" not in cli.text
    assert status == 130, cli.text


@pytest.mark.parametrize("sig", SIGS)
async def test_migrate_interrupted_inside_its_transaction(
    ledger_database_url: str, sig: int
) -> None:
    url = await fresh_database(ledger_database_url, prefix=f"h61dmig{sig}")
    env = {"DATABASE_URL": url, "PAYSTREAM_DB_APP_PASSWORD": "pw-h61d"}
    # Stopped inside the migration's transaction: schema done, the password next.
    prelude = """
import sys, asyncio, paystream.ledger.migrate as _m
_orig = _m.set_app_password
async def _slowed(*a, **k):
    sys.stderr.write("MIGRATED\\n"); sys.stderr.flush(); await asyncio.sleep(3)
    return await _orig(*a, **k)
_m.set_app_password = _slowed
"""
    cli = Cli(env, "migrate", prelude=prelude)
    status = await _stopped_at(cli, "MIGRATED", sig)
    from paystream.ledger.migrate import current, head

    assert await current(url) in (None, head())
    again = run(env, "migrate")
    assert again.returncode == 0 and await current(url) == head()
    assert "Traceback" not in cli.text
    assert status == 130, cli.text
