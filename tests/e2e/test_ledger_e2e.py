"""Outcomes reach the ledger through a real worker; erasure shreds; the audit chain verifies."""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import func, select

from paystream.ledger import create_engine, tenant_session, verify_audit
from paystream.ledger.migrate import app_database_url, create_database, upgrade
from paystream.ledger.models import Customer, Event, Payment
from paystream.ledger.sink import asyncpg_url
from paystream.tenancy.crypto import keyring_from_settings
from paystream.tenancy.models import Tenant
from tests.fixtures.pipeline import Deployment

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def ledgered(
    deployment_factory: Any, database_url: str
) -> AsyncIterator[tuple[Deployment, Any]]:
    url = await create_database(database_url, "ledger_e2e")
    password = base64.urlsafe_b64encode(os.urandom(18)).decode()
    await upgrade(url, app_password=password)
    dep: Deployment = await deployment_factory(
        database_url=url,
        paystream_db_app_password=password,
        paystream_master_key=base64.b64encode(os.urandom(32)).decode(),
    )
    await dep.add_tenants(Tenant(tenant_id="acme"), Tenant(tenant_id="globex"))
    engine = create_engine(app_database_url(asyncpg_url(url), password))
    with dep.worker() as worker:
        worker.wait_ready(["acme", "globex"], partitions=dep.settings.partitions)
        yield dep, engine
    await engine.dispose()


async def _eventually(check: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("the ledger did not catch up in time")
        await asyncio.sleep(0.1)


async def test_outcomes_land_in_the_ledger_per_tenant(ledgered: tuple[Deployment, Any]) -> None:
    dep, engine = ledgered
    async with dep.client() as client:
        cus = await client.command(
            "customer.create", "acme", {"email": "ada@acme.io", "name": "Ada"}
        )
        cid = cus.get_data()["entity_id"]  # type: ignore[index]
        pay = await client.command(
            "payment.create",
            "acme",
            {
                "amount": 4200,
                "currency": "EUR",
                "customer_id": cid,
                "payment_method_token": "pm_card_visa",
            },
        )
        pid = pay.get_data()["entity_id"]  # type: ignore[index]
        await client.command("refund.create", "acme", {"payment_id": pid, "amount": 200})
        await client.command("customer.create", "globex", {"email": "bob@globex.io"})

    async def payment_row() -> Any:
        async with tenant_session(engine, "acme") as s:
            row = (
                await s.execute(select(Payment).where(Payment.payment_id == pid))
            ).scalar_one_or_none()
            return row if row is not None and row.amount_refunded == 200 else None

    row = await _eventually(payment_row)
    assert (row.amount, row.currency, row.status, row.amount_captured) == (
        4200,
        "EUR",
        "succeeded",
        4200,
    )
    async with tenant_session(engine, "globex") as s:
        # globex sees its own customer only, never acme's payment
        assert (await s.execute(select(Payment).where(Payment.payment_id == pid))).first() is None
    async with tenant_session(engine, "acme") as s:
        customer = (
            await s.execute(select(Customer).where(Customer.customer_id == cid))
        ).scalar_one()
        assert customer.email_ciphertext and b"ada@acme.io" not in customer.email_ciphertext
        events = (await s.execute(select(func.count()).select_from(Event))).scalar_one()
        assert events >= 3
    assert (await verify_audit(engine, "acme", keyring_from_settings(dep.settings))).ok


async def test_customer_erase_crypto_shreds_the_ledger_copy(
    ledgered: tuple[Deployment, Any],
) -> None:
    dep, engine = ledgered
    async with dep.client() as client:
        cus = await client.command(
            "customer.create", "acme", {"email": "eve@acme.io", "name": "Eve"}
        )
        cid = cus.get_data()["entity_id"]  # type: ignore[index]
        pay = await client.command(
            "payment.create",
            "acme",
            {
                "amount": 990,
                "currency": "USD",
                "customer_id": cid,
                "payment_method_token": "pm_card_visa",
            },
        )
        erased = await client.command("customer.erase", "acme", {"customer_id": cid})
    assert erased.get_type() == "com.paystream.customer.erased"

    async def shredded() -> Any:
        async with tenant_session(engine, "acme") as s:
            row = (
                await s.execute(select(Customer).where(Customer.customer_id == cid))
            ).scalar_one_or_none()
            return row if row is not None and row.erased_at is not None else None

    row = await _eventually(shredded)
    assert row.email_ciphertext is None and row.name_ciphertext is None
    async with tenant_session(engine, "acme") as s:
        payment = (
            await s.execute(
                select(Payment).where(Payment.payment_id == pay.get_data()["entity_id"])
            )  # type: ignore[index]
        ).scalar_one()
        assert payment.amount == 990  # money stays
    assert (await verify_audit(engine, "acme", keyring_from_settings(dep.settings))).ok
