"""write_events: latest state by version, replay-safe, PII encrypted, card data refused."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from paystream.ledger import (
    ForbiddenDataError,
    InvalidEventError,
    LedgerEvent,
    tenant_session,
    write_events,
)
from paystream.ledger.models import AuditLog, Customer, Event, Payment, PaymentMethod
from paystream.tenancy.crypto import MasterKeyring
from tests.ledger.factories import EventFactory


async def _payment(engine: AsyncEngine, tenant: str, payment_id: str) -> Payment:
    async with tenant_session(engine, tenant) as s:
        return (await s.scalars(select(Payment).where(Payment.payment_id == payment_id))).one()


async def _count(engine: AsyncEngine, tenant: str, model: type) -> int:
    async with tenant_session(engine, tenant) as s:
        return int(await s.scalar(select(func.count()).select_from(model)) or 0)


async def test_newer_version_wins_regardless_of_arrival_order(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    v1 = make_event.payment("w1", "pay_1", 1, status="pending", amount_captured=0)
    v2 = make_event.payment("w1", "pay_1", 2, status="succeeded")
    v3 = make_event.payment("w1", "pay_1", 3, status="refunded", amount_refunded=1000)
    await write_events(app_engine, [v1, v3], keyring=keyring)
    result = await write_events(app_engine, [v2], keyring=keyring)
    assert (result.events_written, result.entities_applied, result.entities_stale) == (1, 0, 1)
    payment = await _payment(app_engine, "w1", "pay_1")
    assert (payment.status, payment.version, payment.amount_refunded) == ("refunded", 3, 1000)
    assert (payment.amount, payment.currency, payment.last_event_id) == (1000, "USD", v3.event_id)
    assert payment.created_at == v1.time  # first seen, not overwritten by later versions
    assert await _count(app_engine, "w1", Event) == 3  # all history kept, even stale events


async def test_created_at_is_the_earliest_event_even_when_it_arrives_late(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    # Version 1 refused, dead-lettered and replayed after version 2 was stored.
    v1 = make_event.payment("w1b", "pay_1", 1, status="pending", amount_captured=0)
    v2 = make_event.payment("w1b", "pay_1", 2, status="succeeded")
    await write_events(app_engine, [v2], keyring=keyring)
    assert (await _payment(app_engine, "w1b", "pay_1")).created_at == v2.time
    audit_before = await _count(app_engine, "w1b", AuditLog)
    result = await write_events(app_engine, [v1], keyring=keyring)
    assert (result.events_written, result.entities_applied, result.entities_stale) == (1, 0, 1)
    payment = await _payment(app_engine, "w1b", "pay_1")
    assert (payment.created_at, payment.status, payment.version) == (v1.time, "succeeded", 2)
    assert await _count(app_engine, "w1b", AuditLog) == audit_before  # no state change
    # A later version never moves it forward again.
    v3 = make_event.payment("w1b", "pay_1", 3, status="refunded", amount_refunded=1000)
    await write_events(app_engine, [v3], keyring=keyring)
    assert (await _payment(app_engine, "w1b", "pay_1")).created_at == v1.time


async def test_replayed_events_are_not_doubled(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    batch = [make_event.payment("w2", f"pay_{i}") for i in range(3)]
    batch.append(make_event.customer("w2", "cus_9"))
    first = await write_events(app_engine, batch, keyring=keyring)
    audit_after_first = await _count(app_engine, "w2", AuditLog)
    again = await write_events(app_engine, batch + batch[:1], keyring=keyring)
    assert (first.events_written, first.entities_applied) == (4, 4)
    assert (again.events_written, again.duplicates, again.entities_applied) == (0, 5, 0)
    assert await _count(app_engine, "w2", Event) == 4
    assert await _count(app_engine, "w2", Payment) == 3
    assert await _count(app_engine, "w2", AuditLog) == audit_after_first == 4


async def test_one_batch_spanning_tenants_lands_in_each(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    batch = [make_event.payment(t, "pay_x", amount=n) for n, t in enumerate(["w3", "w4"], 1)]
    result = await write_events(app_engine, batch, keyring=keyring)
    assert result.events_written == 2
    assert (await _payment(app_engine, "w3", "pay_x")).amount == 1
    assert (await _payment(app_engine, "w4", "pay_x")).amount == 2


async def test_same_entity_twice_in_one_batch_keeps_the_highest(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    batch = [
        make_event.payment("w5", "pay_1", 5, status="captured"),
        make_event.payment("w5", "pay_1", 4, status="authorized"),
    ]
    await write_events(app_engine, batch, keyring=keyring)
    assert (await _payment(app_engine, "w5", "pay_1")).status == "captured"


async def test_customer_pii_is_stored_only_as_ciphertext(
    app_engine: AsyncEngine,
    owner_engine: AsyncEngine,
    keyring: MasterKeyring,
    make_event: EventFactory,
) -> None:
    event = make_event.customer(
        "w6",
        "cus_1",
        email="grace@example.com",
        name="Grace Hopper",
        address={"city": "New York City"},
    )
    await write_events(app_engine, [event], keyring=keyring)
    async with owner_engine.connect() as conn:
        # Look at everything the database holds, as the owner, in every table's text form.
        dump = []
        for table in ("customers", "events", "audit_log", "data_keys"):
            rows = await conn.execute(text(f"SELECT t::text FROM {table} t"))
            dump += [r[0] for r in rows]
    blob = "\n".join(dump)
    assert "cus_1" in blob
    # Each holds a character outside base64 and hex (a space, an @), so none can turn
    # up inside a ciphertext by chance ("NYC" once did).
    for secret in ("grace@example.com", "Grace Hopper", "New York City"):
        assert secret not in blob
    async with tenant_session(app_engine, "w6") as s:
        customer = (await s.scalars(select(Customer))).one()
    assert customer.email_ciphertext is not None
    assert customer.name_ciphertext is not None


async def test_payment_method_keeps_token_facts(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    data = {
        "provider_token": "tok_abc",
        "brand": "visa",
        "last4": "4242",
        "exp_month": 12,
        "exp_year": 2030,
        "fingerprint": "fp_1",
    }
    await write_events(
        app_engine, [make_event("w7", "payment_method", "pm_1", 1, data)], keyring=keyring
    )
    async with tenant_session(app_engine, "w7") as s:
        pm = (await s.scalars(select(PaymentMethod))).one()
    assert (pm.provider_token, pm.brand, pm.last4, pm.exp_month, pm.exp_year) == (
        "tok_abc",
        "visa",
        "4242",
        12,
        2030,
    )


@pytest.mark.parametrize(
    "data",
    [
        {"card_number": "4242424242424242"},
        {"card": {"cvc": "123"}},
        {"source": {"number": "4242 4242 4242 4242"}},
        {"items": [{"CVV": "1234"}]},
        {"metadata": {"note": "card 4000-0566-5566-5556"}},
    ],
)
def test_card_data_is_refused_before_any_write(make_event: EventFactory, data: dict) -> None:
    with pytest.raises(ForbiddenDataError) as caught:
        make_event("w8", "payment_method", "pm_1", 1, {"brand": "visa", **data})
    # (Without the event's id: a random hex id holds "123" now and then.)
    message = re.sub(r"evt_[0-9a-z_]+", "evt", str(caught.value))
    for digits in ("4242", "5556", "123"):
        assert digits not in message


@pytest.mark.parametrize(
    "data",
    [
        {"address": {"number": "221B"}},
        {"metadata": {"pan": "ABCDE1234F"}},  # an Indian tax id (PAN), not a card
        {"metadata": {"number": "555-123-4567"}},
        {"metadata": {"cvc_policy": "required"}},
        {"metadata": {"cid": "1042"}},
        # the provider's own text: a bank transfer reference that passes Luhn by chance
        {"next_action": {"display_bank_transfer_instructions": {"reference": "4242424242424242"}}},
    ],
)
def test_ordinary_data_is_not_mistaken_for_card_data(make_event: EventFactory, data: dict) -> None:
    # Refused, such data parked every later event of the customer for good.
    make_event("w8", "customer", "cus_1", 1, data)


@pytest.mark.parametrize(
    ("entity_type", "data"),
    [
        ("payment", {"currency": "USD", "status": "ok"}),  # amount missing
        ("payment", {"amount": 1.5, "currency": "USD", "status": "ok"}),  # float money
        ("payment", {"amount": -1, "currency": "USD", "status": "ok"}),
        ("payment", {"amount": 1, "currency": "XXX", "status": "ok"}),
        ("payment_method", {"last4": "42"}),
        ("payment_method", {"exp_month": 13}),
        ("unknown", {}),
    ],
)
def test_invalid_snapshots_are_rejected(
    make_event: EventFactory, entity_type: str, data: dict
) -> None:
    with pytest.raises(InvalidEventError):
        make_event("w9", entity_type, "x_1", 1, data)


def test_an_id_too_long_to_index_is_refused_not_retried(make_event: EventFactory) -> None:
    # Stored, it failed its batch for ever (index row size), stalling every tenant.
    with pytest.raises(InvalidEventError, match="at most 255"):
        make_event("w9", "customer", "c" * 256, 1, {})


def test_naive_time_and_bad_tenant_are_rejected(make_event: EventFactory) -> None:
    good = make_event.payment("w9", "pay_1")
    with pytest.raises(InvalidEventError):
        LedgerEvent(**{**_fields(good), "time": good.time.replace(tzinfo=None)})
    with pytest.raises(InvalidEventError):
        LedgerEvent(**{**_fields(good), "tenant_id": "Bad Tenant"})


def _fields(event: LedgerEvent) -> dict:
    names = ("event_id", "type", "tenant_id", "causation_id", "time", "entity_type")
    names += ("entity_id", "version", "data")
    return {n: getattr(event, n) for n in names}


async def test_a_different_event_at_the_same_version_does_not_overwrite(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    await write_events(
        app_engine, [make_event.payment("w10", "pay_1", 2, status="captured")], keyring=keyring
    )
    result = await write_events(
        app_engine, [make_event.payment("w10", "pay_1", 2, status="voided")], keyring=keyring
    )
    assert (result.events_written, result.entities_stale) == (1, 1)
    assert (await _payment(app_engine, "w10", "pay_1")).status == "captured"
