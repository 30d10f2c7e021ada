"""`paystream keys rotate`: every tenant secret and ledger data key moves to the new
master key; what was encrypted is never rewritten, and a second run does nothing."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from paystream.cli import cli
from paystream.ledger import export_customer, tenant_session, write_events
from paystream.ledger.migrate import head, upgrade
from paystream.ledger.models import DataKey
from paystream.settings import load_settings
from paystream.tenancy.crypto import CryptoError, MasterKey, MasterKeyring, keyring_from_settings
from paystream.tenancy.models import Tenant
from paystream.tenancy.registry import put_tenant, registered_tenant
from paystream.tenancy.secrets import open_secret, reseal_secret, seal_secret
from tests.fixtures.postgres import fresh_database
from tests.ledger.factories import EventFactory, LedgerDb


def _b64(key: MasterKey) -> str:
    return base64.b64encode(key.key).decode()


def _rotation_env(
    env: dict[str, str], ledger_db: LedgerDb, new: MasterKey, old: MasterKey
) -> dict[str, str]:
    """A rotation to ``new`` from ``old``, as the ledger's owner with the app password."""
    return {
        **env,
        "PAYSTREAM_MASTER_KEY": _b64(new),
        "PAYSTREAM_RETIRED_MASTER_KEYS": _b64(old),
        "DATABASE_URL": ledger_db.owner_url,
        "PAYSTREAM_DB_APP_PASSWORD": make_url(ledger_db.app_url).password or "",
    }


def test_retired_keys_from_settings_open_what_they_sealed_until_resealed() -> None:
    old, new = MasterKey.generate(), MasterKey.generate()
    sealed = seal_secret(MasterKeyring(old), "acme", "api_key", "sk_test_1")
    settings = load_settings(master_key=_b64(new), retired_master_keys=f" {_b64(old)},")
    keyring = keyring_from_settings(settings)
    assert keyring.current == new and keyring.retired == (old,)
    assert open_secret(keyring, "acme", "api_key", sealed).get_secret_value() == "sk_test_1"
    resealed = reseal_secret(keyring, "acme", "api_key", sealed)
    assert resealed.split(".")[-1] == sealed.split(".")[-1]  # the ciphertext is unchanged
    assert open_secret(MasterKeyring(new), "acme", "api_key", resealed).get_secret_value() == (
        "sk_test_1"
    )
    assert reseal_secret(keyring, "acme", "api_key", resealed) == resealed
    with pytest.raises(CryptoError, match="not in the keyring"):
        open_secret(MasterKeyring(new), "acme", "api_key", sealed)


async def _ledger_key_ids(engine: AsyncEngine, tenant: str) -> set[str]:
    async with tenant_session(engine, tenant) as s:
        return {k.master_key_id for k in await s.scalars(select(DataKey))}


@pytest.mark.asyncio(loop_scope="session")
async def test_keys_rotate_moves_registry_secrets_and_ledger_keys_to_the_new_key(
    deployment_factory: Any, ledger_db: LedgerDb, app_engine: AsyncEngine, make_event: EventFactory
) -> None:
    dep = await deployment_factory()
    old, new = MasterKey.generate(), MasterKey.generate()
    tenant = "rot"
    sealed = seal_secret(MasterKeyring(old), tenant, "api_key", "sk_test_rot")
    await put_tenant(dep.settings, Tenant(tenant_id=tenant, secrets={"api_key": sealed}))
    await dep.add_tenants(Tenant(tenant_id="plain"))
    # A secret under a key nobody has any more: named, and it stops no other tenant.
    lost = seal_secret(MasterKeyring(MasterKey.generate()), "lost", "api_key", "sk_test_x")
    await put_tenant(dep.settings, Tenant(tenant_id="lost", secrets={"api_key": lost}))
    await write_events(
        app_engine,
        [make_event.customer(tenant, f"cus_{i}") for i in range(3)],
        keyring=MasterKeyring(old),
    )
    # A tenant no longer registered: its ledger keys are named, not silently left.
    await write_events(
        app_engine, [make_event.customer("gone", "cus_g")], keyring=MasterKeyring(old)
    )
    assert await _ledger_key_ids(app_engine, tenant) == {old.key_id}

    env = _rotation_env(dep.env, ledger_db, new, old)
    result = await asyncio.to_thread(CliRunner().invoke, cli, ["keys", "rotate"], env=env)
    assert "1 secret(s) of 1 tenant(s) re-sealed; 3 ledger data key(s) re-wrapped" in result.output
    # Not done while a secret stays unopenable: dropping the old key would lose it.
    assert result.exit_code == 1 and "error: lost/api_key:" in result.output, result.output
    assert "PAYSTREAM_RETIRED_MASTER_KEYS" in result.output
    assert "error: secrets still under a retired key: lost" in result.output
    assert "ledger data keys still under a retired key: gone (1)" in result.output
    assert "keep the retired key" in result.output
    await dep.produce(dep.settings.tenants_topic, (b'"lost"', None, None))  # removed

    registered = await registered_tenant(dep.settings, tenant)
    assert registered is not None
    assert (
        open_secret(
            MasterKeyring(new), tenant, "api_key", registered.secrets["api_key"]
        ).get_secret_value()
        == "sk_test_rot"
    )
    assert await _ledger_key_ids(app_engine, tenant) == {new.key_id}
    exported = await export_customer(app_engine, MasterKeyring(new), tenant, "cus_0")
    assert "cus_0@example.com" in str(exported)

    again = await asyncio.to_thread(
        CliRunner().invoke, cli, ["keys", "rotate", "--tenant", "gone"], env=env
    )
    assert again.exit_code == 0, again.output
    assert "0 secret(s) of 0 tenant(s) re-sealed; 1 ledger data key(s) re-wrapped" in again.output


@pytest.mark.asyncio(loop_scope="session")
async def test_keys_rotate_never_says_done_without_looking_at_the_ledger(
    deployment_factory: Any, ledger_db: LedgerDb, app_engine: AsyncEngine, make_event: EventFactory
) -> None:
    """Exit 0 tells the operator the retired key may go. Without the app password the
    ledger's keys cannot be re-wrapped, and without DATABASE_URL not even looked at: it
    used to print "ledger not touched" and exit 0 all the same."""
    dep = await deployment_factory()
    old, new = MasterKey.generate(), MasterKey.generate()
    await dep.add_tenants(Tenant(tenant_id="nopw"))
    await write_events(
        app_engine, [make_event.customer("nopw", "cus_1")], keyring=MasterKeyring(old)
    )
    keys = {"PAYSTREAM_MASTER_KEY": _b64(new), "PAYSTREAM_RETIRED_MASTER_KEYS": _b64(old)}
    env = {**dep.env, **keys, "DATABASE_URL": ledger_db.owner_url, "PAYSTREAM_DB_APP_PASSWORD": ""}
    result = await asyncio.to_thread(CliRunner().invoke, cli, ["keys", "rotate"], env=env)
    assert result.exit_code == 1, result.output
    assert "ledger data keys still under a retired key: " in result.output
    assert "nopw (1)" in result.output  # (beside other tests' tenants in this database)
    assert "set PAYSTREAM_DB_APP_PASSWORD" in result.output
    assert await _ledger_key_ids(app_engine, "nopw") == {old.key_id}

    no_db = {k: v for k, v in {**dep.env, **keys}.items() if k != "DATABASE_URL"}
    refused = await asyncio.to_thread(CliRunner().invoke, cli, ["keys", "rotate"], env=no_db)
    assert refused.exit_code == 1 and "--without-ledger" in refused.output, refused.output
    without = await asyncio.to_thread(
        CliRunner().invoke, cli, ["keys", "rotate", "--without-ledger"], env=no_db
    )
    assert without.exit_code == 0, without.output


@pytest.mark.asyncio(loop_scope="session")
async def test_keys_rotate_refuses_a_worker_s_app_role_url(
    deployment_factory: Any, ledger_db: LedgerDb, app_engine: AsyncEngine, make_event: EventFactory
) -> None:
    """Workers carry paystream_app's own URL (compose, chart). Run there, RLS showed the
    role no tenant's data keys: "none left under the retired key", exit 0, though the
    ledger still needed it."""
    dep = await deployment_factory()
    old, new = MasterKey.generate(), MasterKey.generate()
    await write_events(
        app_engine, [make_event.customer("appurl", "cus_1")], keyring=MasterKeyring(old)
    )
    env = {
        **dep.env,
        "PAYSTREAM_MASTER_KEY": _b64(new),
        "PAYSTREAM_RETIRED_MASTER_KEYS": _b64(old),
        "DATABASE_URL": ledger_db.app_url,
        "PAYSTREAM_DB_APP_PASSWORD": "",
    }
    result = await asyncio.to_thread(CliRunner().invoke, cli, ["keys", "rotate"], env=env)
    assert result.exit_code == 1, result.output
    assert "DATABASE_URL is paystream_app's" in result.output
    assert "re-sealed" not in result.output  # refused before touching anything
    assert await _ledger_key_ids(app_engine, "appurl") == {old.key_id}


@pytest.mark.asyncio(loop_scope="session")
async def test_keys_rotate_refuses_a_ledger_schema_not_migrated(
    deployment_factory: Any, ledger_database_url: str
) -> None:
    """Before migration 0003 an owner that is not a superuser sees no data keys: the
    check would find nothing left under the retired key and exit 0."""
    dep = await deployment_factory()
    url = await fresh_database(ledger_database_url, prefix="rot0002")
    await upgrade(url, "0002")
    old, new = MasterKey.generate(), MasterKey.generate()
    env = {
        **dep.env,
        "PAYSTREAM_MASTER_KEY": _b64(new),
        "PAYSTREAM_RETIRED_MASTER_KEYS": _b64(old),
        "DATABASE_URL": url,
        "PAYSTREAM_DB_APP_PASSWORD": "",
    }
    result = await asyncio.to_thread(CliRunner().invoke, cli, ["keys", "rotate"], env=env)
    assert result.exit_code == 1, result.output
    assert f"the ledger schema is at 0002, this version's is {head()}: migrate" in result.output
    assert "re-sealed" not in result.output  # refused before touching anything


@pytest.mark.asyncio(loop_scope="session")
async def test_keys_rotate_names_a_ledger_key_no_key_opens_and_rotates_the_rest(
    deployment_factory: Any, ledger_db: LedgerDb, app_engine: AsyncEngine, make_event: EventFactory
) -> None:
    """A damaged data key (the app role can write data_keys) stopped the rotation of every
    key after it, naming none (review h60k): named now, left as it is, the rest
    re-wrapped, and the command exits 1."""
    dep = await deployment_factory()
    old, new = MasterKey.generate(), MasterKey.generate()
    await dep.add_tenants(Tenant(tenant_id="dmg1"), Tenant(tenant_id="dmg2"))
    for tenant in ("dmg1", "dmg2"):
        await write_events(
            app_engine,
            [make_event.customer(tenant, f"cus_{i}") for i in range(2)],
            keyring=MasterKeyring(old),
        )
    async with tenant_session(app_engine, "dmg1") as s:
        blob = (
            await s.scalars(select(DataKey.wrapped_key).where(DataKey.key_ref == "customer/cus_0"))
        ).one()
        await s.execute(
            DataKey.__table__.update()
            .where(DataKey.key_ref == "customer/cus_0")
            .values(wrapped_key=blob[:-1] + bytes([blob[-1] ^ 1]))
        )
    env = _rotation_env(dep.env, ledger_db, new, old)
    result = await asyncio.to_thread(CliRunner().invoke, cli, ["keys", "rotate"], env=env)
    assert result.exit_code == 1, result.output
    assert "error: ledger data key dmg1/customer/cus_0:" in result.output
    assert "3 ledger data key(s) re-wrapped" in result.output
    assert await _ledger_key_ids(app_engine, "dmg2") == {new.key_id}
